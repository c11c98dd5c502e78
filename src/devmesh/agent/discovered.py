"""Discovery while the agent runs: the sources `[discovery]` asks for, and their findings registered.

Each source (Docker, Kubernetes) reports the whole set of services it sees, from any thread, as often as
it likes. The agent keeps the latest set per source and one task reconciles the supervisor with it, so
registrations never race each other and a burst of reports costs one pass. A name the config already
uses, or another source already holds, is not taken: the first owner keeps it and the log says why once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from devmesh.mesh.snapshot import Origin
from devmesh.supervisor.manager import SupervisorError

if TYPE_CHECKING:
    from devmesh.config.schema import DiscoverySection
    from devmesh.discovery.base import DiscoveredService, DiscoverySource
    from devmesh.supervisor.logs import LogSink
    from devmesh.supervisor.manager import Supervisor

# What each source needs installed beyond devmesh itself.
EXTRAS = {Origin.DOCKER: "docker", Origin.KUBERNETES: "kubernetes"}


def wanted_sources(discovery: DiscoverySection) -> dict[Origin, tuple[object, ...]]:
    """The sources a `[discovery]` section asks for, each with the settings that make it what it is
    (a change of settings restarts that source; the others keep running)."""
    wanted: dict[Origin, tuple[object, ...]] = {}
    if discovery.docker:
        wanted[Origin.DOCKER] = ()
    if discovery.kubernetes is not None:
        wanted[Origin.KUBERNETES] = (discovery.kubernetes.context, discovery.kubernetes.namespace)
    return wanted


def make_source(origin: Origin, settings: tuple[object, ...], logs: LogSink) -> DiscoverySource:
    """The source for `origin`; ImportError when its client library (an extra) is not installed."""
    if origin is Origin.DOCKER:
        docker = importlib.import_module("devmesh.discovery.docker")
        source: DiscoverySource = docker.DockerSource(logs=logs)
        return source
    context, namespace = settings
    kubernetes = importlib.import_module("devmesh.discovery.kubernetes")
    source = kubernetes.KubernetesSource(context=context, namespace=namespace, logs=logs)
    return source


SourceFactory = Callable[[Origin, tuple[object, ...], "LogSink"], "DiscoverySource"]


class DiscoveryFeeds:
    """The running discovery sources of one agent and what they registered."""

    def __init__(self, *, supervisor: Supervisor, logs: LogSink, make: SourceFactory = make_source) -> None:
        self._make = make
        self._supervisor = supervisor
        self._logs = logs
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._running: dict[Origin, tuple[tuple[object, ...], asyncio.Task[None]]] = {}
        self._latest: dict[Origin, dict[str, DiscoveredService]] = {}  # what each source says now
        self._registered: dict[Origin, dict[str, DiscoveredService]] = {}  # what the supervisor has
        self._refused: set[tuple[Origin, str]] = set()  # names not taken, logged once each
        self._dirty = asyncio.Event()
        self._reconciler = self._loop.create_task(self._reconcile_forever())

    def configure(self, discovery: DiscoverySection) -> None:
        """Start the sources `discovery` asks for, restart those whose settings changed, stop the rest
        (their services leave with them)."""
        wanted = wanted_sources(discovery)
        for origin in list(self._running):
            settings, task = self._running[origin]
            if wanted.get(origin) != settings:
                task.cancel()
                del self._running[origin]
                self._latest[origin] = {}
                self._dirty.set()
        for origin, settings in wanted.items():
            if origin in self._running:
                continue
            try:
                source = self._make(origin, settings, self._logs)
            except ImportError as error:
                self._logs.agent(
                    f"[discovery] {origin} needs the {EXTRAS[origin]} extra: "
                    f"pip install 'devmesh[{EXTRAS[origin]}]' ({error})",
                    component=str(origin),
                    level="error",
                    event="discovery_unavailable",
                )
                continue
            self._logs.agent(
                f"following {source.describe()}", component=str(origin), event="discovery_started"
            )
            task = self._loop.create_task(self._run_source(origin, source))
            self._running[origin] = (settings, task)

    async def close(self) -> None:
        """Stop every source and unregister what they found (before the supervisor stops)."""
        tasks = [task for _settings, task in self._running.values()]
        self._running.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reconciler
        for origin in list(self._registered):
            self._latest[origin] = {}
        await self._reconcile()

    async def _run_source(self, origin: Origin, source: DiscoverySource) -> None:
        def report(services: Sequence[DiscoveredService]) -> None:
            found = {service.name: service for service in services}
            if threading.get_ident() == self._loop_thread:
                self._take(origin, found)
            else:  # sources may report from the thread their blocking client runs in
                self._loop.call_soon_threadsafe(self._take, origin, found)

        try:
            await source.run(report)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a source must not take the agent down; its services leave
            self._logs.agent(
                f"{source.describe()}: stopped following ({type(error).__name__}: {error})",
                component=str(origin),
                level="error",
                event="discovery_failed",
            )
            self._take(origin, {})

    def _take(self, origin: Origin, found: dict[str, DiscoveredService]) -> None:
        if origin not in self._running:
            return  # a late report from a source being stopped
        self._latest[origin] = found
        self._dirty.set()

    async def _reconcile_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._reconcile()

    async def _reconcile(self) -> None:
        for origin, latest in self._latest.items():
            registered = self._registered.setdefault(origin, {})
            for name in [name for name in registered if registered[name] != latest.get(name)]:
                del registered[name]
                with contextlib.suppress(SupervisorError):
                    await self._supervisor.unregister(name, origin)
                if name not in latest:
                    self._logs.agent(f"{name} left ({origin})", component=str(origin), event="service_left")
            for name, service in latest.items():
                if name in registered:
                    continue
                try:
                    self._supervisor.register(
                        name, port=service.port, version=service.version, health=service.health, origin=origin
                    )
                except SupervisorError as error:
                    if (origin, name) not in self._refused:
                        self._refused.add((origin, name))
                        self._logs.agent(
                            f"{name} ({service.detail or origin}) not added: {error}",
                            component=str(origin),
                            level="warning",
                            event="service_refused",
                        )
                    continue
                self._refused.discard((origin, name))
                registered[name] = service
                self._logs.agent(
                    f"{name} found: {service.detail or origin} on port {service.port}",
                    component=str(origin),
                    event="service_found",
                    service=name,
                    port=service.port,
                )
