"""A Kubernetes cluster's Services as mesh services, each port behind a port-forward on this machine.

`[discovery] kubernetes = { context, namespace }` (written by `devmesh k8s sync`) makes the agent run a
`KubernetesSource`: it lists the namespace's Services, then watches them (re-listing when the watch
expires or its resourceVersion is too old, HTTP 410), and keeps one `PortForwardListener` per Service
port. Each listener's port stays the same while the Service exists, and is asked for again when the
cluster comes back after an outage.

Mapping (pure functions, unit-tested on JSON recorded from a real API server):
- a Service of type ExternalName is skipped (it names a DNS host, there is no pod to forward to); so are
  UDP and SCTP ports (a port-forward carries TCP only). Headless Services are kept: their pods are real.
- the Service's first TCP port is the mesh service `<service>`; each further port is `<service>-<port
  name or number>`; names that are not valid devmesh names are skipped with a warning.
- two ports wanting one mesh name (Service `web`'s port `metrics` and a Service `web-metrics`): the one
  that had it keeps it, else the Service's own name wins; the other is skipped, saying why.
- version: the Service's label `app.kubernetes.io/version`.
- readiness: a port is ready while a connection to it would find a pod (below). It is computed from the
  namespace's Endpoints (and its pods when needed) after each change of the Services and every
  `READY_POLL_S`, and reported with the services: devmesh never probes the listener (it accepts with no
  pod behind it, and each probe would open a port-forward).
- per connection, the pod: a ready address of the Service's Endpoints that names a Pod (round robin),
  with the Endpoints' resolved port; without such an address, a Running, Ready pod matching the
  selector, its port resolved by name from the container ports.

The kubernetes client is synchronous: every call runs in a worker thread, the watch stream too, and
cancellation shuts the stream's socket so that thread returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from devmesh.discovery.base import DiscoveredService, Report
from devmesh.discovery.portforward import Backend, ChooseBackend, PortForwardListener
from devmesh.mesh.snapshot import Origin
from devmesh.supervisor.logs import LogSink

__all__ = [
    "ClusterClient",
    "ClusterError",
    "ClusterService",
    "KubernetesSource",
    "ServicePort",
    "assign_mesh_names",
    "choose_backend",
    "kubeconfig_location",
    "not_ready_reason",
    "service_from_api",
    "short_error",
    "skip_reason",
    "valid_mesh_name",
]

VERSION_LABEL = "app.kubernetes.io/version"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 15.0
WATCH_TIMEOUT_S = 300.0  # the server ends a watch after this; it is resumed from the last resourceVersion
TUNNEL_RELEASE_WAIT_S = 5.0  # the client's thread sends a websocket close and waits up to 3 s for the answer
THREADS = 8  # the watch, listing, and port-forwards being opened (each takes a thread for a moment)
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
READY_POLL_S = 3.0  # how often the readiness of the Services' ports is checked (two API calls at most)
DEFAULT_KUBECONFIG = "~/.kube/config"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # as devmesh.config.schema
_HTTP_GONE = 410
_T = TypeVar("_T")


# -- mapping (pure) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePort:
    """One TCP port of a Service, and the mesh service name it becomes."""

    mesh_name: str
    name: str  # the port's name in the Service ("" for a Service's single unnamed port)
    port: int
    target: int | str  # targetPort: a number, or the name of a container port


@dataclass(frozen=True)
class ClusterService:
    name: str
    namespace: str
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None
    headless: bool = False

    def describe_target(self) -> str:
        if self.selector:
            return "pods " + ",".join(f"{key}={value}" for key, value in sorted(self.selector.items()))
        return "Endpoints (no selector)"


def service_from_api(item: Mapping[str, Any]) -> ClusterService | None:
    """A Service object as the API returns it (JSON), or None when it cannot be forwarded."""
    metadata = item.get("metadata") or {}
    spec = item.get("spec") or {}
    name = str(metadata.get("name", ""))
    if spec.get("type") == "ExternalName" or not name:
        return None
    ports: list[ServicePort] = []
    for entry in spec.get("ports") or []:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        port = int(entry["port"])
        port_name = str(entry.get("name") or "")
        target = entry.get("targetPort", port)
        mesh_name = name if not ports else f"{name}-{port_name or port}"
        ports.append(ServicePort(mesh_name=mesh_name, name=port_name, port=port, target=target))
    if not ports:
        return None
    labels = metadata.get("labels") or {}
    return ClusterService(
        name=name,
        namespace=str(metadata.get("namespace", "")),
        ports=tuple(ports),
        selector=dict(spec.get("selector") or {}),
        version=labels.get(VERSION_LABEL),
        headless=spec.get("clusterIP") == "None",
    )


def skip_reason(item: Mapping[str, Any]) -> str:
    """Why `service_from_api` gave None for this Service, for people."""
    if (item.get("spec") or {}).get("type") == "ExternalName":
        return "ExternalName (a DNS name, no pods to forward to)"
    return "no TCP port (port-forwards carry TCP only)"


def valid_mesh_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


PortKey = tuple[str, int]  # (Service name, port number): one port-forward listener


def assign_mesh_names(
    services: Iterable[ClusterService], owners: Mapping[str, PortKey] | None = None
) -> tuple[dict[PortKey, tuple[ClusterService, ServicePort]], list[tuple[ClusterService, ServicePort, str]]]:
    """Which Service port becomes each mesh name, and the ports left out with the reason.

    A name that is not a valid devmesh name is left out. Of two ports wanting one name (`web`'s port
    `metrics` and a Service `web-metrics`), the one that had it (`owners`: mesh name -> port, as last
    assigned) keeps it; else a Service's own name (its first port) wins over a name made from another
    Service's port name; else the first by Service name.
    """
    owners = owners or {}
    candidates: list[tuple[ClusterService, ServicePort]] = []
    skipped: list[tuple[ClusterService, ServicePort, str]] = []
    for service in services:
        for port in service.ports:
            if valid_mesh_name(port.mesh_name):
                candidates.append((service, port))
            else:
                skipped.append((service, port, f"{port.mesh_name!r} is not a valid devmesh name"))

    def rank(candidate: tuple[ClusterService, ServicePort]) -> tuple[bool, bool, str, int]:
        service, port = candidate
        had_it = owners.get(port.mesh_name) == (service.name, port.port)
        return (not had_it, port.mesh_name != service.name, service.name, port.port)

    wanted: dict[PortKey, tuple[ClusterService, ServicePort]] = {}
    holders: dict[str, tuple[ClusterService, ServicePort]] = {}
    for service, port in sorted(candidates, key=rank):
        holder = holders.get(port.mesh_name)
        if holder is not None:
            skipped.append(
                (
                    service,
                    port,
                    f"{port.mesh_name!r} is already the mesh name of {holder[0].namespace}/{holder[0].name} "
                    f"port {holder[1].port}; rename one of the ports",
                )
            )
            continue
        holders[port.mesh_name] = (service, port)
        wanted[(service.name, port.port)] = (service, port)
    return wanted, skipped


def not_ready_reason(
    service: ClusterService,
    port: ServicePort,
    endpoints: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
) -> str | None:
    """Why a connection to `port` would find no pod now (None: it would find one, as `choose_backend`
    picks it). `pods` may be all the namespace's: those the selector matches count."""
    matching = [pod for pod in pods if _selected(pod, service.selector)]
    if choose_backend(port, endpoints, matching) is not None:
        return None
    return f"no ready pod behind {service.namespace}/{service.name} ({service.describe_target()})"


