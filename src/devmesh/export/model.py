"""The route table as another proxy needs it: host names, root-host paths and upstream servers.

A `RouteModel` is what `devmesh export` renders for nginx, Caddy and Envoy. It is built either from a
running agent's status document (the endpoints it routes to right now) or from the config alone (only
the upstreams the config fixes: a `port`, a `remote`). It reproduces devmesh's own routing
(routing/table.py): exact host names first, then `*.name` wildcards (longest suffix first), then the
longest path prefix on the root host; anything else gets a 404.

What another proxy cannot do is said, not hidden: a peer's endpoint needs devmesh's signed agent-to-agent
requests, and a port devmesh picks at run time is not known without the agent. Those become `notes`,
which the renderers write as comments and the CLI repeats on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from devmesh import const
from devmesh.routing.table import _route_prefix  # devmesh's own reading of "/api/*", "/api/", "/"

if TYPE_CHECKING:
    from devmesh.config.schema import MeshConfig, ServiceSection

# Endpoint origins of the status document that are reachable on this machine like any local port.
_LOCAL_ORIGINS = frozenset({"local", "registered", "docker", "kubernetes"})
_EXTERNAL_ORIGINS = frozenset({"registered", "docker", "kubernetes"})
# The Host names that reach the root host besides the domain itself (as in RouteTable.is_root_host).
_ROOT_ALIASES = ("localhost", "127.0.0.1", "::1")
# Methods devmesh retries on another endpoint (proxy/exchange.py IDEMPOTENT).
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
# The statuses that send an idempotent request to the next endpoint (DESIGN §3 step 4).
RETRY_STATUSES = (502, 503, 504)
VIA = "1.1 devmesh"


class ExportError(ValueError):
    """The route table cannot be exported as asked (a bad listen address, a status it cannot read)."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """One server a service's requests go to."""

    host: str
    port: int
    origin: str  # local | registered | docker | kubernetes | remote
    tls: bool = False
    # A remote is sent its own name, as Host and as TLS SNI (without the port for SNI).
    server_name: str | None = None
    host_header: str | None = None

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthProbe:
    """The service's `health.http` check, for proxies that probe upstreams themselves."""

    path: str
    interval_s: float
    timeout_s: float
    unhealthy_after: int


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    """One service: the names that reach it and where its requests go."""

    name: str
    hosts: tuple[str, ...]  # exact Host names, full ("api.localhost") and as written ("api")
    wildcards: tuple[str, ...]  # suffixes such as ".tenant.localhost", from "*.tenant"
    local: tuple[Upstream, ...]  # tried first, balanced by `lb`
    remote: Upstream | None  # the fallback once no local upstream answers
    lb: str = "round_robin"  # round_robin | least_conn | random
    health: HealthProbe | None = None
    notes: tuple[str, ...] = ()  # what the export leaves out for this service, and why

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self.local + ((self.remote,) if self.remote is not None else ())

    @property
    def reachable(self) -> bool:
        return bool(self.local or self.remote)

    @property
    def unavailable_reason(self) -> str:
        """What a request for a service with no upstream is answered (503)."""
        return "; ".join(self.notes) or f"{self.name} has no upstream"


@dataclass(frozen=True, slots=True)
class PathRoute:
    """A path prefix on the root host: "/api" matches /api, /api/x and /api?q, not /apis."""

    prefix: str
    service: str


