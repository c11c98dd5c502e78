"""Connections to services: keep-alive, pooled per endpoint, parsed with httptools.

An `UpstreamConnection` carries one exchange at a time. It turns what it parses into calls on that
exchange (`on_response_head`, `on_response_body`, `on_response_end`, `on_upstream_lost`); the exchange
decides what reaches the client. After a `101 Switching Protocols` it becomes a byte tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httptools

from devmesh import const

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange

EndpointKey = tuple[str, int]


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_after_feed",
        "chunked",
        "closed",
        "connection",
        "deadline",
        "exchange",
        "headers",
        "idle_since",
        "key",
        "length",
        "parser",
        "pool",
        "reason",
        "reused",
        "transport",
        "tunnel",
        "writing_paused",
    )

    def __init__(self, pool: UpstreamPool, key: EndpointKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.length: bytes | None = None  # Content-Length, Transfer-Encoding, Connection of the response
        self.chunked = False
        self.connection: bytes | None = None
        self.deadline = 0.0  # when the response head must have arrived; 0: no deadline
        self.idle_since = 0.0
        self.reused = False
        self.closed = False
        self.writing_paused = False
        # After an upgrade: the client connection the bytes go to.
        self.tunnel: Any = None
        # Set by a callback that must act once the parser has returned (retry, end of a HEAD response).
        self._after_feed: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: the service is confused, or closing; never reuse it.
            self.close()
            return
        exchange.client.cork()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            if self.exchange is not None:
                self.exchange.on_upstream_upgraded(self, data[offset:])
        except httptools.HttpParserError as error:
            if self.exchange is not None:
                self.exchange.on_upstream_invalid(self, str(error))
            self.close()
        finally:
            exchange.client.uncork()
        if self._after_feed is not None:
            action, self._after_feed = self._after_feed, None
            current = self.exchange
            if current is not None:
                current.after_upstream_feed(self, action)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.close()
            return
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.on_upstream_lost(self, exc)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.exchange is not None:
            self.exchange.client.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.exchange is not None:
            self.exchange.client.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.length = None
        self.chunked = False
        self.connection = None

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.response_head_done:
            exchange.response_trailers.append((name, value))
            return
        self.headers.append((name, value))
        # Framing and Connection noted here, by length first: no second pass over the headers.
        size = len(name)
        if size == 14:
            if name.lower() == b"content-length":
                self.length = value
        elif size == 17:
            if name.lower() == b"transfer-encoding":
                self.chunked = True
        elif size == 10 and name.lower() == b"connection":
            self.connection = value

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_head(self, self.parser.get_status_code(), self.reason, self.headers)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_end(self)

    # -- used by the exchange -----------------------------------------------------------------------

    def after_feed(self, action: str) -> None:
        self._after_feed = action

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def reset_parser(self) -> None:
        """A fresh parser: after a response the old one cannot finish (to a HEAD request)."""
        self.parser = httptools.HttpResponseParser(self)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once: the request it carries is cancelled, the service sees a reset."""
        self.exchange = None
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections per endpoint (most recently used first), bounded and timed out."""

    def __init__(
        self,
        *,
        idle_max: int = const.PROXY_UPSTREAM_IDLE_MAX,
        idle_timeout_s: float = const.PROXY_UPSTREAM_IDLE_TIMEOUT_S,
        connect_timeout_s: float = const.PROXY_CONNECT_TIMEOUT_S,
    ) -> None:
        self.idle: dict[EndpointKey, list[UpstreamConnection]] = {}
        self.busy: set[UpstreamConnection] = set()
        self.idle_max = idle_max
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.opened = 0  # connections ever opened: tests and the benchmark read it to see reuse
        self.in_use: dict[EndpointKey, int] = {}  # requests in flight per endpoint, for least_conn
        self.clock: Callable[[], float] = time.monotonic  # the loop's time, set by the server
        # Remotes and mirrors: the system's trust store, made on first use (tests set their own CA).
        self.remote_tls: ssl.SSLContext | None = None
        self.peer_tls: ssl.SSLContext | None = None  # [proxy] mesh_tls: this agent's client certificate

    def acquire(self, key: EndpointKey) -> UpstreamConnection | None:
        idle = self.idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                connection.reused = True
                self._busy(connection)
                return connection
        return None

    async def connect(self, key: EndpointKey, *, tls: bool = False, peer: bool = False) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if tls:
            context = self.tls_context(peer=peer)
        async with asyncio.timeout(self.connect_timeout_s):
            _transport, connection = await loop.create_connection(
                lambda: UpstreamConnection(self, key),
                key[0],
                key[1],
                ssl=context,
                server_hostname=key[0] if tls else None,
            )
        self.opened += 1
        self._busy(connection)
        return connection

    def tls_context(self, *, peer: bool = False) -> ssl.SSLContext:
        """The TLS settings for an endpoint: mutual TLS with the team's CA for a peer (when the mesh uses
        it), else certificates verified against the system's trust store (SSL_CERT_FILE and friends
        apply: a remote is a real site), with SNI. The remote prober and the mirror use the same."""
        if peer and self.peer_tls is not None:
            return self.peer_tls
        if self.remote_tls is None:
            self.remote_tls = ssl.create_default_context()
            self.remote_tls.set_alpn_protocols(["http/1.1"])
        return self.remote_tls

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool after a complete response on a keep-alive connection."""
        self.not_busy(connection)
        connection.exchange = None
        connection.deadline = 0.0
        if connection.closed:
            return
        idle = self.idle.setdefault(connection.key, [])
        if len(idle) >= self.idle_max:
            connection.close()
            return
        if connection.writing_paused:
            connection.close()
            return
        # The loop's clock, through the transport's loop: asyncio.get_running_loop() costs a getpid().
        connection.idle_since = self.clock()
        idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        self.not_busy(connection)
        idle = self.idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def _busy(self, connection: UpstreamConnection) -> None:
        if connection not in self.busy:
            self.busy.add(connection)
            self.in_use[connection.key] = self.in_use.get(connection.key, 0) + 1

    def not_busy(self, connection: UpstreamConnection) -> None:
        if connection in self.busy:
            self.busy.discard(connection)
            self.in_use[connection.key] -= 1

    def sweep(self, now: float) -> None:
        """Close connections idle too long, and time out responses that are late."""
        for key, idle in list(self.idle.items()):
            stale = [c for c in idle if now - c.idle_since > self.idle_timeout_s]
            for connection in stale:
                connection.close()
            if not idle:
                del self.idle[key]
        late = [c for c in self.busy if c.deadline and now > c.deadline]
        for connection in late:
            exchange = connection.exchange
            if exchange is not None:
                exchange.on_upstream_timeout(connection)

    def drop(self, key: EndpointKey) -> None:
        """An endpoint left the mesh (a peer died or was cut off): close its idle connections, and move
        the requests waiting on its busy ones elsewhere instead of letting them time out."""
        for connection in self.idle.pop(key, []):
            connection.close()
        for connection in [c for c in self.busy if c.key == key]:
            exchange = connection.exchange
            connection.abort()
            if exchange is not None:
                exchange.on_endpoint_gone()

    def close_all(self) -> None:
        for idle in list(self.idle.values()):
            for connection in list(idle):
                connection.close()
        for connection in list(self.busy):
            with contextlib.suppress(Exception):
                connection.abort()
        self.idle.clear()
        self.busy.clear()
        self.in_use.clear()
