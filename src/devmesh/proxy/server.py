"""The proxy server: listeners, the route table cache, the upstream pool, limits and the sweep.

It reads the mesh through `MeshState.snapshot` on each request and rebuilds its route table only when
the snapshot's revision changes; a swap never touches requests in flight, which hold their own endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devmesh import const
from devmesh.mesh.snapshot import Endpoint, MeshSnapshot, MeshState, RunState, ServiceView
from devmesh.peers.policy import MeshPolicy
from devmesh.peers.signing import PEER_HEADER, SERVICE_HEADER, sign
from devmesh.proxy.client import ClientConnection
from devmesh.proxy.mirror import MirrorSender
from devmesh.proxy.observe import AccessLog, RequestStats
from devmesh.proxy.upstream import UpstreamPool
from devmesh.routing.table import TIER, RouteTable, normalize_host, select_endpoints

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange


# A reg-name or IPv4 address with an optional port, or a bracketed IPv6 literal (RFC 9110 §7.2); empty
# is allowed (HTTP/1.0 without Host goes to the root host).
_HOST_HEADER_RE = re.compile(rb"^(?:[A-Za-z0-9._~-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, where there is one (Linux with glibc); None elsewhere."""
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        function: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return function


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """What the proxy tolerates from clients (docs/threat-model.md); tests shrink them."""

    header_timeout_s: float = const.PROXY_HEADER_TIMEOUT_S
    body_idle_timeout_s: float = const.PROXY_BODY_IDLE_TIMEOUT_S
    keepalive_timeout_s: float = const.PROXY_KEEPALIVE_TIMEOUT_S
    max_header_bytes: int = const.PROXY_MAX_HEADER_BYTES
    max_headers: int = const.PROXY_MAX_HEADERS
    max_url_bytes: int = const.PROXY_MAX_URL_BYTES
    replay_max_bytes: int = const.PROXY_REPLAY_MAX_BYTES
    buffer_high: int = const.PROXY_BUFFER_HIGH_BYTES
    sweep_interval_s: float = const.PROXY_SWEEP_INTERVAL_S
    upstream_idle_timeout_s: float = const.PROXY_UPSTREAM_IDLE_TIMEOUT_S
    connect_timeout_s: float = const.PROXY_CONNECT_TIMEOUT_S
    start_wait_s: float = const.PROXY_START_WAIT_S
    mirror_max_body_bytes: int = const.MIRROR_MAX_BODY_BYTES
    mirror_max_in_flight: int = const.MIRROR_MAX_IN_FLIGHT
    mirror_max_buffered_bytes: int = const.MIRROR_MAX_BUFFERED_BYTES
    mirror_timeout_s: float = const.MIRROR_TIMEOUT_S