@dataclass(frozen=True, slots=True)
class RouteModel:
    """Everything an exported proxy config says, independent of the proxy."""

    mesh: str
    domain: str
    services: tuple[ServiceRoutes, ...]
    path_routes: tuple[PathRoute, ...]  # longest prefix first: the first match wins
    root_hosts: tuple[str, ...]  # where path routes apply (no service claims these names)
    timeout_s: float  # [proxy] timeout: an upstream's answer, and a whole retried exchange
    connect_timeout_s: float
    retries: int  # [proxy] retries: further upstreams tried after the first
    source: str  # "agent" (a running agent's endpoints) or "config" (the config alone)
    notes: tuple[str, ...] = ()  # every service's notes, prefixed with its name

    def service(self, name: str) -> ServiceRoutes:
        for routes in self.services:
            if routes.name == name:
                return routes
        raise KeyError(name)

    @property
    def wildcard_order(self) -> tuple[tuple[str, ServiceRoutes], ...]:
        """(suffix, service), longest suffix first: the most specific wildcard wins."""
        pairs = [(suffix, routes) for routes in self.services for suffix in routes.wildcards]
        pairs.sort(key=lambda pair: len(pair[0]), reverse=True)
        return tuple(pairs)

    def known_hosts(self) -> list[str]:
        """The names a request can use, for the 404 answer (as devmesh's own 404 page lists them)."""
        suffix = "." + self.domain
        names = {h for s in self.services for h in s.hosts if h.endswith(suffix) or h == self.domain}
        names.update("*" + w for s in self.services for w in s.wildcards)
        names.update(self.domain + route.prefix for route in self.path_routes)
        return sorted(names)


def from_config(config: MeshConfig, *, mesh_name: str) -> RouteModel:
    """The route table from the config alone: fixed ports and remotes; a port devmesh picks at run time
    is unknown, which the service's notes say."""
    entries = []
    for name, spec in config.services.items():
        local: list[Upstream] = []
        notes: list[str] = []
        if spec.port is not None:
            local.append(Upstream("127.0.0.1", spec.port, "local"))
        elif spec.command is not None:
            notes.append(
                "its port is picked when devmesh starts it: export while the agent runs "
                f"(`devmesh up`), or give it a fixed `port` in [services.{name}]"
            )
        elif spec.remote is None:
            notes.append(
                "it is served by peers only, whose agents take signed devmesh requests: "
                "reach it through devmesh"
            )
        entries.append((name, spec.hosts or [name], local, spec.remote, spec, notes))
    return _assemble(config, mesh_name, entries, source="config")


def from_status(services: Sequence[Mapping[str, Any]], config: MeshConfig, *, mesh_name: str) -> RouteModel:
    """The route table from a running agent's services (GET /api/v1/services): the endpoints it routes
    to now, with the config's fixed ports for services that are stopped, and the config's path routes,
    load balancing, health checks and timeouts (which the status does not carry)."""
    from pydantic import ValidationError

    from devmesh.admin.models import ServiceStatus

    entries = []
    for raw in services:
        try:
            status = ServiceStatus.model_validate(raw)
        except ValidationError as error:
            raise ExportError(f"the agent's service status cannot be read: {error}") from None
        spec = config.services.get(status.name)
        local: list[Upstream] = []
        notes: list[str] = []
        peers: list[str] = []
        for endpoint in status.endpoints:
            if endpoint.origin in _LOCAL_ORIGINS:
                host, port = _split_authority(endpoint.address)
                local.append(Upstream(host, port, endpoint.origin))
            elif endpoint.origin == "peer":
                peers.append(f"{endpoint.peer or 'peer'} at {endpoint.address}")
        pin = status.pin
        if not local and status.origin in _EXTERNAL_ORIGINS and status.port is not None and pin != "remote":
            # Registered (or discovered) at this port and not answering now: it is where it comes back.
            local.append(Upstream("127.0.0.1", status.port, status.origin))
        if not local and spec is not None and spec.port is not None and pin in (None, "local"):
            local.append(Upstream("127.0.0.1", spec.port, "local"))  # stopped now; there once started
        if pin is not None:
            notes.append(f"pinned to {pin} by `devmesh route` (the export follows the pin)")
        if peers:
            notes.append(
                "peer endpoints left out (" + ", ".join(peers) + "): peers take only signed devmesh "
                "requests, so reach them through devmesh"
            )
        if not local and spec is not None and spec.command is not None and spec.port is None and pin is None:
            notes.append(
                f"it is {status.state} and its port is picked when devmesh starts it: start it "
                f"(`devmesh run {status.name}`) and export again, or give it a fixed `port`"
            )
        remote = status.remote or (spec.remote if spec is not None else None)
        if pin is not None and pin != "remote":
            remote = None
        if not local and remote is None and not notes:
            notes.append(f"it has no endpoint on this machine ({status.state})")
        entries.append((status.name, status.hosts or [status.name], local, remote, spec, notes))
    return _assemble(config, mesh_name, entries, source="agent")


