"""Forwarding on real loopback sockets: a middleware whose `mesh=` leads back to itself (a loop), and a
mesh that answers before it took the whole request body."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from devmesh.asgi import DevmeshMiddleware
from devmesh.middleware.core import BODY_CHUNK_BYTES
from devmesh.middleware.types import ASGIApp, Message, Receive, Scope, Send, StartResponse, WSGIEnvironment
from devmesh.wsgi import DevmeshWSGIMiddleware

RUNAWAY = 599  # what the guard answers once a loop went this deep: the test fails instead of hanging
MAX_DEPTH = 4
BIG_BODY = 32 * 1024 * 1024  # more than the kernel buffers of a loopback connection hold
REFUSAL = json.dumps({"error": "too large", "limit": 1024}).encode()


async def asgi_main(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"main"})


def wsgi_main(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"main"]


class AsgiGuard:
    """Counts the requests in flight; past MAX_DEPTH it answers RUNAWAY itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.depth = 0
        self.deepest = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.depth >= MAX_DEPTH:
            await send({"type": "http.response.start", "status": RUNAWAY, "headers": []})
            await send({"type": "http.response.body", "body": b"runaway loop"})
            return
        self.depth += 1
        self.deepest = max(self.deepest, self.depth)
        try:
            await self.app(scope, receive, send)
        finally:
            self.depth -= 1


class WsgiGuard:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.depth = 0
        self.deepest = 0
        self.lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        with self.lock:
            if self.depth >= MAX_DEPTH:
                start_response(f"{RUNAWAY} Runaway", [("Content-Type", "text/plain")])
                return [b"runaway loop"]
            self.depth += 1
            self.deepest = max(self.deepest, self.depth)
        try:
            # The forwarded response is consumed here, so the depth stays counted while it streams.
            return [b"".join(self.app(environ, start_response))]
        finally:
            with self.lock:
                self.depth -= 1


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextmanager
def serving_asgi(make_app: Any) -> Iterator[tuple[int, Any]]:
    """uvicorn in a thread on a socket bound here; `make_app(port)` builds the app knowing its port."""
    import uvicorn

    sock = _listening()
    port = int(sock.getsockname()[1])
    app = make_app(port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port, app
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving_wsgi(make_app: Any) -> Iterator[tuple[int, Any]]:
    holder: dict[str, Any] = {}

    def late(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        result: Iterable[bytes] = holder["app"](environ, start_response)
        return result

    server = make_server("127.0.0.1", 0, late, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    port = int(server.server_address[1])
    holder["app"] = make_app(port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield port, holder["app"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def get(port: int, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_asgi_mesh_pointing_at_the_app_itself_is_a_508_not_an_endless_loop() -> None:
    def make(port: int) -> AsgiGuard:
        return AsgiGuard(
            DevmeshMiddleware(
                asgi_main,
                mesh=f"http://127.0.0.1:{port}",
                mesh_services=["files"],
                service="web",
                environ={},
            )
        )

    with serving_asgi(make) as (port, guard):
        status, body = get(port, "files.localhost")
        assert status == 508, body[:200]
        document = json.loads(body)
        assert document["error"] == "forwarding loop" and document["forwarded_by"] == "web"
        assert f"http://127.0.0.1:{port}" in document["message"]
        assert guard.deepest == 2  # forwarded once, refused on its way back in


def test_wsgi_mesh_pointing_at_the_app_itself_is_a_508_not_an_endless_loop() -> None:
    def make(port: int) -> WsgiGuard:
        return WsgiGuard(
            DevmeshWSGIMiddleware(
                wsgi_main,
                mesh=f"http://127.0.0.1:{port}",
                mesh_services=["files"],
                service="web",
                environ={},
            )
        )

    with serving_wsgi(make) as (port, guard):
        status, body = get(port, "files.localhost")
        assert status == 508, body[:200]
        assert json.loads(body)["error"] == "forwarding loop"
        assert guard.deepest == 2


class EarlyMesh:
    """Plays a mesh that answers 413 as soon as it has the request head, without reading the body:
    then closes (`close`), or keeps the connection open reading nothing (`stall`); `silent` answers
    nothing and reads nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = _listening()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        try:
            connection, _ = self.sock.accept()
        except OSError:
            return
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                piece = connection.recv(65536)
                if not piece:
                    return
                received += piece
            if self.mode != "silent":
                connection.sendall(
                    b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(REFUSAL), REFUSAL)
                )
            if self.mode != "close":
                self.release.wait(30)

    def close(self) -> None:
        self.release.set()
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def early_mesh(request: pytest.FixtureRequest) -> Iterator[EarlyMesh]:
    mesh = EarlyMesh(request.param)
    try:
        yield mesh
    finally:
        mesh.close()


async def _post_big_body_asgi(mesh: EarlyMesh, *, wait_s: float) -> list[Message]:
    app = DevmeshMiddleware(asgi_main, mesh=mesh.url, mesh_services=["files"], timeout=wait_s, environ={})
    pieces = BIG_BODY // BODY_CHUNK_BYTES
    handed = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal handed
        handed += 1
        return {"type": "http.request", "body": b"x" * BODY_CHUNK_BYTES, "more_body": handed < pieces}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "scheme": "http",
        "headers": [(b"host", b"files.localhost"), (b"content-length", str(BIG_BODY).encode())],
        "client": ("127.0.0.1", 50000),
    }
    async with asyncio.timeout(20):  # a forwarder stuck on a mesh that stopped reading fails here
        await app(scope, receive, send)
    assert handed < pieces, "the whole body was sent to a mesh that had refused it"
    return sent


@pytest.mark.parametrize("early_mesh", ["close", "stall"], indirect=True)
async def test_asgi_an_early_answer_reaches_the_client_instead_of_mesh_unreachable(
    early_mesh: EarlyMesh,
) -> None:
    sent = await _post_big_body_asgi(early_mesh, wait_s=5)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[0]["status"] == 413, body
    assert body == REFUSAL


@pytest.mark.parametrize("early_mesh", ["silent"], indirect=True)
async def test_asgi_a_mesh_that_stops_reading_the_body_is_a_504_after_the_timeout(
    early_mesh: EarlyMesh,
) -> None:
    started = time.monotonic()
    sent = await _post_big_body_asgi(early_mesh, wait_s=1)
    assert sent[0]["status"] == 504 and time.monotonic() - started < 10
    document = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert "took none of the request body for 1 s" in document["message"]


def _post_big_body_wsgi(mesh: EarlyMesh, *, timeout: float, chunked: bool = False) -> tuple[str, bytes]:
    app = DevmeshWSGIMiddleware(
        wsgi_main, mesh=mesh.url, mesh_services=["files"], timeout=timeout, environ={}
    )
    source = io.BytesIO(b"x" * BIG_BODY)
    environ: WSGIEnvironment = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/upload",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "files.localhost",
        "wsgi.input": source,
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
    }
    if chunked:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(BIG_BODY)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    assert source.tell() < BIG_BODY, "the whole body was sent to a mesh that had refused it"
    return statuses[0], body


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("early_mesh", ["close", "stall"], indirect=True)
def test_wsgi_an_early_answer_reaches_the_client_instead_of_a_502(
    early_mesh: EarlyMesh, chunked: bool
) -> None:
    status, body = _post_big_body_wsgi(early_mesh, timeout=5, chunked=chunked)
    assert status.startswith("413") and body == REFUSAL
