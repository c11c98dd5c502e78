"""This agent among its peers: the mesh port it serves (its catalog, and the services it offers), the
peers it follows (listed in `[peers] static`, or found by mDNS).

Nothing leaves loopback for a project alone: the mesh port is bound only when the project shares a
service or lists peers, and mDNS runs only for a team mesh (a secret set, or services shared).
`MeshPeering` is a mixin of `Agent`, over the parts declared below.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from devmesh.mesh.snapshot import Health

if TYPE_CHECKING:
    from devmesh.agent.hub_link import HubLink
    from devmesh.config import LoadedConfig
    from devmesh.config.units import Address
    from devmesh.mesh.snapshot import MeshState
    from devmesh.peers.follower import PeerFollower
    from devmesh.peers.mdns import MdnsDiscovery
    from devmesh.proxy.server import ProxyServer
    from devmesh.supervisor.logs import LogSink
    from devmesh.supervisor.manager import Supervisor


class MeshPeering:
    """The mesh port, the catalog it serves, and the peers followed."""

    # The agent's parts (see `Agent.__init__`): None until the start-up step that makes them.
    loaded: LoadedConfig
    peer_id: str
    epoch: float
    state: MeshState
    supervisor: Supervisor | None
    mesh_address: Address | None
    mesh_proxy: ProxyServer | None
    peers: PeerFollower | None
    discovery: MdnsDiscovery | None
    hub_link: HubLink | None
    _share_flag: bool
    _mesh_tls: tuple[ssl.SSLContext, ssl.SSLContext] | None

    if TYPE_CHECKING:  # the agent's own, defined in `Agent`

        def _schedule_publish(self) -> None: ...

    def _sharing(self) -> bool:
        return self.loaded.config.mesh.share or self._share_flag

    def offers(self, name: str) -> bool:
        """Whether this agent offers `name` to its peers (`share` per service, default [mesh] share)."""
        spec = self.loaded.config.services.get(name)
        if spec is None or (spec.command is None and spec.port is None):
            return False  # only what runs here; never a peer's service passed on
        return spec.share if spec.share is not None else self._sharing()

    def _mesh_key(self) -> bytes | None:
        from devmesh.peers.signing import mesh_key

        secret = self.loaded.config.mesh.secret
        return mesh_key(self.loaded.mesh_name, secret) if secret else None

    def catalog_json(self) -> bytes:
        """The catalog the mesh port serves: the services this agent runs and offers, with their health."""
        from devmesh.peers.catalog import Catalog, OfferedService
        from devmesh.peers.signing import mesh_hash

        views = self.supervisor.views(self.loaded.config.mesh.domain) if self.supervisor else {}
        offered = [
            OfferedService(view.name, view.version, view.health == Health.HEALTHY)
            for view in views.values()
            if self.offers(view.name)
        ]
        return Catalog(
            peer=self.peer_id,
            mesh=mesh_hash(self.loaded.mesh_name, self.loaded.config.mesh.secret),
            epoch=self.epoch,
            revision=self.state.snapshot.revision,
            services=offered,
        ).to_json()

    def _mdns(self) -> bool:
        """mDNS runs for a team mesh (a secret set, or services shared), never for a project alone:
        without either, nothing devmesh does leaves loopback."""
        config = self.loaded.config
        return config.peers.discovery == "mdns" and bool(config.mesh.secret or self._sharing())

    async def _start_mesh(self, sock: socket.socket | None, logs: LogSink) -> None:
        """Serve the mesh port (when there is one) and follow peers (static, and found by mDNS)."""
        from devmesh.peers.follower import PeerFollower
        from devmesh.peers.policy import MeshPolicy
        from devmesh.peers.signing import Verifier, mesh_hash

        config = self.loaded.config
        key = self._mesh_key()
        if sock is not None:
            from devmesh.proxy.server import ProxyServer

            if key is None and self._sharing():
                logs.agent(
                    "warning: this mesh is shared without a secret: anyone who can reach "
                    f"{self.mesh_address} can call the services it offers (set [mesh] secret)"
                )
            policy = MeshPolicy(
                Verifier(key) if key is not None else None, catalog=self.catalog_json, offers=self.offers
            )
            self.mesh_proxy = ProxyServer(
                self.state, timeout_s=config.proxy.timeout, retries=config.proxy.retries, mesh=policy
            )
            await self.mesh_proxy.start(sock, tls=self._mesh_tls[0] if self._mesh_tls else None)
            offered = [name for name in config.services if self.offers(name)]
            logs.agent(
                f"mesh port on {self.mesh_address} as peer {self.peer_id}"
                + (f", offering {', '.join(offered)}" if offered else ", offering nothing")
            )
        if not (config.peers.static or self._mdns() or self.hub_link is not None):
            return
        digest = mesh_hash(self.loaded.mesh_name, config.mesh.secret)
        self.peers = PeerFollower(
            list(config.peers.static),
            key=key,
            peer_id=self.peer_id,
            mesh_hash=digest,
            on_change=self._schedule_publish,
            log=logs.agent,
            tls=self._mesh_tls[1] if self._mesh_tls else None,
        )
        self.peers.start()
        if self._mdns():
            from devmesh.peers.mdns import MdnsDiscovery

            self.discovery = MdnsDiscovery(
                peer_id=self.peer_id,
                mesh_hash=digest,
                epoch=self.epoch,
                announce=self.mesh_address if self._sharing() else None,
                interfaces=list(config.peers.interfaces),
                follower=self.peers,
                log=logs.agent,
            )
            try:
                await self.discovery.start()
            except OSError as error:
                logs.agent(f"mDNS discovery is off: {error.strerror or error} (check [peers] interfaces)")
                self.discovery = None
