"""The schema of `devmesh.toml` (DESIGN §2): every section, validated in full.

Sections that later parts of devmesh act on (peers, faults, scenarios, discovery, hub) are validated here
already, so that a typo in them is caught on the first `devmesh up` and not when the feature arrives.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from devmesh import const
from devmesh.config.units import (
    Address,
    DurationRange,
    parse_address,
    parse_duration_range,
    parse_duration_s,
    parse_rate_bytes_per_s,
)

Duration = Annotated[float, BeforeValidator(parse_duration_s), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration_s), Field(gt=0)]
AddressField = Annotated[Address, BeforeValidator(parse_address), PlainSerializer(str)]
DurationRangeField = Annotated[DurationRange, BeforeValidator(parse_duration_range)]
BytesPerSecond = Annotated[int, BeforeValidator(parse_rate_bytes_per_s)]

_SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z")


def _check_specifier(value: str) -> str:
    # Imported here: packaging costs ~40 ms, and most configs have no `requires`.
    from devmesh.peers.versions import parse_requires

    parse_requires(value)
    return value


# A route prefix: a path of these characters, with devmesh's trailing `*` glob ("/api/*"). Proxies'
# configs are rendered from it (`devmesh export`, the nginx engine): nothing that could end a directive.
_ROUTE_RE = re.compile(r"^/[A-Za-z0-9._~%/-]*\*?\Z")
_URL_HOST_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\Z")
_UNPRINTABLE_RE = re.compile(r"[\x00-\x20\x7f]")  # whitespace and control characters


def is_service_name(name: str) -> bool:
    """Whether `name` is a service name (it becomes a host name: lower-case letters, digits and '-')."""
    return bool(_SERVICE_NAME_RE.match(name))


def _url_problem(value: str) -> str | None:
    """Why `value` is not an http(s) URL of a real host name or IP address (with an optional port)."""
    if _UNPRINTABLE_RE.search(value):
        return "it contains whitespace or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        return str(error)
    if parts.scheme not in ("http", "https") or not value.lower().startswith(f"{parts.scheme}://"):
        return "it is not an http(s) URL"
    authority = parts.netloc
    if "@" in authority:
        return "a user name or password in the URL is not supported"
    host = parts.hostname or ""
    expected = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    if authority.lower() != expected:
        return f"{authority!r} is not a host name or IP address with an optional port"
    if port == 0:
        return "port 0 is not a port"
    if ":" in host or host.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return f"{host!r} is not an IP address"
        return None
    if not host:
        return "it has no host name"
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_URL_HOST_LABEL_RE.match(label) for label in labels):
        return f"{host!r} is not a host name (letters, digits, '-' and '.')"
    return None


def _check_url(value: str) -> str:
    problem = _url_problem(value)
    if problem is not None:
        raise ValueError(f'{value!r} is not a URL ({problem}); write it as "https://host[:port]"')
    return value.rstrip("/")


_PEER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def _check_mirror(value: str) -> str:
    """`mirror`: a URL, or `peer=ID` (a peer id, or its host-name part)."""
    if value.startswith("peer="):
        peer = value.removeprefix("peer=").strip()
        if not _PEER_ID_RE.match(peer):
            raise ValueError(
                f'{value!r} does not name a peer; write it as "peer=alice" or "peer=alice-3f2a1b"'
            )
        return f"peer={peer}"
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f'{value!r} is neither a URL nor a peer; write "https://host[:port]" or "peer=ID"')
    return _check_url(value)


def _check_route(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f'{value!r} is not a path prefix; it must start with "/", as in "/api/*"')
    if not _ROUTE_RE.match(value):
        raise ValueError(
            f"{value!r} is not a path prefix: use letters, digits and . _ ~ % / -, with an optional "
            'trailing "*", as in "/api/*"'
        )
    return value


def _check_path_pattern(value: str) -> str:
    """A fault's `paths` entry: a prefix, or a glob ("/charge*", "/api/*/items")."""
    if not value.startswith("/"):
        raise ValueError(f'{value!r} is not a path; it must start with "/", as in "/charge*"')
    if _UNPRINTABLE_RE.search(value):
        raise ValueError(f"{value!r} is not a path: it contains whitespace or control characters")
    return value


def _check_method(value: str) -> str:
    upper = value.upper()
    if not upper.isalpha() or not upper.isascii():
        raise ValueError(f"{value!r} is not an HTTP method (GET, POST, ...)")
    return upper


def _check_host(value: str) -> str:
    lowered = value.lower()
    if not _HOST_RE.match(lowered):
        raise ValueError(f"{value!r} is not a host name; use letters, digits, '-' and '.', or \"*.name\"")
    return lowered