def _selected(pod: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def choose_backend(
    port: ServicePort,
    endpoints: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    turn: int = 0,
) -> Backend | None:
    """The pod (and its port) for one connection to `port`: the `turn`-th ready candidate, round robin.

    `endpoints` is the Service's Endpoints object (None when there is none); `pods` the pods matching its
    selector, used only when the Endpoints name no ready pod.
    """
    candidates: list[Backend] = []
    for subset in (endpoints or {}).get("subsets") or []:
        subset_ports = subset.get("ports") or []
        # Endpoints name their ports like the Service's; a single-port Service's may be unnamed.
        matching = [p for p in subset_ports if (p.get("name") or "") == port.name]
        if not matching and len(subset_ports) == 1:
            matching = subset_ports
        if not matching or matching[0].get("protocol", "TCP") != "TCP":
            continue
        for address in subset.get("addresses") or []:
            reference = address.get("targetRef") or {}
            if reference.get("kind") == "Pod" and reference.get("name"):
                candidates.append(Backend(pod=str(reference["name"]), port=int(matching[0]["port"])))
    if not candidates:
        for pod in pods:
            target = _pod_port(pod, port.target)
            if target is not None and _pod_ready(pod):
                candidates.append(Backend(pod=str(pod["metadata"]["name"]), port=target))
    if not candidates:
        return None
    candidates.sort(key=lambda backend: backend.pod)
    return candidates[turn % len(candidates)]


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )


