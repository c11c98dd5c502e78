"""Docker containers with published ports, as mesh services.

Two halves. The mapping (`scan_containers`) is pure: it turns the Engine API's container list (what
`GET /containers/json` returns, or `docker inspect`'s document) into services, and is what
`devmesh from-docker` prints. `DockerSource` follows an engine live for the agent: it lists the running
containers, then re-lists on each container event that can change the set.

A container becomes a service named after, in order: its `devmesh.service` label, its compose service
(`com.docker.compose.service`), its container name. Its port is the host port of the lowest published
TCP container port reachable on loopback, or the one its `devmesh.port` label names (a container port,
as Traefik's labels use); the version comes from `org.opencontainers.image.version`, else the image tag
(`latest` says nothing). `devmesh.enable=false` leaves a container out, as `traefik.enable` does.

The `docker` client blocks, so the source runs it in a thread and hands each new set to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devmesh.config.scaffold import service_name
from devmesh.discovery.base import DiscoveredService, Report
from devmesh.mesh.snapshot import Origin

if TYPE_CHECKING:
    import docker

    from devmesh.supervisor.logs import LogSink

COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
IMAGE_VERSION_LABEL = "org.opencontainers.image.version"
ENABLE_LABEL = "devmesh.enable"
SERVICE_LABEL = "devmesh.service"
PORT_LABEL = "devmesh.port"

# Container events after which the set of running containers with published ports may differ. Docker
# says `destroy` where podman says `remove`; podman does not always send `stop`. Others (exec, attach,
# health_status, podman's init/cleanup) change nothing we report.
RELIST_ACTIONS = frozenset(
    {"start", "restart", "die", "stop", "kill", "pause", "unpause", "destroy", "remove", "rename"}
)
# A port published on one of these host addresses answers on 127.0.0.1, where the mesh connects.
LOOPBACK_REACHABLE_IPS = frozenset({"", "0.0.0.0", "::", "127.0.0.1"})

ENGINE_TIMEOUT_S = 10.0  # one API call (not the events stream, which stays open)
RECONNECT_BACKOFF_INITIAL_S = 0.5
RECONNECT_BACKOFF_MAX_S = 10.0
THREAD_STOP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ContainerService:
    """A running container mapped to a service, with what `from-docker` shows about it."""

    name: str
    port: int
    version: str | None
    container: str  # the container's name
    image: str
    container_port: int
    other_ports: tuple[str, ...] = ()  # "8443/tcp -> 9443", published but not the service's port

    @property
    def detail(self) -> str:
        """Where it comes from, for logs and `devmesh status`."""
        text = f"container {self.container} (image {self.image})"
        if self.other_ports:
            text += f"; also publishes {', '.join(self.other_ports)}"
        return text

    def discovered(self) -> DiscoveredService:
        # health None: healthy while the published port accepts connections.
        return DiscoveredService(self.name, self.port, version=self.version, detail=self.detail)


@dataclass(frozen=True)
class SkippedContainer:
    container: str
    reason: str


@dataclass(frozen=True)
class DockerScan:
    """What a container list maps to: the services, and each container left out with the reason."""

    services: list[ContainerService] = field(default_factory=list)
    skipped: list[SkippedContainer] = field(default_factory=list)

    def discovered(self) -> list[DiscoveredService]:
        return [service.discovered() for service in self.services]


@dataclass(frozen=True)
class _Published:
    container_port: int
    host_port: int
    protocol: str
    host_ip: str


def scan_containers(
    containers: Iterable[Mapping[str, Any]], previous: Mapping[str, str] | None = None
) -> DockerScan:
    """Map containers (list or inspect documents) to services; deterministic whatever the input order.

    Only running containers count. Two containers wanting one name: the one that had it (`previous`:
    service name -> container, as the last scan named them) keeps it, so a container started later
    never takes a name, and its traffic, from one that runs; else the first by container name. The next
    is named after its container; if that is taken too it is skipped, saying why.
    """
    candidates: list[ContainerService] = []
    skipped: list[SkippedContainer] = []
    for raw in containers:
        document = _normalise(raw)
        mapped = _map_container(document)
        if isinstance(mapped, SkippedContainer):
            skipped.append(mapped)
        elif mapped is not None:
            candidates.append(mapped)
    services: list[ContainerService] = []
    taken: set[str] = set()
    previous = previous or {}
    for candidate in sorted(
        candidates,
        key=lambda service: (
            service.name,
            previous.get(service.name) != service.container,
            service.container,
        ),
    ):
        if candidate.name not in taken:
            taken.add(candidate.name)
            services.append(candidate)
            continue
        fallback = service_name(candidate.container)
        if fallback not in taken and fallback != candidate.name:
            taken.add(fallback)
            services.append(_renamed(candidate, fallback))
            continue
        skipped.append(
            SkippedContainer(
                candidate.container,
                f"another container is already the service {candidate.name!r}; give this one a "
                f"`{SERVICE_LABEL}=NAME` label",
            )
        )
    services.sort(key=lambda service: service.name)
    skipped.sort(key=lambda item: item.container)
    return DockerScan(services, skipped)


def _renamed(service: ContainerService, name: str) -> ContainerService:
    return ContainerService(
        name,
        service.port,
        service.version,
        service.container,
        service.image,
        service.container_port,
        service.other_ports,
    )


def _map_container(container: _Container) -> ContainerService | SkippedContainer | None:
    """The service for one container; None when it is not running (nothing to say about it)."""
    if container.state not in ("running", ""):
        return None
    labels = container.labels
    if labels.get(ENABLE_LABEL, "").strip().lower() in ("false", "0", "no", "off"):
        return SkippedContainer(container.name, f"labelled {ENABLE_LABEL}={labels[ENABLE_LABEL]}")
    reachable = [port for port in container.ports if port.protocol == "tcp"]
    if not reachable:
        return SkippedContainer(container.name, "publishes no TCP port")
    on_loopback = [port for port in reachable if port.host_ip in LOOPBACK_REACHABLE_IPS]
    if not on_loopback:
        addresses = ", ".join(sorted({port.host_ip for port in reachable}))
        return SkippedContainer(
            container.name, f"publishes its ports on {addresses} only, which 127.0.0.1 does not reach"
        )
    chosen = _choose_port(container.name, on_loopback, labels.get(PORT_LABEL))
    if isinstance(chosen, SkippedContainer):
        return chosen
    raw_name = labels.get(SERVICE_LABEL) or labels.get(COMPOSE_SERVICE_LABEL) or container.name
    others = sorted(
        {
            f"{port.container_port}/{port.protocol} -> {port.host_port}"
            for port in container.ports
            if (port.container_port, port.protocol) != (chosen.container_port, "tcp")
        }
    )
    return ContainerService(
        name=service_name(raw_name),
        port=chosen.host_port,
        version=labels.get(IMAGE_VERSION_LABEL) or image_tag(container.image),
        container=container.name,
        image=container.image,
        container_port=chosen.container_port,
        other_ports=tuple(others),
    )


def _choose_port(
    container: str, published: list[_Published], wanted: str | None
) -> _Published | SkippedContainer:
    ordered = sorted(published, key=lambda port: (port.container_port, port.host_port))
    if wanted is None:
        return ordered[0]
    listed = ", ".join(sorted({f"{port.container_port}/tcp" for port in ordered}))
    if not wanted.strip().isdigit():
        return SkippedContainer(
            container, f"label {PORT_LABEL}={wanted!r} is not a port number (published: {listed})"
        )
    for port in ordered:
        if port.container_port == int(wanted):
            return port
    return SkippedContainer(
        container, f"label {PORT_LABEL}={wanted} names a container port it does not publish ({listed})"
    )


def image_tag(image: str) -> str | None:
    """The tag of an image reference ("shop/api:1.4" -> "1.4"); None for `latest`, a digest or an ID."""
    reference = image.split("@", 1)[0]
    if reference.startswith("sha256:"):
        return None
    last = reference.rsplit("/", 1)[-1]  # "localhost:5000/api" has a registry port, not a tag
    if ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    return None if tag in ("", "latest") else tag


@dataclass(frozen=True)
class _Container:
    name: str
    image: str
    state: str  # "" when the document does not say
    labels: Mapping[str, str]
    ports: tuple[_Published, ...]


def _normalise(document: Mapping[str, Any]) -> _Container:
    """One shape for both documents the API gives: the list entry and `inspect`'s (container.attrs)."""
    if isinstance(document.get("Config"), Mapping):  # inspect
        config = document["Config"]
        state = document.get("State")
        ports: list[_Published] = []
        bindings = (document.get("NetworkSettings") or {}).get("Ports") or {}
        for key, hosts in bindings.items():
            number, _, protocol = str(key).partition("/")
            for host in hosts or []:
                if str(host.get("HostPort", "")).isdigit() and number.isdigit():
                    ports.append(
                        _Published(
                            int(number), int(host["HostPort"]), protocol or "tcp", host.get("HostIp") or ""
                        )
                    )
        return _Container(
            name=str(document.get("Name") or document.get("Id", "")[:12]).lstrip("/"),
            image=str(config.get("Image") or document.get("Image") or ""),
            state=str(state.get("Status", "")) if isinstance(state, Mapping) else "",
            labels=dict(config.get("Labels") or {}),
            ports=tuple(ports),
        )
    names = document.get("Names") or []
    listed = [
        _Published(
            int(port["PrivatePort"]), int(port["PublicPort"]), port.get("Type") or "tcp", port.get("IP") or ""
        )
        for port in document.get("Ports") or []
        if port.get("PublicPort")
    ]
    return _Container(
        name=str(names[0] if names else document.get("Id", "")[:12]).lstrip("/"),
        image=str(document.get("Image") or ""),
        state=str(document.get("State") or ""),
        labels=dict(document.get("Labels") or {}),
        ports=tuple(listed),
    )


