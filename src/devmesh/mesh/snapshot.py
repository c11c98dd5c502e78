"""The immutable snapshot of the mesh that the proxy, the admin API and the CLI read.

Sources (config, supervisor, health checks, registrations, later discovery) never touch a snapshot; they
report changes to the `MeshState`, which builds a new snapshot and swaps it in one assignment. A reader
takes `state.snapshot` once per request and sees a consistent mesh without locks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from devmesh.faults.policy import FaultPolicy


class Origin(StrEnum):
    """Where an endpoint comes from."""

    LOCAL = "local"  # a process devmesh supervises, or a port given in the config
    REGISTERED = "registered"  # an external process that registered through the admin API
    DOCKER = "docker"  # a container with a published port, found by [discovery] docker
    KUBERNETES = "kubernetes"  # a cluster's Service, reached through a port-forward on this machine
    PEER = "peer"  # a teammate's agent
    REMOTE = "remote"  # the shared remote fallback


# Services devmesh does not start and the config does not name: they come and go with their source.
EXTERNAL_ORIGINS = frozenset({Origin.REGISTERED, Origin.DOCKER, Origin.KUBERNETES})


class RunState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    CRASHED = "crashed"


class Health(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place a service can be reached: a host and port, with where it comes from."""

    service: str
    host: str
    port: int
    origin: Origin
    healthy: bool
    version: str | None = None
    peer_id: str | None = None
    tls: bool = False  # the remote fallback over HTTPS
    host_header: str | None = None  # the Host a remote expects (its own name), instead of the client's

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServiceView:
    """A service as the mesh sees it right now."""

    name: str
    origin: Origin
    state: RunState
    health: Health
    hosts: tuple[str, ...]
    routes: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    version: str | None = None
    port: int | None = None
    pid: int | None = None
    restarts: int = 0
    remote: str | None = None
    requires: str | None = None
    detail: str | None = None  # the last error or exit status, for `status` and error pages
    remote_detail: str | None = None  # why the remote fallback is not used (its probe, its version)
    mirror: Endpoint | None = None  # where a copy of each request goes (`mirror`); unhealthy: not there
    lb: str = "round_robin"  # round_robin | least_conn | random, among endpoints of one tier
    sticky: str | None = None  # "cookie": a browser keeps the endpoint it got first


@dataclass(frozen=True, slots=True)
class MeshSnapshot:
    """Everything the data plane needs to route a request; never mutated after it is built."""

    revision: int
    mesh: str
    domain: str
    services: Mapping[str, ServiceView] = field(default_factory=lambda: MappingProxyType({}))
    config_error: str | None = None
    # The fault policies in force, by service: read by the proxy for every request of that service.
    faults: Mapping[str, tuple[FaultPolicy, ...]] = field(default_factory=lambda: MappingProxyType({}))


SnapshotListener = Callable[[MeshSnapshot], None]


class MeshState:
    """Holds the current snapshot and tells listeners when it is replaced."""

    def __init__(self, mesh: str, domain: str) -> None:
        self._snapshot = MeshSnapshot(revision=0, mesh=mesh, domain=domain)
        self._listeners: list[SnapshotListener] = []

    @property
    def snapshot(self) -> MeshSnapshot:
        return self._snapshot

    def subscribe(self, listener: SnapshotListener) -> None:
        self._listeners.append(listener)

    def publish(
        self,
        services: Mapping[str, ServiceView],
        *,
        mesh: str | None = None,
        domain: str | None = None,
        config_error: str | None = None,
        faults: Mapping[str, tuple[FaultPolicy, ...]] | None = None,
    ) -> MeshSnapshot:
        """Build and swap in the next snapshot."""
        previous = self._snapshot
        snapshot = MeshSnapshot(
            revision=previous.revision + 1,
            mesh=mesh if mesh is not None else previous.mesh,
            domain=domain if domain is not None else previous.domain,
            services=MappingProxyType(dict(services)),
            config_error=config_error,
            faults=MappingProxyType(dict(faults)) if faults is not None else previous.faults,
        )
        self._snapshot = snapshot
        for listener in self._listeners:
            listener(snapshot)
        return snapshot