def _pod_port(pod: Mapping[str, Any], target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for container_port in container.get("ports") or []:
            if container_port.get("name") == target and container_port.get("protocol", "TCP") == "TCP":
                return int(container_port["containerPort"])
    return None


# -- the cluster ---------------------------------------------------------------------------------------


class ClusterError(Exception):
    """The cluster cannot be used: unknown context, no kubeconfig, unreachable, refused. The message
    names the context and the kubeconfig."""


def kubeconfig_location(explicit: str | None = None) -> str:
    """The kubeconfig the client reads: `explicit`, else $KUBECONFIG (a list, like kubectl), else
    ~/.kube/config."""
    return explicit or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG


class ClusterClient:
    """The few calls devmesh makes to one namespace of one cluster, on JSON (no client models: the
    client's models mis-parse some answers of older servers, and plain JSON is what the tests record)."""

    def __init__(self, *, context: str | None, namespace: str | None, kubeconfig: str | None = None) -> None:
        """Reads the kubeconfig; `context` None is its current-context, `namespace` None the context's
        namespace (else "default"), as kubectl does. Raises ClusterError."""
        import kubernetes.client
        import kubernetes.config

        # The client is untyped: everything from it is Any here, checked by the tests against a real server.
        client: Any = kubernetes.client
        config: Any = kubernetes.config
        self.kubeconfig = kubeconfig_location(kubeconfig)
        try:
            contexts, current = config.list_kube_config_contexts(config_file=self.kubeconfig)
        except (config.ConfigException, OSError, ValueError) as error:
            raise ClusterError(f"cannot read kubeconfig {self.kubeconfig}: {error}") from None
        known = {str(entry["name"]): entry.get("context") or {} for entry in contexts or []}
        if context is None:
            if not current:
                raise ClusterError(f"kubeconfig {self.kubeconfig} has no current-context; pass --context")
            context = str(current["name"])
        if context not in known:
            raise ClusterError(
                f"context {context!r} is not in kubeconfig {self.kubeconfig} "
                f"(it has: {', '.join(known) or 'none'}); see `kubectl config get-contexts`"
            )
        self.context: str = context
        self.namespace: str = namespace or str(known[context].get("namespace") or "default")
        configuration = client.Configuration()
        try:
            config.load_kube_config(
                config_file=self.kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,  # never write to the user's kubeconfig
            )
        except (config.ConfigException, OSError, ValueError) as error:
            raise ClusterError(f"context {context!r} of kubeconfig {self.kubeconfig}: {error}") from None
        configuration.retries = 0  # a dead cluster should fail now; the callers retry with backoff
        self.server = str(configuration.host)
        self._client_module = client
        self._configuration = configuration
        self._api_client: Any = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api_client)

    def where(self) -> str:
        return f"context {self.context!r} ({self.server}, kubeconfig {self.kubeconfig})"

    def close(self) -> None:
        self._api_client.close()

    def list_services(self) -> tuple[list[dict[str, Any]], str]:
        """The namespace's Services (JSON) and the list's resourceVersion, to watch from."""
        document = self._json(self._core.list_namespaced_service, self.namespace)
        return list(document.get("items") or []), str(document["metadata"].get("resourceVersion", ""))

    def list_endpoints(self) -> dict[str, dict[str, Any]]:
        document = self._json(self._core.list_namespaced_endpoints, self.namespace)
        return {item["metadata"]["name"]: item for item in document.get("items") or []}

    def endpoints(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._json(self._core.read_namespaced_endpoints, name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list_pods(self) -> list[dict[str, Any]]:
        """All the namespace's pods (JSON)."""
        document = self._json(self._core.list_namespaced_pod, self.namespace)
        return list(document.get("items") or [])

    def pods(self, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        if not selector:
            return []
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        document = self._json(self._core.list_namespaced_pod, self.namespace, label_selector=label_selector)
        return list(document.get("items") or [])

    def watch_services(self, resource_version: str, *, timeout_s: float) -> ServiceWatch:
        response = self._core.list_namespaced_service(
            self.namespace,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=int(timeout_s),
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT_S, timeout_s + REQUEST_TIMEOUT_S),
        )
        return ServiceWatch(response)

    def open_tunnel(self, backend: Backend) -> ClientTunnel:
        """A socket connected to `backend` through the API server's pods/portforward (blocking)."""
        from kubernetes.stream import portforward

        # `portforward` swaps the ApiClient's call_api while it runs: any other call on that ApiClient
        # from another thread meanwhile (the watch, another tunnel) would go astray. So each tunnel gets
        # an ApiClient of its own (the websocket does not use its connection pool).
        api_client = self._client_module.ApiClient(self._configuration)
        try:
            forward = portforward(
                self._client_module.CoreV1Api(api_client).connect_get_namespaced_pod_portforward,
                backend.pod,
                self.namespace,
                ports=str(backend.port),
            )
        finally:
            api_client.close()
        return ClientTunnel(forward, backend.port)

    def _json(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = call(
            *args, _preload_content=False, _request_timeout=(CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S), **kwargs
        )
        try:
            document: dict[str, Any] = json.loads(response.data)
        finally:
            response.release_conn()
        return document


class ClientTunnel:
    """The kubernetes client's PortForward for one port, as a `Tunnel`.

    The client copies bytes between a socket pair and the websocket in a thread of its own. When the
    pod's side ends first, that thread returns without closing the websocket (client 37): `release` waits
    for the thread, then closes the websocket, whichever side ended.
    """

    def __init__(self, forward: Any, port: int) -> None:
        self._forward = forward
        # The client hands out a wrapper around one end of the socket pair; asyncio wants the socket.
        wrapped = forward.socket(port)
        self.socket: socket.socket = getattr(wrapped, "_socket", wrapped)
        self._thread = _thread_running(forward._proxy)

    def release(self) -> None:
        if self._thread is not None:
            self._thread.join(TUNNEL_RELEASE_WAIT_S)
        self._forward.websocket.shutdown()


def _thread_running(target: Any) -> threading.Thread | None:
    """The live thread whose target is `target` (the client keeps no handle on the thread it starts)."""
    for thread in threading.enumerate():
        if getattr(thread, "_target", None) == target:
            return thread
    return None


class ServiceWatch:
    """One watch request's events, read in a worker thread; `close()` from any thread ends it at once."""

    def __init__(self, response: Any) -> None:
        import kubernetes.watch.watch

        watch: Any = kubernetes.watch.watch  # untyped
        self._response = response
        self._closed = False
        self._lines: Iterator[str] = watch.iter_resp_lines(response)

    def next_event(self) -> dict[str, Any] | None:
        """The next event, or None when the server ended the watch or `close()` was called (blocking)."""
        try:
            for line in self._lines:
                if line:
                    event: dict[str, Any] = json.loads(line)
                    return event
        except Exception:
            if self._closed:
                return None  # closed from the other thread: the stream's error is expected
            raise
        return None

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):  # whatever state the stream is in, it is being dropped
            self._response.shutdown()
        with contextlib.suppress(Exception):
            self._response.release_conn()


class _WatchExpired(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


# -- the source ----------------------------------------------------------------------------------------


class KubernetesSource:
    """Follows one namespace of one cluster; see the module docstring."""

    origin = Origin.KUBERNETES

    def __init__(
        self,
        *,
        context: str | None,
        namespace: str = "default",
        kubeconfig: str | None = None,
        logs: LogSink,
        watch_timeout_s: float = WATCH_TIMEOUT_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        ready_poll_s: float = READY_POLL_S,
    ) -> None:
        self.context = context
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self._logs = logs
        self._watch_timeout_s = watch_timeout_s
        self._backoff_max_s = backoff_max_s
        self._ready_poll_s = ready_poll_s
        self._items: dict[str, Mapping[str, Any]] = {}  # the Services as the API last described them
        self._services: dict[str, ClusterService] = {}
        self._wanted: dict[PortKey, tuple[ClusterService, ServicePort]] = {}  # the ports with a mesh name
        self._owners: dict[str, PortKey] = {}  # mesh name -> the port that has it (it keeps it)
        self._not_ready: dict[PortKey, str | None] = {}  # why each port is not ready (None: it is)
        self._listeners: dict[PortKey, PortForwardListener] = {}
        self._last_ports: dict[PortKey, int] = {}  # asked for again after an outage
        self._reported: list[DiscoveredService] | None = None
        self._skips_logged: set[tuple[str, int, str]] = set()
        self._readiness_failing = False
        self._failures = 0  # in a row, for the backoff
        self._turns = itertools.count()
        self._executor: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        context = self.context or "(current context)"
        return f"Kubernetes {context} namespace {self.namespace} (kubeconfig {kubeconfig_location(self.kubeconfig)})"

    async def run(self, report: Report) -> None:
        # Threads of its own: the watch holds one for minutes, and a slow cluster must not use up the
        # loop's default executor, which the rest of the agent shares.
        self._executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="devmesh-kubernetes")
        try:
            while True:
                cluster: ClusterClient | None = None
                try:
                    cluster = await self._in_thread(
                        lambda: ClusterClient(
                            context=self.context, namespace=self.namespace, kubeconfig=self.kubeconfig
                        ),
                        release=ClusterClient.close,
                    )
                    await self._follow(cluster, report)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the cluster fails in many types; every one means "retry later"
                    self._failures += 1
                    delay = min(self._backoff_max_s, BACKOFF_INITIAL_S * 2 ** min(self._failures - 1, 16))
                    self._logs.agent(
                        f"kubernetes: {self.describe()}: {short_error(error)}; retrying in {delay:.1f}s",
                        component="kubernetes",
                        level="warning",
                        event="k8s-unavailable",
                        error=short_error(error),
                        retry_in_s=delay,
                    )
                    await self._apply({}, cluster, report)
                    await asyncio.sleep(delay)
                finally:
                    if cluster is not None:
                        cluster.close()
        finally:
            await self._close_listeners()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _follow(self, cluster: ClusterClient, report: Report) -> None:
        """List, then watch, until cancelled or the cluster fails; after a 410 list again. Meanwhile the
        readiness of the ports is checked every `ready_poll_s`."""
        poll = asyncio.get_running_loop().create_task(
            self._poll_readiness(cluster, report), name="devmesh-kubernetes-readiness"
        )
        try:
            while True:
                items, version = await self._in_thread(cluster.list_services)
                self._failures = 0
                await self._apply({item["metadata"]["name"]: item for item in items}, cluster, report)
                self._logs.agent(
                    f"kubernetes: following {len(self._services)} Service(s) of {cluster.where()}, "
                    f"namespace {self.namespace}",
                    component="kubernetes",
                    event="k8s-listed",
                    services=sorted(self._services),
                )
                try:
                    await self._watch(cluster, version, report)
                except _WatchExpired:
                    continue
        finally:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll

    async def _watch(self, cluster: ClusterClient, version: str, report: Report) -> None:
        while True:
            watch = await self._in_thread(
                functools.partial(cluster.watch_services, version, timeout_s=self._watch_timeout_s),
                release=ServiceWatch.close,
            )
            try:
                while True:
                    event = await self._in_thread(watch.next_event)
                    if event is None:
                        break  # the server's timeout: resume from the last version seen
                    kind, item = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if item.get("code") == _HTTP_GONE:
                            raise _WatchExpired
                        raise RuntimeError(f"watch error: {item.get('message', item)}")
                    version = str((item.get("metadata") or {}).get("resourceVersion", version))
                    if kind == "BOOKMARK":
                        continue
                    items = dict(self._items)
                    if kind == "DELETED":
                        items.pop(item["metadata"]["name"], None)
                    else:
                        items[item["metadata"]["name"]] = item
                    await self._apply(items, cluster, report)
            finally:
                watch.close()

    async def _apply(
        self, items: Mapping[str, Mapping[str, Any]], cluster: ClusterClient | None, report: Report
    ) -> None:
        """Make the listeners match `items` (the namespace's Services, by name) and report the set."""
        self._items = dict(items)
        services: dict[str, ClusterService] = {}
        for name, item in items.items():
            service = service_from_api(item)
            if service is not None:
                services[name] = service
        wanted, skipped = assign_mesh_names(services.values(), self._owners)
        for service, port, reason in skipped:
            if (service.name, port.port, reason) not in self._skips_logged:
                self._skips_logged.add((service.name, port.port, reason))
                self._logs.agent(
                    f"kubernetes: {service.namespace}/{service.name} port {port.port}: {reason}; skipped",
                    component="kubernetes",
                    level="warning",
                    event="k8s-skipped-port",
                )
        for key in [key for key in self._listeners if key not in wanted]:
            await self._listeners.pop(key).close()
        if cluster is not None:
            for key, (service, port) in wanted.items():
                if key not in self._listeners:
                    listener = PortForwardListener(
                        label=f"{self.namespace}/{service.name} port {port.port}",
                        choose=self._chooser(cluster, service.name, port.port),
                        open_tunnel=cluster.open_tunnel,
                        executor=self._executor,
                        logs=self._logs,
                    )
                    self._last_ports[key] = await listener.start(self._last_ports.get(key))
                    self._listeners[key] = listener
        self._services = services
        self._wanted = wanted
        self._owners = {port.mesh_name: key for key, (_service, port) in wanted.items()}
        if cluster is not None and wanted:
            await self._check_readiness(cluster)
        self._report(report)

    async def _poll_readiness(self, cluster: ClusterClient, report: Report) -> None:
        while True:
            await asyncio.sleep(self._ready_poll_s)
            if self._wanted:
                await self._check_readiness(cluster)
                self._report(report)

    async def _check_readiness(self, cluster: ClusterClient) -> None:
        """Whether a connection to each port would find a pod now: the namespace's Endpoints, and its pods
        when a Service with a selector has no ready address. Never raises for the cluster: a port whose
        readiness cannot be told keeps what was last known (or is not ready, saying why)."""
        try:
            endpoints = await self._in_thread(cluster.list_endpoints)
            pods: list[dict[str, Any]] = []
            if any(
                service.selector and choose_backend(port, endpoints.get(service.name), []) is None
                for service, port in self._wanted.values()
            ):
                pods = await self._in_thread(cluster.list_pods)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the watch finds out about an outage; readiness just waits
            if not self._readiness_failing:
                self._logs.agent(
                    f"kubernetes: cannot tell which pods are ready: {short_error(error)}",
                    component="kubernetes",
                    level="warning",
                    event="k8s-readiness-failed",
                )
            self._readiness_failing = True
            reason = f"cannot tell whether a pod is ready: {short_error(error)}"
            for key in self._wanted:
                self._not_ready.setdefault(key, reason)
            return
        self._readiness_failing = False
        # The ports as they are now: the Services may have changed while the cluster answered.
        self._not_ready = {
            key: not_ready_reason(service, port, endpoints.get(service.name), pods)
            for key, (service, port) in self._wanted.items()
        }

    def _report(self, report: Report) -> None:
        found: list[DiscoveredService] = []
        for key, (service, port) in sorted(self._wanted.items()):
            listener = self._listeners.get(key)
            if listener is None:
                continue
            reason = self._not_ready.get(key, "readiness not checked yet")
            found.append(
                DiscoveredService(
                    name=port.mesh_name,
                    port=listener.port,
                    version=service.version,
                    detail=f"Service {service.namespace}/{service.name} port {port.port}",
                    ready=reason is None,
                    ready_detail=reason or "",
                )
            )
        if found != self._reported:
            self._reported = found
            report(found)

    def _chooser(self, cluster: ClusterClient, service_name: str, port_number: int) -> ChooseBackend:
        async def choose() -> Backend | None:
            # The Service as it is now: its target port or selector may have changed since the listener
            # was made.
            service = self._services.get(service_name)
            port = next((p for p in service.ports if p.port == port_number), None) if service else None
            if service is None or port is None:
                return None
            endpoints = await self._in_thread(functools.partial(cluster.endpoints, service_name))
            pods: list[dict[str, Any]] = []
            if choose_backend(port, endpoints, []) is None:
                pods = await self._in_thread(functools.partial(cluster.pods, service.selector))
            return choose_backend(port, endpoints, pods, next(self._turns))

        return choose

    async def _in_thread(self, call: Callable[[], _T], *, release: Callable[[_T], None] | None = None) -> _T:
        """`call()` in one of the source's threads; when cancelled meanwhile, what it returns later is
        given to `release`."""
        assert self._executor is not None
        running = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            if release is not None:
                running.add_done_callback(
                    lambda done: None if done.cancelled() or done.exception() else release(done.result())
                )
            else:
                running.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise

    async def _close_listeners(self) -> None:
        listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            await listener.close()


def short_error(error: BaseException) -> str:
    """An error in one line: the client's exceptions carry whole HTTP responses."""
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return first if len(first) <= 300 else first[:297] + "..."
