"""Finding peers on the LAN with mDNS/DNS-SD (`_devmesh._tcp.local.`), with zeroconf.

mDNS only says where agents are: liveness comes from fetching their catalogs (a killed agent lingers in
mDNS caches for ~20 minutes; see shared/notes/testnet.md). A clean stop sends a goodbye, and the peer
leaves at once. Instance names are random per start, so probing can be skipped (cooperating responders).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from devmesh.config.units import Address
from devmesh.peers.catalog import PROTOCOL_VERSION
from devmesh.peers.follower import PeerFollower

SERVICE_TYPE = "_devmesh._tcp.local."
RESOLVE_TIMEOUT_MS = 3000


class MdnsDiscovery:
    def __init__(
        self,
        *,
        peer_id: str,
        mesh_hash: str,
        epoch: float,
        announce: Address | None,
        interfaces: list[str],
        follower: PeerFollower,
        log: Callable[..., None],
    ) -> None:
        self._peer_id = peer_id
        self._mesh_hash = mesh_hash
        self._epoch = epoch
        self._announce = announce
        self._interfaces = interfaces
        self._follower = follower
        self._log = log
        self._zeroconf: Any = None
        self._browser: Any = None
        self._info: Any = None
        self._found: dict[str, Address] = {}  # instance name -> mesh port address
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from zeroconf import InterfaceChoice, IPVersion, ServiceInfo
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        interfaces: Any = self._interfaces or InterfaceChoice.All
        self._zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.All)
        if self._announce is not None:
            addresses = _announced_addresses(self._announce, self._interfaces)
            self._info = ServiceInfo(
                SERVICE_TYPE,
                f"{self._peer_id}.{SERVICE_TYPE}",
                addresses=[ipaddress.ip_address(a).packed for a in addresses],
                port=self._announce.port,
                properties={
                    "peer": self._peer_id,
                    "mesh": self._mesh_hash,
                    "proto": str(PROTOCOL_VERSION),
                    "epoch": f"{self._epoch:.3f}",
                },
                server=f"{self._peer_id}.local.",
            )
            await self._zeroconf.async_register_service(self._info, cooperating_responders=True)
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._on_change])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):
                if self._info is not None:
                    await self._zeroconf.async_unregister_service(self._info)  # the goodbye
                await self._zeroconf.async_close()

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            address = self._found.pop(name, None)
            if address is not None:
                self._follower.remove(address, "it said goodbye on mDNS")
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            return
        properties = {
            (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else "")
            for k, v in (info.properties or {}).items()
        }
        if properties.get("peer") == self._peer_id or properties.get("mesh") != self._mesh_hash:
            return  # this agent itself, or another mesh: never followed
        hosts = info.parsed_addresses()
        if not hosts or info.port is None:
            return
        host = next((h for h in hosts if ":" not in h), hosts[0])  # IPv4 first: it crosses more networks
        address = Address(host, info.port)
        previous = self._found.get(name)
        if previous is not None and str(previous) != str(address):
            self._follower.remove(previous, "it moved")
        self._found[name] = address
        self._follower.add(address)


def _announced_addresses(announce: Address, interfaces: list[str]) -> list[str]:
    """The addresses to announce for the mesh port: the one it is bound to, else the configured
    interfaces, else this machine's LAN addresses."""
    host = announce.host
    if host not in ("0.0.0.0", "::", ""):
        return [host]
    if interfaces:
        return [i for i in interfaces if _is_ip(i)]
    import psutil

    found: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                found.append(entry.address)
    return found or ["127.0.0.1"]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
