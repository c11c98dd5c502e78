"""Following peers: each peer's catalog fetched every PEER_POLL_INTERVAL_S, which is also its liveness.

mDNS cannot tell that a peer died (a killed peer lingers in caches for ~20 minutes), so a peer is alive
while it answers its catalog, and leaves the route table PEER_EXPIRE_S after its last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from devmesh import const
from devmesh.config.units import Address
from devmesh.peers.catalog import CATALOG_PATH, Catalog
from devmesh.peers.signing import PEER_HEADER, sign


class CatalogRefused(Exception):
    """The peer answered, but not with a catalog (401: another secret; 404: not a devmesh mesh port)."""


@dataclass
class PeerState:
    """What is known of the agent at one address."""

    address: Address
    catalog: Catalog | None = None
    last_ok: float = 0.0  # monotonic time of the last good answer
    latency_s: float = 0.0
    error: str | None = None

    @property
    def peer(self) -> str | None:
        return self.catalog.peer if self.catalog is not None else None


async def fetch_catalog(
    address: Address,
    *,
    key: bytes | None,
    peer_id: str,
    timeout_s: float = const.PEER_FETCH_TIMEOUT_S,
    tls: ssl.SSLContext | None = None,
) -> Catalog:
    headers = sign(key, "GET", CATALOG_PATH, peer_id) if key is not None else {PEER_HEADER: peer_id}
    lines = [f"GET {CATALOG_PATH} HTTP/1.1", f"Host: {address}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            address.host, address.port, ssl=tls, server_hostname=address.host if tls else None
        )
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    status, body = _parse_response(data)
    if status != 200:
        raise CatalogRefused(f"answered {status}: {body[:200].decode('utf-8', 'replace')}")
    return Catalog.from_json(body)


def _parse_response(data: bytes) -> tuple[int, bytes]:
    class Collector:
        body = b""

        def on_body(self, chunk: bytes) -> None:
            self.body += chunk

    collector = Collector()
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as error:
        raise ValueError(f"not an HTTP response: {error}") from None
    return parser.get_status_code(), collector.body


class PeerFollower:
    """Follows the agents at `addresses`; calls `on_change` when the set of live catalogs changes."""

    def __init__(
        self,
        addresses: list[Address],
        *,
        key: bytes | None,
        peer_id: str,
        mesh_hash: str,
        on_change: Callable[[], None],
        log: Callable[..., None],  # LogSink.agent: (text, component=, level=, event=, **fields)
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.peers = [PeerState(address) for address in addresses]
        self._tls = tls
        self._key = key
        self._peer_id = peer_id
        self._mesh_hash = mesh_hash
        self._on_change = on_change
        self._log = log
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        for state in self.peers:
            self._tasks[str(state.address)] = asyncio.get_running_loop().create_task(self._follow(state))

    def add(self, address: Address) -> None:
        """Follow one more address (a peer found by discovery); nothing if it is followed already."""
        if str(address) in self._tasks:
            return
        state = PeerState(address)
        self.peers.append(state)
        self._tasks[str(address)] = asyncio.get_running_loop().create_task(self._follow(state))

    def remove(self, address: Address, reason: str) -> None:
        """Stop following `address` (its agent said goodbye): it leaves the route table at once."""
        task = self._tasks.pop(str(address), None)
        if task is not None:
            task.cancel()
        for state in list(self.peers):
            if str(state.address) == str(address):
                self.peers.remove(state)
                if state.catalog is not None:
                    self._log(
                        f"peer {state.catalog.peer} at {address} left ({reason})",
                        component="peers",
                        event="peer_left",
                        peer=state.catalog.peer,
                        address=str(address),
                    )
                    self._on_change()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def live(self) -> list[PeerState]:
        return [state for state in self.peers if state.catalog is not None]

    async def _follow(self, state: PeerState) -> None:
        while True:
            started = time.monotonic()
            try:
                catalog = await fetch_catalog(
                    state.address, key=self._key, peer_id=self._peer_id, tls=self._tls
                )
            except ConnectionRefusedError:
                # Nothing listens on its mesh port: the agent stopped (or was killed, and the kernel
                # closed its socket). Unlike silence, that is certain: it leaves at once.
                self._failed(state, "its mesh port is closed", gone=True)
            except (OSError, TimeoutError, ValueError, CatalogRefused) as error:
                self._failed(state, _describe(error))
            else:
                self._answered(state, catalog, time.monotonic() - started)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.05, const.PEER_POLL_INTERVAL_S - elapsed))

    def _answered(self, state: PeerState, catalog: Catalog, latency_s: float) -> None:
        if catalog.mesh != self._mesh_hash:
            self._failed(state, "it belongs to another mesh (name or secret differ)", gone=True)
            return
        if catalog.peer == self._peer_id:
            self._failed(state, "that is this agent itself")
            return
        previous = state.catalog
        state.catalog, state.last_ok, state.latency_s, state.error = (
            catalog,
            time.monotonic(),
            latency_s,
            None,
        )
        if previous is None:
            names = ", ".join(s.name for s in catalog.services) or "no services"
            self._log(
                f"peer {catalog.peer} at {state.address} joined ({names})",
                component="peers",
                event="peer_joined",
                peer=catalog.peer,
                address=str(state.address),
            )
        if previous is None or (previous.epoch, previous.revision) != (catalog.epoch, catalog.revision):
            self._on_change()

    def _failed(self, state: PeerState, reason: str, *, gone: bool = False) -> None:
        """`gone`: certainly not there (its port is closed, or it is of another mesh): it leaves now;
        otherwise it leaves after PEER_EXPIRE_S of silence."""
        if state.error != reason:
            self._log(
                f"peer at {state.address}: {reason}",
                component="peers",
                level="warning",
                event="peer_error",
                address=str(state.address),
            )
        state.error = reason
        silent_too_long = time.monotonic() - state.last_ok > const.PEER_EXPIRE_S
        if state.catalog is not None and (gone or silent_too_long):
            why = reason if gone else f"no answer for {const.PEER_EXPIRE_S:g} s"
            self._log(
                f"peer {state.catalog.peer} at {state.address} left ({why})",
                component="peers",
                event="peer_left",
                peer=state.catalog.peer,
                address=str(state.address),
            )
            state.catalog = None
            self._on_change()


def _describe(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, OSError):
        return f"unreachable ({error.strerror or error})"
    return str(error)
