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