# -- the engine --------------------------------------------------------------------------------------


class EngineUnavailable(Exception):
    """The engine cannot be reached; the message names the endpoint and DOCKER_HOST."""


def connect(base_url: str | None = None) -> docker.DockerClient:
    """A client for `base_url`, else DOCKER_HOST (and DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), else the
    platform's default socket; EngineUnavailable when it does not answer."""
    import docker

    where = endpoint(base_url)
    try:
        _probe_unix_socket(where)
        if base_url is not None:
            client = docker.DockerClient(base_url=base_url, timeout=int(ENGINE_TIMEOUT_S))
        else:
            client = docker.from_env(timeout=int(ENGINE_TIMEOUT_S))
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
    except Exception as error:
        raise EngineUnavailable(_unavailable_message(base_url, error)) from None
    return client


DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"


def _probe_unix_socket(url: str) -> None:
    """Connect to a unix socket endpoint once, closing it properly, before the client does.

    The docker client leaks its socket when the connect fails (a ResourceWarning at garbage
    collection), and a source retries for as long as the agent runs: the common failures (no socket,
    nobody listening) are caught here instead, with a clear reason.
    """
    import socket

    if not url.startswith("unix://"):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(ENGINE_TIMEOUT_S)
        probe.connect(url.removeprefix("unix://"))


