"""What the agent tells those who watch it, beyond its snapshots: the events stream's `hello`, a
`service` event for each status that changed since the stream last spoke, peers joining and leaving, a
traffic sample a second; and the sources of `/metrics`.

Each is pushed (or read at scrape time) from the parts the agent already keeps; nothing here is on the
request path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from devmesh import const
from devmesh.observe.events import Event, EventHub, TrafficSampler, service_events

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from devmesh.admin.models import ServiceStatus, StatusDocument
    from devmesh.mesh.snapshot import MeshState
    from devmesh.peers.follower import PeerFollower
    from devmesh.proxy.observe import AccessLog
    from devmesh.proxy.server import ProxyServer


class StreamFeed:
    """Remembers what the events stream last said (each service's status, the live peers), so that it
    says only what changed; and samples the proxy's traffic for the dashboard's charts."""

    def __init__(self, events: EventHub, *, clock: Callable[[], float] = time.time) -> None:
        self.events = events
        self._clock = clock
        self._sent_statuses: dict[str, dict[str, object]] = {}
        self._live_peers: set[str] = set()
        self._traffic = TrafficSampler()

    def services_seen(self, services: Iterable[ServiceStatus], revision: int) -> None:
        """A `service` event for each service whose status differs from what the stream last said."""
        current = {entry.name: entry.model_dump() for entry in services}
        for event in service_events(self._sent_statuses, current, self._clock()):
            event["revision"] = revision  # the snapshot it describes, as in status's agent.revision
            self.events.publish(event)
        self._sent_statuses = current

    def peers_seen(self, live: set[str], entries: Callable[[], list[dict[str, object]]]) -> None:
        """`joined` and `left` events for the peers that came or went since the last call, each with
        `entries()` (the status document's peers, built only when some peer came or went)."""
        if live == self._live_peers:
            return
        now = self._clock()
        peers = entries()
        for peer in sorted(live - self._live_peers):
            self.events.publish(
                {"type": "peer", "time": now, "event": "joined", "peer": peer, "peers": peers}
            )
        for peer in sorted(self._live_peers - live):
            self.events.publish({"type": "peer", "time": now, "event": "left", "peer": peer, "peers": peers})
        self._live_peers = live

    def hello(self, status: StatusDocument, access_log: AccessLog | None) -> Event:
        """The first message of the events stream: everything a dashboard draws, as of `status`."""
        self._sent_statuses = {entry.name: entry.model_dump() for entry in status.services}
        recent = list(access_log.recent)[-const.EVENTS_HELLO_REQUESTS :] if access_log is not None else []
        return {
            "type": "hello",
            "time": self._clock(),
            "status": status.model_dump(),
            "requests": [record.summary() for record in recent],
            "traffic": list(self.events.traffic_history),
        }

    async def sample_traffic(self, proxy: Callable[[], ProxyServer | None]) -> None:
        """Once a second: what each service served, for the dashboard's charts (pushed, never polled)."""
        while True:
            await asyncio.sleep(const.TRAFFIC_SAMPLE_INTERVAL_S)
            serving = proxy()
            if serving is None or serving.access_log is None:
                continue
            sample = self._traffic.sample(serving.stats, serving.access_log.recent, self._clock())
            sample["faults_injected"] = dict(serving.stats.faults)  # totals, by fault name
            self.events.traffic_history.append(
                {key: value for key, value in sample.items() if key != "requests"}
            )
            if self.events.subscribers:
                self.events.publish(sample)


class ObservedAgent(Protocol):
    """The parts of the agent that `/metrics` reads, each at scrape time."""

    peer_id: str
    state: MeshState
    proxy: ProxyServer | None
    mesh_proxy: ProxyServer | None
    peers: PeerFollower | None


def metrics_registry_of(agent: ObservedAgent) -> CollectorRegistry:
    """The agent's own Prometheus registry (never the global one), over its proxies, peers and snapshot."""
    from devmesh.observe.metrics import MeshSources, metrics_registry

    return metrics_registry(
        MeshSources(
            snapshot=lambda: agent.state.snapshot,
            proxy_stats=lambda: agent.proxy.stats if agent.proxy is not None else None,
            mesh_stats=lambda: agent.mesh_proxy.stats if agent.mesh_proxy is not None else None,
            live_peers=lambda: len(agent.peers.live()) if agent.peers is not None else 0,
            mesh_refused=lambda: (
                agent.mesh_proxy.mesh.refused if agent.mesh_proxy and agent.mesh_proxy.mesh else 0
            ),
            faults_injected=lambda: agent.proxy.stats.faults if agent.proxy is not None else {},
            peer_id=agent.peer_id,
        )
    )