SpecifierText = Annotated[str, AfterValidator(_check_specifier)]
Url = Annotated[str, AfterValidator(_check_url)]
MirrorTarget = Annotated[str, AfterValidator(_check_mirror)]
RoutePrefix = Annotated[str, AfterValidator(_check_route)]
PathPattern = Annotated[str, AfterValidator(_check_path_pattern)]
HttpMethod = Annotated[str, AfterValidator(_check_method)]
HostName = Annotated[str, AfterValidator(_check_host)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class MeshSection(Section):
    name: str = ""
    domain: HostName = "localhost"
    secret: str | None = None
    share: bool = False
    version_policy: Literal["reject", "warn"] = "reject"


class MeshTLS(Section):
    cert: str
    key: str
    ca: str


class ProxySection(Section):
    listen: AddressField = parse_address(const.DEFAULT_LISTEN)
    https: AddressField | None = None
    admin: AddressField = parse_address(const.DEFAULT_ADMIN)
    mesh: AddressField = parse_address(const.DEFAULT_MESH)
    mesh_tls: MeshTLS | None = None
    allow_fault_header: bool = False
    timeout: PositiveDuration = 30.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    access_log: Literal["json", "text", "off"] = "json"


class HealthSection(Section):
    """One of `http` (a path), `tcp = true` or `cmd` (a shell command that exits 0 when healthy)."""

    http: str | None = None
    tcp: bool = False
    cmd: str | None = None
    interval: PositiveDuration = const.HEALTH_INTERVAL_S
    timeout: PositiveDuration = const.HEALTH_TIMEOUT_S
    unhealthy_after: Annotated[int, Field(ge=1)] = const.HEALTH_UNHEALTHY_AFTER

    @model_validator(mode="after")
    def _exactly_one_probe(self) -> Self:
        chosen = [name for name, on in (("http", self.http), ("tcp", self.tcp), ("cmd", self.cmd)) if on]
        if len(chosen) != 1:
            raise ValueError(
                'a health check needs exactly one of http = "/health", tcp = true or cmd = "..."'
                + (f" (found {', '.join(chosen)})" if chosen else "")
            )
        if self.http is not None and not self.http.startswith("/"):
            raise ValueError(f'health.http must be a path starting with "/", not {self.http!r}')
        return self


class ServiceSection(Section):
    command: str | list[str] | None = None
    cwd: str | None = None
    port: Port | None = None
    env: dict[str, str] = Field(default_factory=dict)
    version: str | None = None
    hosts: list[HostName] | None = None
    routes: list[RoutePrefix] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    watch: list[str] = Field(default_factory=list)
    health: HealthSection | None = None
    requires: SpecifierText | None = None
    remote: Url | None = None
    mirror: MirrorTarget | None = None  # a URL, or peer=ID
    share: bool | None = None
    lb: Literal["round_robin", "least_conn", "random"] = "round_robin"
    sticky: Literal["cookie"] | None = None
    stop_grace: Duration = const.STOP_GRACE_S

    @model_validator(mode="after")
    def _runnable_or_reachable(self) -> Self:
        if self.command is not None and not (
            self.command.strip() if isinstance(self.command, str) else self.command
        ):
            raise ValueError("command is empty; give the command line that starts the service, or omit it")
        if self.command is None and self.port is None and self.remote is None and self.requires is None:
            raise ValueError(
                "a service needs a command to run, a port where it is already running, a remote URL, "
                "or `requires` (the versions accepted from peers)"
            )
        if self.command is None and self.watch:
            raise ValueError("watch restarts a command devmesh runs; this service has no command")
        return self


class FaultSection(Section):
    service: str
    delay: DurationRangeField | None = None
    abort: Annotated[int, Field(ge=100, le=599)] | None = None
    outage: Literal["503", "reset"] | None = None  # answer 503, or reset the connection
    rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    paths: list[PathPattern] = Field(default_factory=list)
    methods: list[HttpMethod] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    bandwidth: BytesPerSecond | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if self.delay is None and self.abort is None and self.outage is None and self.bandwidth is None:
            raise ValueError("a fault needs at least one of delay, abort, outage or bandwidth")
        if self.abort is not None and self.outage is not None:
            raise ValueError("a fault answers with abort or with an outage, not both")
        return self


class ScenarioSection(Section):
    faults: list[str] = Field(default_factory=list)
    outage: list[str] = Field(default_factory=list)
    duration: PositiveDuration | None = None


class PeersSection(Section):
    discovery: Literal["mdns", "off"] = "mdns"
    interfaces: list[str] = Field(default_factory=list)
    static: list[AddressField] = Field(default_factory=list)
    hub: Url | None = None
    hub_token: str | None = None


class KubernetesSection(Section):
    context: str | None = None
    namespace: str = "default"
    # The kubeconfig the context is in, when not the default ($KUBECONFIG, else ~/.kube/config): a path
    # relative to the project (or absolute, or ~/...), or several joined like $KUBECONFIG's.
    kubeconfig: Annotated[str, Field(min_length=1)] | None = None

    def kubeconfig_path(self, project_dir: Path) -> str | None:
        """`kubeconfig` with each of its paths resolved against `project_dir`; None when not set."""
        if self.kubeconfig is None:
            return None
        paths = [Path(entry).expanduser() for entry in self.kubeconfig.split(os.pathsep) if entry]
        return os.pathsep.join(str(project_dir / path) for path in paths)


class DiscoverySection(Section):
    docker: bool = False
    kubernetes: KubernetesSection | None = None


class ObserveSection(Section):
    otlp: Url | None = None  # export a span per proxied request (extra: devmesh[otel])
    requests_kept: Annotated[int, Field(ge=0, le=1_000_000)] = 1000
    # Where the access log goes ([proxy] access_log sets its format): a file (relative to the project),
    # or "-" for the terminal, merged with the services' logs. Default: .devmesh/logs/access.log.
    access_log_path: Annotated[str, Field(min_length=1)] | None = None


class EngineSection(Section):
    kind: Literal["builtin", "nginx"] = "builtin"
    nginx: str = "nginx"


class MeshConfig(Section):
    """The whole validated config: what `devmesh.toml` and its overlays say, merged."""

    mesh: MeshSection = Field(default_factory=MeshSection)
    proxy: ProxySection = Field(default_factory=ProxySection)
    services: dict[str, ServiceSection] = Field(default_factory=dict)
    faults: dict[str, FaultSection] = Field(default_factory=dict)
    scenarios: dict[str, ScenarioSection] = Field(default_factory=dict)
    peers: PeersSection = Field(default_factory=PeersSection)
    discovery: DiscoverySection = Field(default_factory=DiscoverySection)
    observe: ObserveSection = Field(default_factory=ObserveSection)
    engine: EngineSection = Field(default_factory=EngineSection)

    @model_validator(mode="after")
    def _cross_references(self) -> Self:
        names = set(self.services)
        for name, service in self.services.items():
            if not _SERVICE_NAME_RE.match(name):
                raise _KeyedError(
                    ("services", name),
                    f"service name {name!r} must be lower-case letters, digits and '-' (it becomes a host name)",
                )
            for dependency in service.depends_on:
                if dependency not in names:
                    raise _KeyedError(
                        ("services", name, "depends_on"),
                        f"{name} depends on {dependency!r}, which is not a service here",
                        candidates=names,
                        wrong=dependency,
                    )
                if dependency == name:
                    raise _KeyedError(("services", name, "depends_on"), f"{name} depends on itself")
        cycle = _find_cycle({name: list(s.depends_on) for name, s in self.services.items()})
        if cycle:
            raise _KeyedError(
                ("services", cycle[0], "depends_on"), "depends_on forms a cycle: " + " -> ".join(cycle)
            )
        seen_hosts: dict[str, str] = {}
        seen_ports: dict[int, str] = {}
        for name, service in self.services.items():
            for host in service.hosts if service.hosts is not None else [name]:
                if host in seen_hosts:
                    raise _KeyedError(
                        ("services", name, "hosts"),
                        f"host {host!r} is claimed by both {seen_hosts[host]} and {name}",
                    )
                seen_hosts[host] = name
            if service.port is not None:
                if service.port in seen_ports:
                    raise _KeyedError(
                        ("services", name, "port"),
                        f"port {service.port} is given to both {seen_ports[service.port]} and {name}",
                    )
                seen_ports[service.port] = name
        for fault_name, fault in self.faults.items():
            if fault.service not in names:
                raise _KeyedError(
                    ("faults", fault_name, "service"),
                    f"fault {fault_name!r} names service {fault.service!r}, which is not a service here",
                    candidates=names,
                    wrong=fault.service,
                )
        for scenario_name, scenario in self.scenarios.items():
            for fault_ref in scenario.faults:
                if fault_ref not in self.faults:
                    raise _KeyedError(
                        ("scenarios", scenario_name, "faults"),
                        f"scenario {scenario_name!r} names fault {fault_ref!r}, which is not in [faults]",
                        candidates=set(self.faults),
                        wrong=fault_ref,
                    )
            for service_ref in scenario.outage:
                if service_ref not in names:
                    raise _KeyedError(
                        ("scenarios", scenario_name, "outage"),
                        f"scenario {scenario_name!r} names service {service_ref!r}, which is not a service here",
                        candidates=names,
                        wrong=service_ref,
                    )
        return self


class _KeyedError(ValueError):
    """A cross-reference error that knows which key it is about, for the loader to locate in the file."""

    def __init__(
        self,
        key_path: tuple[str, ...],
        message: str,
        *,
        candidates: set[str] | None = None,
        wrong: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key_path = key_path
        self.message = message
        self.candidates = candidates or set()
        self.wrong = wrong


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """A dependency cycle as a list of names (first repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for child in graph.get(node, []):
            if state.get(child) == 1:
                return [*stack[stack.index(child) :], child]
            if state.get(child) is None:
                found = visit(child)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


KeyedError = _KeyedError