def _assemble(
    config: MeshConfig,
    mesh_name: str,
    entries: Iterable[
        tuple[str, Sequence[str], list[Upstream], str | None, ServiceSection | None, list[str]]
    ],
    *,
    source: str,
) -> RouteModel:
    domain = config.mesh.domain.lower().rstrip(".")
    suffix = "." + domain
    claimed: set[str] = set()
    services: list[ServiceRoutes] = []
    path_routes: list[PathRoute] = []
    for name, hosts, local, remote_url, spec, notes in entries:
        exact: list[str] = []
        wildcards: list[str] = []
        for written in hosts:
            host = written.lower()
            full = host if host.endswith(suffix) or host == domain else host + suffix
            if host.startswith("*."):
                if full[1:] not in claimed:
                    claimed.add(full[1:])
                    wildcards.append(full[1:])
                continue
            for candidate in (full, host):  # the first service to claim a name keeps it, as in devmesh
                if candidate not in claimed:
                    claimed.add(candidate)
                    exact.append(candidate)
        if spec is not None:
            path_routes.extend(PathRoute(_route_prefix(route), name) for route in spec.routes)
        health = None
        if spec is not None and spec.health is not None and spec.health.http is not None:
            probe = spec.health
            health = HealthProbe(probe.http or "/", probe.interval, probe.timeout, probe.unhealthy_after)
        services.append(
            ServiceRoutes(
                name=name,
                hosts=tuple(exact),
                wildcards=tuple(wildcards),
                local=tuple(dict.fromkeys(local)),
                remote=remote_upstream(remote_url) if remote_url else None,
                lb=spec.lb if spec is not None else "round_robin",
                health=health,
                notes=tuple(notes)
                + (
                    ("sticky = cookie is not exported: requests are balanced by lb",)
                    if spec and spec.sticky
                    else ()
                ),
            )
        )
    # Longest first; a prefix claimed twice keeps its first service, as the stable sort in devmesh does.
    unique: dict[str, PathRoute] = {}
    for route in path_routes:
        unique.setdefault(route.prefix, route)
    ordered = sorted(unique.values(), key=lambda route: len(route.prefix), reverse=True)
    root_hosts = tuple(h for h in dict.fromkeys((domain, *_ROOT_ALIASES)) if h not in claimed)
    timeout = config.proxy.timeout
    return RouteModel(
        mesh=mesh_name,
        domain=domain,
        services=tuple(services),
        path_routes=tuple(ordered),
        root_hosts=root_hosts,
        timeout_s=timeout,
        connect_timeout_s=min(const.PROXY_CONNECT_TIMEOUT_S, timeout),
        retries=config.proxy.retries,
        source=source,
        notes=tuple(f"{s.name}: {note}" for s in services for note in s.notes),
    )


def remote_upstream(url: str) -> Upstream:
    """A service's `remote` URL as an upstream: over TLS for https, sent its own name (as devmesh does,
    routing/remote.py)."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    return Upstream(
        host=host,
        port=parts.port or (443 if tls else 80),
        origin="remote",
        tls=tls,
        server_name=host,
        host_header=parts.netloc,
    )


def _split_authority(address: str) -> tuple[str, int]:
    """`127.0.0.1:3000` or `[::1]:3000` → (host, port)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        raise ExportError(f"the agent reported an endpoint address {address!r} that is not host:port")
    return host.strip("[]"), int(port)


def parse_listen(text: str) -> tuple[str, int]:
    """`--listen` as (host, port): "127.0.0.1:8080", "[::1]:8080", ":8080" (loopback), "8080"."""
    from devmesh.config.units import parse_address

    try:
        address = parse_address(text if ":" in text else f":{text}")
    except ValueError as error:
        raise ExportError(f"--listen: {error}") from None
    if address.port == 0:
        raise ExportError("--listen: give a fixed port (0 means any port, which a config file cannot use)")
    return address.host, address.port
