"""Real-socket HTTP pieces for proxy tests: scriptable backends, a raw async client, an in-process proxy.

Backends and clients are written at the byte level on purpose: they must be able to do what a
well-behaved library never does (reset mid-body, dribble headers, pipeline, send trailers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httptools

from devmesh.mesh.snapshot import Endpoint, Health, MeshState, Origin, RunState, ServiceView
from devmesh.proxy.server import ProxyLimits, ProxyServer

# -- messages -------------------------------------------------------------------------------------------


@dataclass
class Message:
    """A parsed request or response."""

    method: str = ""
    target: str = ""
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


class _Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.current = Message()
        self.headers_done = False
        self.upgraded = False

    def on_message_begin(self) -> None:
        self.current = Message()
        self.headers_done = False

    def on_url(self, url: bytes) -> None:
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        (self.current.trailers if self.headers_done else self.current.headers).append(pair)

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.complete = True
        self.messages.append(self.current)


class MessageReader:
    """Reads whole messages from a stream with httptools (requests on a backend, responses on a client)."""

    def __init__(self, reader: asyncio.StreamReader, *, response: bool, head_request: bool = False) -> None:
        self.reader = reader
        self.collector = _Collector()
        self.response = response
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser = (
            httptools.HttpResponseParser(self.collector)
            if response
            else httptools.HttpRequestParser(self.collector)
        )
        self.leftover = b""
        self.eof = False

    async def next(self, *, head_only: bool = False, timeout: float = 10.0) -> Message | None:  # noqa: ASYNC109
        """The next complete message; None at EOF. With `head_only`, return once the head is parsed
        (for HEAD responses, and to look at a streaming response before it ends)."""
        async with asyncio.timeout(timeout):
            while True:
                if self.collector.messages:
                    message = self.collector.messages.pop(0)
                    self._stamp(message)
                    return message
                if head_only and self.collector.headers_done:
                    message = self.collector.current
                    self._stamp(message)
                    self.parser = type(self.parser)(self.collector)  # the body (if any) is not awaited
                    self.collector.headers_done = False
                    return message
                if self.eof:
                    return None
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                    # A body delimited by the close ends here.
                    current = self.collector.current
                    unframed = (
                        current.header("content-length") is None
                        and current.header("transfer-encoding") is None
                    )
                    if self.collector.headers_done and not current.complete and self.response and unframed:
                        current.complete = True
                        self.collector.messages.append(current)
                    continue
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserUpgrade as upgrade:
                    self.leftover = data[upgrade.args[0] :]
                    self.collector.upgraded = True

    def _stamp(self, message: Message) -> None:
        if isinstance(self.parser, httptools.HttpRequestParser) and not message.method:
            with contextlib.suppress(Exception):
                message.method = self.parser.get_method().decode()
        if isinstance(self.parser, httptools.HttpResponseParser) and not message.status:
            message.status = self.parser.get_status_code()


# -- backends -----------------------------------------------------------------------------------------

Handler = Callable[[Message, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool | None]]


class Backend:
    """A scriptable HTTP/1.1 server on 127.0.0.1. The handler writes the response itself and returns
    False to close the connection. `connections` counts accepted connections, `requests` keeps them."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls  # serve HTTPS with this context
        self.connections = 0
        self.requests: list[Message] = []
        self.closed_connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        messages = MessageReader(reader, response=False)
        try:
            while True:
                try:
                    request = await messages.next(timeout=60)
                except (httptools.HttpParserError, TimeoutError, ConnectionError):
                    break
                if request is None:
                    break
                self.requests.append(request)
                keep = await self.handler(request, reader, writer)
                await writer.drain()
                if keep is False:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed_connections += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_handler(request: Message, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers with the request's method, target and body, and its headers as `X-Echo-<name>`."""
    headers = {f"X-Echo-{name}": value for name, value in request.headers}
    headers["X-Echo-Method"] = request.method
    headers["X-Echo-Target"] = request.target
    writer.write(response(200, request.body, headers))


@contextlib.asynccontextmanager
async def backend(
    handler: Handler = echo_handler, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Backend]:
    server = await Backend(handler, tls=tls).start()
    try:
        yield server
    finally:
        await server.close()


def refused_port() -> int:
    """A port where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the proxy, in process ---------------------------------------------------------------------------


def service_view(
    name: str,
    *ports: int,
    hosts: tuple[str, ...] | None = None,
    routes: tuple[str, ...] = (),
    healthy: bool = True,
    version: str | None = "1.0.0",
    state: RunState = RunState.RUNNING,
) -> ServiceView:
    endpoints = tuple(Endpoint(name, "127.0.0.1", port, Origin.LOCAL, healthy, version) for port in ports)
    return ServiceView(
        name,
        Origin.LOCAL,
        state,
        Health.HEALTHY if healthy else Health.UNHEALTHY,
        hosts if hosts is not None else (name,),
        routes,
        endpoints,
        version,
        ports[0] if ports else None,
    )


@dataclass
class RunningProxy:
    server: ProxyServer
    state: MeshState
    port: int
    errors: list[dict[str, object]]

    def publish(self, *views: ServiceView) -> None:
        self.state.publish({view.name: view for view in views})

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(
        self,
        host: str,
        target: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> Message:
        """One request on a new connection; the whole response."""
        reader, writer = await self.connect()
        try:
            writer.write(request_bytes(method, target, host, headers, body))
            messages = MessageReader(reader, response=True)
            message = await messages.next(head_only=method == "HEAD", timeout=timeout)
            assert message is not None, "the proxy closed the connection without a response"
            return message
        finally:
            writer.close()


def request_bytes(
    method: str, target: str, host: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None and not any(k.lower() == "transfer-encoding" for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@contextlib.asynccontextmanager
async def running_proxy(
    *views: ServiceView, limits: ProxyLimits | None = None, timeout_s: float = 30.0, retries: int = 2
) -> AsyncIterator[RunningProxy]:
    """A ProxyServer on a free port, serving `views`. Exceptions the loop sees are collected in
    `errors`: a test that ends with any has found a crash, and fails."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    state = MeshState("test", "localhost")
    state.publish({view.name: view for view in views})
    server = ProxyServer(state, timeout_s=timeout_s, retries=retries, limits=limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    await server.start(sock)
    running = RunningProxy(server, state, sock.getsockname()[1], errors)
    try:
        yield running
    finally:
        await server.close()
        loop.set_exception_handler(previous)
    assert not errors, f"the proxy raised inside the event loop: {errors}"