class ProxyServer:
    def __init__(
        self,
        state: MeshState,
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        access_log: AccessLog | None = None,
        limits: ProxyLimits | None = None,
        mesh: MeshPolicy | None = None,
        peer_id: str = "",
        peer_key: bytes | None = None,
        allow_fault_header: bool = False,
    ) -> None:
        self.state = state
        self.allow_fault_header = allow_fault_header  # [proxy] allow_fault_header
        # On the mesh port: requests come from peers, are checked by `mesh` and served locally only.
        self.mesh = mesh
        # On the way to a peer: who this agent is, and the key its requests are signed with.
        self.peer_id = peer_id
        self.peer_key = peer_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.access_log = access_log
        self.limits = limits or ProxyLimits()
        self.replay_limit = self.limits.replay_max_bytes
        self.buffer_high = self.limits.buffer_high
        self.start_wait_s = self.limits.start_wait_s
        self.stats = RequestStats()
        self.request_seq = 0  # ids of recorded requests, for `devmesh replay ID`
        self.pool = UpstreamPool(
            idle_timeout_s=self.limits.upstream_idle_timeout_s,
            connect_timeout_s=self.limits.connect_timeout_s,
        )
        self.mirror = MirrorSender(self)  # copies of requests for services with a `mirror`
        self.connections: set[ClientConnection] = set()
        self.addresses: list[tuple[str, str, int]] = []  # (scheme, host, port) actually listened on
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._table: RouteTable | None = None
        self._table_snapshot: object = None
        self._turns: dict[str, int] = {}
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._served_by: dict[int, bytes] = {}
        self._hosts: dict[bytes, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests for a service that is (re)starting, by service: answered once it is up.
        self._waiting: dict[str, list[Exchange]] = {}
        state.subscribe(self._on_snapshot)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self, sock: socket.socket, *, tls: ssl.SSLContext | None = None) -> None:
        """Serve on a bound, listening socket (bound by the caller, so a busy port names its config key)."""
        self._loop = asyncio.get_running_loop()
        self.pool.clock = self._loop.time
        if self.access_log is not None:
            self.access_log.loop = self._loop
        scheme = b"https" if tls is not None else b"http"
        server = await self._loop.create_server(
            lambda: ClientConnection(self, scheme), sock=sock, ssl=tls, backlog=1024
        )
        self._servers.append(server)
        host, port = sock.getsockname()[:2]
        self.addresses.append((scheme.decode(), host, port))
        if len(self._servers) == 1:
            self.spawn(self._sweep())

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.close()
        self.pool.close_all()
        self.mirror.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self.access_log is not None:
            self.access_log.close()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        interval = self.limits.sweep_interval_s
        trim = _malloc_trim()
        served_at_last_sweep = 0
        trimmed = True
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for connection in list(self.connections):
                connection.check_deadline(now)
            self.pool.sweep(now)
            self.mirror.sweep(now)
            self._expire_waiting(now)
            served = self.stats.total()
            if served != served_at_last_sweep:
                served_at_last_sweep, trimmed = served, False
            elif not trimmed and trim is not None:
                # Traffic stopped: hand the buffers it left in the C heap back to the system, so the
                # agent's memory returns to its idle size instead of keeping its peak.
                trim(0)
                trimmed = True

    # -- per request --------------------------------------------------------------------------------

    def route_table(self) -> RouteTable:
        snapshot = self.state.snapshot
        if snapshot is not self._table_snapshot or self._table is None:
            self._table = RouteTable.build(snapshot)
            self._table_snapshot = snapshot
            self._endpoints = {}
            self._served_by = {}
        return self._table

    def endpoints_for(self, view: ServiceView) -> list[Endpoint]:
        """`select_endpoints` for the current table, computed once per snapshot for a single endpoint
        (the common case); rotated per request when there are several."""
        endpoints = self._endpoints.get(view.name)
        if endpoints is None:
            endpoints = self._endpoints[view.name] = select_endpoints(view)
        if len(endpoints) < 2:
            return endpoints
        if view.lb == "least_conn":
            in_use = self.pool.in_use
            # sorted() is stable: the usual order (local, peers, remote) breaks ties.
            return sorted(endpoints, key=lambda e: (TIER[e.origin], in_use.get((e.host, e.port), 0)))
        if view.lb == "random":
            shuffled = list(endpoints)
            random.shuffle(shuffled)
            return sorted(shuffled, key=lambda e: TIER[e.origin])
        return select_endpoints(view, self.next_turn(view.name))

    def served_by(self, endpoint: Endpoint) -> bytes:
        """`X-DevMesh-Served-By` for `endpoint`: `<peer or origin>/<service>[@<version>]`."""
        value = self._served_by.get(id(endpoint))
        if value is None:
            where = endpoint.peer_id or endpoint.origin.value
            text = f"{where}/{endpoint.service}" + (f"@{endpoint.version}" if endpoint.version else "")
            # Keyed by identity: the endpoint lives in the snapshot this cache is cleared with.
            value = self._served_by[id(endpoint)] = text.encode()
        return value

    def host_name(self, raw: bytes) -> str | None:
        """The normalized host of a Host header; None if it is not `host[:port]` (it is pasted into
        Forwarded and X-Forwarded-Host, so nothing else may pass)."""
        host = self._hosts.get(raw)
        if host is None:
            if not _HOST_HEADER_RE.match(raw):
                return None
            host = normalize_host(raw.decode("ascii"))
            if len(self._hosts) > 4096:
                self._hosts.clear()  # a client sending random hosts must not grow this forever
            self._hosts[raw] = host
        return host

    # -- requests waiting for a service to start -----------------------------------------------------

    def wait_for_start(self, exchange: Exchange, service: str) -> None:
        """Hold `exchange` until `service` has a healthy endpoint (a restart after a code change, the
        first seconds of `devmesh up`), for at most `start_wait_s`."""
        exchange.wait_deadline = self.loop.time() + self.start_wait_s
        self._waiting.setdefault(service, []).append(exchange)

    def _on_snapshot(self, snapshot: MeshSnapshot) -> None:
        if not self._waiting:
            return
        for name in list(self._waiting):
            view = snapshot.services.get(name)
            if view is not None and view.state == RunState.STARTING and not select_endpoints(view):
                continue
            # Up, gone, stopped or crashed: routing again gives the answer (forward, 404 or 503).
            for exchange in self._waiting.pop(name):
                if not exchange.done:
                    self.loop.call_soon(exchange.start)

    def _expire_waiting(self, now: float) -> None:
        for name, waiting in list(self._waiting.items()):
            late = [exchange for exchange in waiting if exchange.done or now > exchange.wait_deadline]
            if not late:
                continue
            self._waiting[name] = [exchange for exchange in waiting if exchange not in late]
            if not self._waiting[name]:
                del self._waiting[name]
            for exchange in late:
                if not exchange.done:
                    exchange.still_starting(self.start_wait_s)

    def sticky_id(self, endpoint: Endpoint) -> str:
        """A short, stable name for an endpoint, for the affinity cookie (no address leaks into it)."""
        key = f"{endpoint.peer_id or ''}|{endpoint.host}|{endpoint.port}".encode()
        return hashlib.blake2s(key, digest_size=6).hexdigest()

    def peer_headers(self, method: bytes, target: bytes, service: str) -> bytes:
        """The header lines that tell a peer's mesh port which service a request is for, and sign it."""
        lines = [f"{SERVICE_HEADER}: {service}\r\n"]
        if self.peer_key is not None:
            signed = sign(self.peer_key, method.decode(), target.decode("latin-1"), self.peer_id)
            lines.extend(f"{name}: {value}\r\n" for name, value in signed.items())
        elif self.peer_id:
            lines.append(f"{PEER_HEADER}: {self.peer_id}\r\n")
        return "".join(lines).encode("latin-1")

    def next_turn(self, service: str) -> int:
        turn = self._turns.get(service, 0)
        self._turns[service] = turn + 1
        return turn