def endpoint(base_url: str | None = None) -> str:
    """Where the client connects: `base_url`, DOCKER_HOST, or the default socket."""
    import os

    return base_url or os.environ.get("DOCKER_HOST") or DEFAULT_ENDPOINT


def _unavailable_message(base_url: str | None, error: BaseException) -> str:
    import os

    where = endpoint(base_url)
    if base_url is None and not os.environ.get("DOCKER_HOST"):
        fix = "DOCKER_HOST is not set, so that is the default socket: start Docker, or set DOCKER_HOST"
    else:
        fix = "start the engine, or point DOCKER_HOST at its socket"
    return (
        f"no Docker engine answers at {where} ({_reason(error)}); {fix} "
        "(podman: DOCKER_HOST=unix://$XDG_RUNTIME_DIR/podman/podman.sock after `podman system service`)"
    )


def list_running(client: docker.DockerClient) -> list[dict[str, Any]]:
    """The running containers, as the Engine API lists them."""
    containers: list[dict[str, Any]] = client.api.containers(filters={"status": "running"})
    return containers


def _reason(error: BaseException) -> str:
    """A short reason: requests' connection errors nest several layers of text."""
    text = str(error) or type(error).__name__
    for marker in ("No such file or directory", "Connection refused", "Permission denied", "timed out"):
        if marker in text:
            return marker
    return text if len(text) <= 160 else text[:157] + "..."


