"""A client's connection to the proxy: parses requests with httptools, answers them in order.

Requests on one connection are answered in the order they arrived (pipelining): one exchange is active,
the ones parsed behind it wait in `queue`. Reading pauses whenever a buffer would otherwise grow: a
service slower than its client, a pipelined request waiting, or a client slower than its service.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from devmesh.proxy.exchange import Exchange
from devmesh.proxy.pages import ErrorPage, response_bytes

if TYPE_CHECKING:
    from devmesh.proxy.server import ProxyServer
    from devmesh.proxy.upstream import UpstreamConnection

_NO_DEADLINE = 0.0


class _LimitExceeded(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_out",
        "_pause_reasons",
        "_saved_deadline",
        "_up_out",
        "_up_target",
        "active",
        "body_progress",
        "client_ip",
        "closed",
        "current",
        "deadline",
        "deadline_kind",
        "feeding",
        "head_bytes_seen",
        "header_bytes",
        "header_count",
        "parser",
        "queue",
        "scheme",
        "server",
        "starting_queued",
        "transport",
        "tunnel",
        "upgrade_pending",
    )

    def __init__(self, server: ProxyServer, scheme: bytes) -> None:
        self.server = server
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.current: Exchange | None = None  # being parsed
        self.active: Exchange | None = None  # being answered
        self.queue: deque[Exchange] = deque()  # parsed, waiting behind the active one
        self.closed = False
        self.feeding = False
        self.starting_queued = False
        self.header_bytes = 0
        self.header_count = 0
        self.head_bytes_seen = 0
        self.body_progress = False
        self.deadline = _NO_DEADLINE
        self.deadline_kind = "idle"
        self.tunnel: UpstreamConnection | None = None
        # Bytes that follow an Upgrade request, held until the service agrees to switch.
        self.upgrade_pending: list[bytes] | None = None
        self._pause_reasons: set[str] = set()
        self._saved_deadline = (_NO_DEADLINE, "idle")
        self._out: list[bytes] | None = None
        self._up_out: list[bytes] = []
        self._up_target: UpstreamConnection | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = (peer[0] if isinstance(peer, tuple) else "unix").encode()
        self.server.connections.add(self)
        self.deadline = self.server.loop.time() + self.server.limits.keepalive_timeout_s
        self.deadline_kind = "idle"

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        if self.closed:
            return  # answered and closing: nothing more from this client is read
        if self.upgrade_pending is not None:
            self.upgrade_pending.append(data)
            if sum(map(len, self.upgrade_pending)) > self.server.limits.buffer_high:
                self.pause_reading("upgrade")
            return
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            self.upgrade_pending = [rest] if rest else []
        except _LimitExceeded as error:
            self._reject(error.status, str(error))
        except httptools.HttpParserError as error:
            cause = error.__context__
            if isinstance(cause, _LimitExceeded):
                self._reject(cause.status, str(cause))
            else:
                self._reject(400, f"The request is not valid HTTP/1.1: {error}.")
        finally:
            self.feeding = False
            if self._up_out:
                self._flush_upstream()
        current = self.current
        if current is not None and not current.headers_done and not self.closed:
            # httptools reports a header only once its line ends: count the bytes of an unfinished
            # head as they come, so that one endless line is refused at the limit, not buffered until
            # the header timeout. (A read may also hold the end of the previous request: a slight
            # over-count, on the safe side.)
            self.head_bytes_seen += len(data)
            if self.head_bytes_seen > self.server.limits.max_header_bytes + self.server.limits.max_url_bytes:
                self._reject(431, "The request head is larger than devmesh accepts.")
        elif current is not None and not self.closed:
            # The same for trailers: reads that bring no body byte and end no message pile up inside
            # httptools until they are refused here.
            if self.body_progress:
                self.head_bytes_seen = 0
            else:
                self.head_bytes_seen += len(data)
                if self.head_bytes_seen > self.server.limits.max_header_bytes:
                    self._reject(431, "The request trailers are larger than devmesh accepts.")
        self.body_progress = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel = None
            tunnel.close()
        for exchange in (self.active, self.current, *self.queue):
            if exchange is not None:
                exchange.cancel()
        self.active = self.current = None
        self.queue.clear()

    def pause_writing(self) -> None:
        # The client reads slower than we write: stop reading from the service, and from the client
        # too (more pipelined requests would only add answers it does not read).
        self.pause_reading("client-slow")
        # A client that stops reading for good (slow-read slowloris) would hold both connections
        # forever: it has until body_idle_timeout_s to read again (nginx's send_timeout).
        self._saved_deadline = (self.deadline, self.deadline_kind)
        self.deadline = self.server.loop.time() + self.server.limits.body_idle_timeout_s
        self.deadline_kind = "send"
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.active is not None and self.active.upstream is not None:
            self.active.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.resume_reading("client-slow")
        if self.deadline_kind == "send":
            self.deadline, self.deadline_kind = self._saved_deadline
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.active is not None and self.active.upstream is not None:
            self.active.upstream.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = Exchange(self)
        self.head_bytes_seen = 0
        self.header_bytes = 0
        self.header_count = 0
        self.deadline = self.server.loop.time() + self.server.limits.header_timeout_s
        self.deadline_kind = "header"

    def on_url(self, url: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        exchange.target += url
        if len(exchange.target) > self.server.limits.max_url_bytes:
            raise _LimitExceeded(414, "The request target is longer than devmesh accepts.")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        self.header_bytes += len(name) + len(value) + 4
        self.header_count += 1
        limits = self.server.limits
        if self.header_bytes > limits.max_header_bytes or self.header_count > limits.max_headers:
            raise _LimitExceeded(
                431,
                f"The request headers are larger than devmesh accepts ({limits.max_header_bytes} bytes, "
                f"{limits.max_headers} fields).",
            )
        if exchange.headers_done:
            exchange.trailers.append((name, value))
        else:
            exchange.on_header(name, value)

    def on_headers_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        parser = self.parser
        exchange.headers_done = True
        self.body_progress = True
        if self.closed:
            return  # a request pipelined behind one answered with a close: never forwarded
        exchange.method = parser.get_method()
        if parser.get_http_version() == "1.0":
            exchange.http_minor = 0
        exchange.keep_alive = parser.should_keep_alive()
        if not parser.should_upgrade():
            exchange.upgrade = None
        if exchange.chunked or (exchange.content_length not in (None, b"0")):
            self.deadline = self.server.loop.time() + self.server.limits.body_idle_timeout_s
            self.deadline_kind = "body"
        else:
            exchange.body_complete = True
            self.deadline = _NO_DEADLINE
        if exchange.method == b"CONNECT":
            exchange.keep_alive = False
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        self.body_progress = True
        if self.deadline_kind == "body" and not self._pause_reasons:
            self.deadline = self.server.loop.time() + self.server.limits.body_idle_timeout_s
        exchange.on_request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        self.current = None
        if self.deadline_kind == "body":
            self.deadline = _NO_DEADLINE
        exchange.on_request_end()
        if exchange is not self.active and not exchange.done:
            # A pipelined request waits for the ones before it: read no further until it is its turn.
            self.pause_reading("pipeline")

    # -- used by exchanges --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        out = self._out
        if out is not None:
            out.append(data)
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def cork(self) -> None:
        """Collect writes until `uncork`: a response head and its first body bytes leave in one send."""
        if self._out is None:
            self._out = []

    def uncork(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def write_upstream(self, upstream: UpstreamConnection, data: bytes) -> None:
        if self.feeding:
            if self._up_target is not upstream:
                self._flush_upstream()
                self._up_target = upstream
            self._up_out.append(data)
        else:
            upstream.write(data)

    def _flush_upstream(self) -> None:
        out, target = self._up_out, self._up_target
        if out and target is not None:
            target.write(out[0] if len(out) == 1 else b"".join(out))
        self._up_out = []
        self._up_target = None

    def pause_reading(self, reason: str = "buffer") -> None:
        if not self._pause_reasons and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            if self.deadline_kind == "body":
                # The proxy stopped reading, not the client: no body timeout while paused.
                self.deadline = _NO_DEADLINE
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str = "buffer") -> None:
        reasons = self._pause_reasons
        if reason in reasons:
            reasons.discard(reason)
            if not reasons and self.transport is not None and not self.closed:
                self.transport.resume_reading()
                if self.deadline_kind == "body" and self.current is not None:
                    self.deadline = self.server.loop.time() + self.server.limits.body_idle_timeout_s

    def exchange_done(self, exchange: Exchange) -> None:
        if exchange is not self.active:
            return
        self.active = None
        if exchange.close_after or not exchange.keep_alive:
            self.close()
            return
        if self.queue:
            if self.starting_queued:
                return  # the loop below, further up the stack, starts the next one
            # A loop, not recursion: requests the proxy answers itself finish inside `start()`, and a
            # long pipeline of them would otherwise nest one call per request.
            self.starting_queued = True
            try:
                while self.active is None and self.queue and not self.closed:
                    following = self.queue.popleft()
                    if not self.queue:
                        self.resume_reading("pipeline")
                    self.active = following
                    following.start()
            finally:
                self.starting_queued = False
            if self.active is None and not self.queue and self.current is None and not self.closed:
                self.deadline = self.server.loop.time() + self.server.limits.keepalive_timeout_s
                self.deadline_kind = "idle"
        elif self.current is None:
            self.deadline = self.server.loop.time() + self.server.limits.keepalive_timeout_s
            self.deadline_kind = "idle"

    def start_tunnel(self, upstream: UpstreamConnection, from_upstream: bytes) -> None:
        """Both sides agreed to switch protocols: from now on, bytes go through as they are."""
        self.active = None
        self.deadline = _NO_DEADLINE
        self.tunnel = upstream
        upstream.tunnel = self
        if from_upstream:
            self.write(from_upstream)
        pending, self.upgrade_pending = self.upgrade_pending or [], None
        for data in pending:
            upstream.write(data)
        self.resume_reading("upgrade")

    def reset(self) -> None:
        """Close with a TCP reset (the outage fault): the client sees its connection reset, not closed."""
        if self.closed:
            return
        self._out = None
        self.closed = True
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    def abort_response(self) -> None:
        """End a response that cannot be completed: the client sees the connection close mid-body."""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.uncork()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- limits -------------------------------------------------------------------------------------

    def check_deadline(self, now: float) -> None:
        if not self.deadline or now < self.deadline or self.closed:
            return
        if self.deadline_kind == "header" and self.active is None:
            self._reject(408, "The request headers did not arrive in time.")
        elif self.deadline_kind == "send" and self.transport is not None:
            # close() would wait for the client to read what is buffered; it will not.
            self.closed = True
            self.transport.abort()
        else:
            self.close()

    def _reject(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed or is over a limit, then close: the rest of the
        stream cannot be trusted to start at a request boundary."""
        page = ErrorPage(status, _TITLES.get(status, "Bad Request"), message)
        active = self.active
        if active is not None and not active.response_started and not active.done and not self.closed:
            # A framing error in the body of a request already on its way: cancel it upstream, and
            # say why to the client, which has had no answer yet.
            active.keep_alive = False
            active.respond_error(page)
        elif active is None and not self.closed:
            accept = self.current.accept if self.current is not None else None
            self.write(response_bytes(page, accept))
            self.server.stats.count("-", "-", status, 0.0)
        self.current = None
        self.close()


_TITLES = {
    400: "Bad request",
    408: "Request timeout",
    414: "URI too long",
    431: "Request header fields too large",
}
