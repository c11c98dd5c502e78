"""Discovery while the agent runs: the sources `[discovery]` asks for, and their findings registered.

Each source (Docker, Kubernetes) reports the whole set of services it sees, from any thread, as often as
it likes. The agent keeps the latest set per source and one task reconciles the supervisor with it, so
registrations never race each other and a burst of reports costs one pass. A name the config already
uses, or another source already holds, is not taken: the first owner keeps it and the log says why once
(and it is taken when the owner lets it go: a reload that drops the name from the config makes a pass).
A service whose source reports its readiness (a Kubernetes Service) is never probed: a change of readiness
alone is passed on to its registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
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
RETRY_S = 1.0  # after a pass that failed, the next one


def wanted_sources(
    discovery: DiscoverySection, project_dir: Path | None = None
) -> dict[Origin, tuple[object, ...]]:
    """The sources a `[discovery]` section asks for, each with the settings that make it what it is
    (a change of settings restarts that source; the others keep running). Paths of the settings are
    resolved against `project_dir` (default: the current directory)."""
    wanted: dict[Origin, tuple[object, ...]] = {}
    if discovery.docker:
        wanted[Origin.DOCKER] = ()
    kubernetes = discovery.kubernetes
    if kubernetes is not None:
        kubeconfig = kubernetes.kubeconfig_path(project_dir if project_dir is not None else Path.cwd())
        wanted[Origin.KUBERNETES] = (kubernetes.context, kubernetes.namespace, kubeconfig)
    return wanted


def make_source(origin: Origin, settings: tuple[object, ...], logs: LogSink) -> DiscoverySource:
    """The source for `origin`; ImportError when its client library (an extra) is not installed."""
    if origin is Origin.DOCKER:
        docker = importlib.import_module("devmesh.discovery.docker")
        source: DiscoverySource = docker.DockerSource(logs=logs)
        return source
    context, namespace, kubeconfig = settings
    kubernetes = importlib.import_module("devmesh.discovery.kubernetes")
    source = kubernetes.KubernetesSource(
        context=context, namespace=namespace, kubeconfig=kubeconfig, logs=logs
    )
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
        self._retry: asyncio.TimerHandle | None = None
        self._reconciler = self._loop.create_task(self._reconcile_forever())

    def configure(self, discovery: DiscoverySection) -> None:
        """Start the sources `discovery` asks for, restart those whose settings changed, stop the rest
        (their services leave with them). Called on each reload: names the config gave up may be free
        now, so a pass follows in any case."""
        wanted = wanted_sources(discovery, self._supervisor.project_dir)
        for origin in list(self._running):
            settings, task = self._running[origin]
            if wanted.get(origin) != settings:
                task.cancel()
                del self._running[origin]
                self._latest[origin] = {}
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
        self._dirty.set()

    async def close(self) -> None:
        """Stop every source and unregister what they found (before the supervisor stops). Never
        raises: the agent's shutdown goes on whatever happens here."""
        try:
            tasks = [task for _settings, task in self._running.values()]
            self._running.clear()
            for task in tasks:
                task.cancel()
            self._reconciler.cancel()
            await asyncio.gather(*tasks, self._reconciler, return_exceptions=True)
            if self._retry is not None:
                self._retry.cancel()
            for origin in list(self._latest):
                self._latest[origin] = {}
            await self._reconcile()
            # And whatever a pass cut short by the cancellation left registered.
            for name, runner in list(self._supervisor.runners.items()):
                if runner.origin in self._latest:
                    with contextlib.suppress(SupervisorError):
                        await self._supervisor.unregister(name, runner.origin)
        except Exception as error:  # logged; the supervisor stops what is left
            self._failed("stopping discovery", error)

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
            try:
                await self._reconcile()
            except Exception as error:  # the next pass tries again; the loop must live
                self._failed("a discovery pass", error)

    def _failed(self, what: str, error: Exception) -> None:
        """Log an unexpected error of a pass, and make another pass a little later."""
        self._logs.agent(
            f"{what} failed ({type(error).__name__}: {error}); trying again",
            component="discovery",
            level="error",
            event="discovery_error",
        )
        if self._retry is None or self._retry.cancelled() or self._retry.when() <= self._loop.time():
            self._retry = self._loop.call_later(RETRY_S, self._dirty.set)

    async def _reconcile(self) -> None:
        # A copy: the sets and origins may change while a registration is awaited (the next pass sees it).
        for origin, latest in list(self._latest.items()):
            registered = self._registered.setdefault(origin, {})
            # Ours only while the supervisor holds it as ours: a reload that adds the name to the config
            # replaces the registration; once the config drops it again it is registered anew.
            for name in list(registered):
                runner = self._supervisor.runners.get(name)
                if runner is None or runner.origin != origin:
                    del registered[name]
            for name in [
                name for name in registered if not registered[name].same_registration(latest.get(name))
            ]:
                del registered[name]
                try:
                    await self._supervisor.unregister(name, origin)
                    self._dirty.set()  # another source refused this name may take it now: one more pass
                except SupervisorError:
                    pass
                except Exception as error:  # one service must not stop the others
                    self._failed(f"unregistering {name}", error)
                if name not in latest:
                    self._logs.agent(f"{name} left ({origin})", component=str(origin), event="service_left")
            for name, service in latest.items():
                try:
                    self._follow(origin, registered, name, service)
                except Exception as error:  # one service must not stop the others
                    self._failed(f"registering {name}", error)

    def _follow(
        self, origin: Origin, registered: dict[str, DiscoveredService], name: str, service: DiscoveredService
    ) -> None:
        """Register `service`, or pass on a change of its readiness alone."""
        held = registered.get(name)
        if held is not None:
            if service.ready is not None and (held.ready, held.ready_detail) != (
                service.ready,
                service.ready_detail,
            ):
                self._supervisor.report_health(name, service.ready, service.ready_detail or None, origin)
                registered[name] = service
            return
        try:
            self._supervisor.register(
                name,
                port=service.port,
                version=service.version,
                health=service.health,
                origin=origin,
                ready=service.ready,
                ready_detail=service.ready_detail or None,
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
            return
        self._refused.discard((origin, name))
        registered[name] = service
        not_ready = (
            f"; not ready: {service.ready_detail}" if service.ready is False and service.ready_detail else ""
        )
        self._logs.agent(
            f"{name} found: {service.detail or origin} on port {service.port}{not_ready}",
            component=str(origin),
            event="service_found",
            service=name,
            port=service.port,
        )