class DockerSource:
    """Follows a Docker engine's running containers for the agent (`[discovery] docker = true`)."""

    origin = Origin.DOCKER

    def __init__(self, *, logs: LogSink, base_url: str | None = None) -> None:
        self._logs = logs
        self._base_url = base_url
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client: docker.DockerClient | None = None
        self._events: Any = None  # the open events stream, closed to wake the thread
        self._owners: dict[str, str] = {}  # service name -> the container that has it (it keeps it)

    def describe(self) -> str:
        return f"Docker at {endpoint(self._base_url)}"

    async def run(self, report: Report) -> None:
        loop = asyncio.get_running_loop()
        found: asyncio.Queue[list[DiscoveredService]] = asyncio.Queue()
        self._stop.clear()

        def publish(services: list[DiscoveredService]) -> None:  # called from the thread
            with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens any more
                loop.call_soon_threadsafe(found.put_nowait, services)

        thread = threading.Thread(
            target=self._follow, args=(publish,), name="devmesh-docker-events", daemon=True
        )
        thread.start()
        last: list[DiscoveredService] | None = None
        try:
            while True:
                services = await found.get()
                while not found.empty():  # a burst of events: only the newest set matters
                    services = found.get_nowait()
                if services != last:
                    report(services)
                    last = services
        finally:
            self._stop.set()
            self._interrupt()
            thread.join(THREAD_STOP_TIMEOUT_S)

    def scan(self, containers: Iterable[Mapping[str, Any]]) -> list[DiscoveredService]:
        """The services of `containers`, each name kept by the container that had it at the last scan."""
        scan = scan_containers(containers, self._owners)
        self._owners = {service.name: service.container for service in scan.services}
        return scan.discovered()

    def _interrupt(self) -> None:
        """Wake the thread from a blocking read: close the events stream and the client."""
        with self._lock:
            events, client = self._events, self._client
        _close_quietly(events, client)

    def _follow(self, publish: Callable[[list[DiscoveredService]], None]) -> None:
        """The thread: list, follow events, re-list; on losing the engine report nothing and retry."""
        backoff = RECONNECT_BACKOFF_INITIAL_S
        connected_before = False
        outage_logged = False
        while not self._stop.is_set():
            try:
                client = connect(self._base_url)
                with self._lock:
                    self._client = client
                # Subscribe before listing: a container that starts in between is seen by the next list.
                events = client.api.events(decode=True, filters={"type": "container"})
                with self._lock:
                    self._events = events
                if self._stop.is_set():
                    break
                publish(self.scan(list_running(client)))
                if outage_logged:
                    self._logs.agent(
                        f"Docker at {endpoint(self._base_url)} answers again",
                        component="docker",
                        event="docker_reconnected",
                    )
                    outage_logged = False
                connected_before = True
                backoff = RECONNECT_BACKOFF_INITIAL_S
                for event in events:
                    if self._stop.is_set():
                        break
                    action = str(event.get("Action") or event.get("status") or "")
                    if action in RELIST_ACTIONS:
                        publish(self.scan(list_running(client)))
                problem = "its events stream ended"  # the engine stopped (or we are stopping)
            except EngineUnavailable as error:
                problem = str(error)
            except Exception as error:  # the engine went away mid-call: report nothing, retry later
                problem = _reason(error)
            finally:
                self._forget_client()
            if self._stop.is_set():
                break
            publish([])
            if not outage_logged:
                lost = f"lost Docker at {endpoint(self._base_url)}: " if connected_before else ""
                self._logs.agent(
                    f"{lost}{problem}; retrying every {RECONNECT_BACKOFF_MAX_S:g} s at most",
                    component="docker",
                    level="warning",
                    event="docker_unavailable",
                )
                outage_logged = True
            self._stop.wait(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)

    def _forget_client(self) -> None:
        with self._lock:
            events, client = self._events, self._client
            self._events = self._client = None
        _close_quietly(events, client)


def _close_quietly(*closables: Any) -> None:
    """Close the events stream and the client, whatever state a failed connection left them in."""
    for closable in closables:
        if closable is not None:
            with contextlib.suppress(Exception):
                closable.close()
