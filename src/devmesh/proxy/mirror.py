"""Shadow traffic (`mirror = "https://..." | "peer=ID"`): a copy of each request, fire-and-forget.

The exchange collects a copy of its request while the body arrives (`MirrorCopy`, up to
`mirror_max_body_bytes`; the frames are the very bytes objects it forwards, so they cost no second
buffer) and hands it to the `MirrorSender` once the request is complete and the real response has begun
(or the exchange ended, or a delay fault or a start-up wait holds the real request): the copy's work
comes after the real answer is on its way, never before it. The sender writes the copy on a connection
of its own pool, reads the answer and drops it.

Nothing here can touch the real exchange: the copy never pauses the client, never waits for anything,
and its answer goes nowhere. A mirror that is slow or down costs copies, not latency: past
`mirror_max_in_flight` copies per service (or `mirror_max_buffered_bytes` in all) waiting for the
mirror, new ones are dropped; after a failed connect, copies are dropped for `MIRROR_DOWN_BACKOFF_S`
without trying. Every copy is counted once in `RequestStats.mirrored` by result: `sent` (the mirror
answered, whatever the status), `failed`, `dropped` or `too_large`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, cast

import httptools

from devmesh import const
from devmesh.mesh.snapshot import Endpoint, Origin

if TYPE_CHECKING:
    from devmesh.proxy.server import ProxyServer

MirrorKey = tuple[str, int, bool]  # host, port, TLS


class MirrorCopy:
    """The copy of one request, collected while its body arrives."""

    __slots__ = ("complete", "endpoint", "frames", "held", "limit", "sent", "size", "too_large")

    def __init__(self, endpoint: Endpoint, limit: int) -> None:
        self.endpoint = endpoint
        self.frames: list[bytes] = []
        self.limit = limit
        self.size = 0
        self.too_large = False
        self.complete = False  # the whole request is in hand
        self.held = False  # the real request is held (a delay fault, a start-up wait): do not wait for it
        self.sent = False

    def add(self, frame: bytes) -> None:
        if self.too_large or self.sent:
            return
        self.size += len(frame)
        if self.size > self.limit:
            self.too_large = True  # not mirrored: the frames are let go at once
            self.frames = []
        else:
            self.frames.append(frame)


class _InFlight:
    """One copy on its way: what the bounds count, until its answer ends or it fails."""

    __slots__ = ("head_only", "service", "size")

    def __init__(self, service: str, size: int, head_only: bool) -> None:
        self.service = service
        self.size = size
        self.head_only = head_only


class MirrorConnection(asyncio.Protocol):
    """A connection to a mirror: one copy at a time, its answer parsed and dropped, then pooled."""

    __slots__ = (
        "closed",
        "copy",
        "deadline",
        "finished",
        "idle_since",
        "interim",
        "key",
        "parser",
        "sender",
        "status",
        "transport",
    )

    def __init__(self, sender: MirrorSender, key: MirrorKey) -> None:
        self.sender = sender
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.copy: _InFlight | None = None
        self.closed = False
        self.deadline = 0.0
        self.idle_since = 0.0
        self.status = 0
        self.interim = False
        self.finished = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.copy is None:
            self.close()  # bytes nobody asked for: never reuse this connection
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._end("failed", reuse=False)
            return
        if self.finished:
            self._end("sent", reuse=self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sender.forget(self)
        copy, self.copy = self.copy, None
        if copy is not None:
            # A body delimited by the close ends here; anything else ended before the answer did.
            self.sender.done(copy, "sent" if self.status >= 200 else "failed")

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: the answer is still to come
            return
        self.status = status
        if self.copy is not None and self.copy.head_only:
            self.finished = True  # an answer to HEAD has no body, whatever Content-Length says

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.finished = True

    # -- used by the sender -------------------------------------------------------------------------

    def send(self, copy: _InFlight, data: bytes, deadline: float) -> None:
        self.copy = copy
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.interim = self.finished = False
        self.deadline = deadline
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def timed_out(self) -> None:
        self._end("failed", reuse=False, abort=True)

    def _end(self, result: str, *, reuse: bool, abort: bool = False) -> None:
        copy, self.copy = self.copy, None
        self.deadline = 0.0
        if copy is not None:
            self.sender.done(copy, result)
        if reuse and not self.closed:
            self.sender.release(self)
        elif abort:
            self.abort()
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sender.forget(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.sender.forget(self)
            if self.transport is not None:
                self.transport.abort()


class MirrorSender:
    """Sends copies for one proxy server, on a pool of its own (mirrors never take the real requests'
    connections, nor count in `least_conn`), within the bounds of `ProxyLimits`."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        limits = server.limits
        self.max_in_flight = limits.mirror_max_in_flight
        self.max_buffered = limits.mirror_max_buffered_bytes
        self.timeout_s = limits.mirror_timeout_s
        self.idle_timeout_s = limits.upstream_idle_timeout_s
        self.connect_timeout_s = limits.connect_timeout_s
        self.idle: dict[MirrorKey, list[MirrorConnection]] = {}
        self.busy: set[MirrorConnection] = set()
        self.in_flight: dict[str, int] = {}  # copies per service, from send to the end of the answer
        self.in_flight_bytes = 0
        self.opened = 0  # connections ever opened (tests read it to see reuse)
        self._down_until: dict[MirrorKey, float] = {}

    def send(self, service: str, endpoint: Endpoint, data: bytes, *, head_only: bool = False) -> None:
        """Send one copy (a whole request: head and body), or count why not."""
        stats = self.server.stats
        if not endpoint.healthy:
            stats.mirror(service, "failed")  # a peer mirror that is not there
            return
        if (
            self.in_flight.get(service, 0) >= self.max_in_flight
            or self.in_flight_bytes + len(data) > self.max_buffered
        ):
            stats.mirror(service, "dropped")
            return
        key = (endpoint.host, endpoint.port, endpoint.tls)
        loop = self.server.loop
        if self._down_until.get(key, 0.0) > loop.time():
            stats.mirror(service, "failed")
            return
        copy = _InFlight(service, len(data), head_only)
        self.in_flight[service] = self.in_flight.get(service, 0) + 1
        self.in_flight_bytes += len(data)
        connection = self._acquire(key)
        if connection is not None:
            connection.send(copy, data, loop.time() + self.timeout_s)
        else:
            self.server.spawn(self._connect(key, endpoint, copy, data))

    def done(self, copy: _InFlight, result: str) -> None:
        self.in_flight[copy.service] -= 1
        self.in_flight_bytes -= copy.size
        self.server.stats.mirror(copy.service, result)

    async def _connect(self, key: MirrorKey, endpoint: Endpoint, copy: _InFlight, data: bytes) -> None:
        loop = self.server.loop
        context = self.server.pool.tls_context(peer=endpoint.origin is Origin.PEER) if endpoint.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _transport, connection = await loop.create_connection(
                    lambda: MirrorConnection(self, key),
                    endpoint.host,
                    endpoint.port,
                    ssl=context,
                    server_hostname=endpoint.host if endpoint.tls else None,
                )
        except (OSError, TimeoutError):
            self._down_until[key] = loop.time() + const.MIRROR_DOWN_BACKOFF_S
            self.done(copy, "failed")
            return
        except asyncio.CancelledError:
            self.done(copy, "failed")  # the proxy is closing
            raise
        self.opened += 1
        self._down_until.pop(key, None)
        self.busy.add(connection)
        connection.send(copy, data, loop.time() + self.timeout_s)

    def _acquire(self, key: MirrorKey) -> MirrorConnection | None:
        idle = self.idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                self.busy.add(connection)
                return connection
        return None

    def release(self, connection: MirrorConnection) -> None:
        self.busy.discard(connection)
        idle = self.idle.setdefault(connection.key, [])
        if len(idle) >= self.max_in_flight:
            connection.close()
            return
        connection.idle_since = self.server.loop.time()
        idle.append(connection)

    def forget(self, connection: MirrorConnection) -> None:
        self.busy.discard(connection)
        idle = self.idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def sweep(self, now: float) -> None:
        """Close connections idle too long; give up on copies whose answer is late."""
        for key, idle in list(self.idle.items()):
            for connection in [c for c in idle if now - c.idle_since > self.idle_timeout_s]:
                connection.close()
            if not idle:
                del self.idle[key]
        for connection in [c for c in self.busy if c.deadline and now > c.deadline]:
            connection.timed_out()
        for key in [k for k, until in self._down_until.items() if until < now]:
            del self._down_until[key]

    def close(self) -> None:
        for idle in list(self.idle.values()):
            for connection in list(idle):
                connection.close()
        for connection in list(self.busy):
            with contextlib.suppress(Exception):
                connection.abort()
        self.idle.clear()
        self.busy.clear()
