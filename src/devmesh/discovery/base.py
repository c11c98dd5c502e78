"""What every discovery source reports, and the shape of a source the agent can run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from devmesh.config.schema import HealthSection
    from devmesh.mesh.snapshot import Origin


@dataclass(frozen=True)
class DiscoveredService:
    """A service a source found: reachable on this machine's loopback at `port`."""

    name: str
    port: int
    version: str | None = None
    health: HealthSection | None = None  # None: healthy while the port accepts connections
    detail: str = ""  # where it comes from, for logs and `devmesh status` ("container shop-api-1")
    # Whether it can serve, when the source knows better than a probe of `port` can (a Kubernetes
    # Service's port-forward listener accepts even with no pod behind it): None, devmesh checks `health`
    # (or the port); True/False, the service is healthy exactly while the source says so, never probed.
    ready: bool | None = None
    ready_detail: str = ""  # why it is not ready (ready False): "no ready pod behind shop/api"

    def same_registration(self, other: DiscoveredService | None) -> bool:
        """Whether `other` is this service registered the same way: only its readiness may differ (a
        change of readiness alone is reported to the running registration, not a new one)."""
        return other is not None and (
            (self.name, self.port, self.version, self.health, self.detail, self.ready is None)
            == (other.name, other.port, other.version, other.health, other.detail, other.ready is None)
        )


Report = Callable[[Sequence[DiscoveredService]], None]


class DiscoverySource(Protocol):
    """A running source: `run` reports the whole set it sees each time it changes, until cancelled, and
    releases what it holds (port-forward listeners, event streams) when cancelled. It survives its
    backend going away (reports an empty set, retries with backoff) and never raises for that."""

    origin: Origin

    def describe(self) -> str:
        """One line for logs: "Docker at unix:///run/docker.sock"."""
        ...

    async def run(self, report: Report) -> None: ...
