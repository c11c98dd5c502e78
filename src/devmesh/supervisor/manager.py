"""The supervisor: every service's runner, started in dependency order, stopped in reverse, and
reconciled with a new config on hot reload."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmesh.config.schema import HealthSection, MeshConfig, ServiceSection
from devmesh.mesh.snapshot import EXTERNAL_ORIGINS, Health, Origin, RunState, ServiceView
from devmesh.supervisor.elsewhere import Source, decide, served_elsewhere
from devmesh.supervisor.logs import LogSink
from devmesh.supervisor.ports import PortAllocator
from devmesh.supervisor.runner import ReportedRunner, ServiceRunner
from devmesh.supervisor.watch import start_watch


class SupervisorError(Exception):
    """A request the supervisor cannot carry out (unknown service, name taken...), with a status hint."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ReloadSummary:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (("added", self.added), ("removed", self.removed), ("changed", self.changed))
            if names
        ]
        return "; ".join(parts) or "no service changed"


def remote_only(spec: ServiceSection) -> bool:
    """A service declared with only a `remote` (no command, no port, no health command to run here)."""
    return spec.remote is not None and served_elsewhere(spec)


class RemoteRunner(ServiceRunner):
    """A service served elsewhere (`supervisor.elsewhere`): nothing runs here, a peer or its remote
    serves it.

    It is running and healthy while the agent finds a healthy peer endpoint that `requires` accepts
    (`follow_peers`) or its remote usable (`follow_remote`); "starting" while a peer or the remote has
    not been heard from yet; stopped and unhealthy, with the reasons, once none of them serves it. So
    `devmesh up`, `devmesh wait` and `depends_on` wait for it as they wait for a local service, instead
    of forever. Its origin is `remote` when it has a remote, else `peer`.
    """

    def __init__(self, name: str, spec: ServiceSection, **kwargs: Any) -> None:
        super().__init__(name, spec, **kwargs)
        remote = spec.remote
        self._remote: Source | None = (
            Source(None, f"waiting for the first answer of {remote}") if remote is not None else None
        )
        # Until the agent says whether and what its peers serve: not known yet, unless it has a remote
        # (then it follows its remote alone until peers are known to be followed).
        self._peers: Source | None = None if remote is not None else Source(None, "waiting for peers")
        self._following = False

    def follow_remote(self, usable: bool | None, detail: str | None) -> None:
        """The agent's verdict on the remote after a probe (`routing.remote.remote_health`)."""
        if self.spec.remote is None:
            return
        if usable is None:
            detail = f"waiting for the first answer of {self.spec.remote}"
        elif not usable:
            detail = detail or "the remote is not answering"
        self._remote = Source(usable, None if usable else detail)
        self._apply(force=True)

    def follow_peers(self, source: Source | None) -> None:
        """What the agent's peers say of this service (`agent.views.peer_source`); None: no peers are
        followed at all. Only a change is published."""
        if source == self._peers:
            return
        self._peers = source
        self._apply()

    async def _watch_external(self) -> None:
        self._following = True
        try:
            self._apply(force=True)
            await self._stop_event.wait()
        finally:
            self._following = False
        self._set_state(RunState.STOPPED)

    def _apply(self, *, force: bool = False) -> None:
        if not self._following:
            return
        state, health, detail = decide(self._peers, self._remote)
        if not force and (state, health, detail) == (self.state, self.health, self.detail):
            return
        if health is Health.HEALTHY:
            self.detail = None
            self._set_health(Health.HEALTHY)
            self._set_state(RunState.RUNNING)
            return
        self.detail = detail
        self._set_state(state)
        self._set_health(health)
        self._notify()


class Supervisor:
    """Owns the runners; the agent calls it, the admin API calls it through the agent."""

    def __init__(
        self,
        config: MeshConfig,
        *,
        project_dir: Path,
        owner: str,
        logs: LogSink,
        on_change: Callable[[], None],
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self._project_dir = project_dir
        self._owner = owner
        self._logs = logs
        self._on_change = on_change
        self._base_env = base_env
        self._ports = PortAllocator({s.port for s in config.services.values() if s.port is not None})
        self._config = config
        self.runners: dict[str, ServiceRunner] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._selected: set[str] | None = None  # None: every service of the config is wanted
        for name, spec in config.services.items():
            self.runners[name] = self._make_runner(name, spec)

    # -- queries -------------------------------------------------------------------------------------

    @property
    def project_dir(self) -> Path:
        """The project's directory: what relative paths of the config are relative to."""
        return self._project_dir

    def views(self, domain: str) -> dict[str, ServiceView]:
        return {name: runner.view(domain) for name, runner in self.runners.items()}

    def closure(self, names: Iterable[str]) -> list[str]:
        """`names` with everything they depend on, dependencies first."""
        ordered: list[str] = []

        def visit(name: str) -> None:
            if name in ordered:
                return
            runner = self._runner(name)
            for dependency in runner.spec.depends_on:
                visit(dependency)
            ordered.append(name)

        for name in names:
            visit(name)
        return ordered

    # -- lifecycle -----------------------------------------------------------------------------------

    def up(self, names: Iterable[str] | None = None) -> list[str]:
        """Start `names` (default: all) and their dependencies; returns what was started, in order.

        Each runner starts its process once its dependencies are healthy; this call does not wait.
        """
        wanted = list(names) if names is not None else list(self.runners)
        if names is None:
            self._selected = None
        elif self._selected is not None:
            self._selected.update(wanted)
        else:
            self._selected = set(wanted)
        order = self.closure(wanted)
        if self._selected is not None:
            self._selected.update(order)
        for name in order:
            self._start(name)
        return order

    async def down(self, names: Iterable[str] | None = None) -> None:
        """Stop `names` (default: all), each after the services among them that depend on it."""
        targets = set(names) if names is not None else set(self.runners)
        stopped = {name: asyncio.Event() for name in targets}

        async def stop_one(name: str) -> None:
            dependents = [other for other in targets if name in self.runners[other].spec.depends_on]
            for dependent in dependents:
                await stopped[dependent].wait()
            try:
                await self._stop_watch(name)
                await self.runners[name].stop()
            finally:
                stopped[name].set()

        await asyncio.gather(*(stop_one(name) for name in targets if name in self.runners))

    async def start_service(self, name: str) -> list[str]:
        """`devmesh run NAME`: start it (and what it depends on)."""
        self._runner(name)
        return self.up([name])

    async def stop_service(self, name: str) -> None:
        runner = self._runner(name)
        if runner.origin in EXTERNAL_ORIGINS:
            raise SupervisorError(_not_ours(name, runner.origin), status=409)
        if self._selected is not None:
            self._selected.discard(name)
        await self._stop_watch(name)
        await runner.stop()

    async def restart_service(self, name: str) -> None:
        runner = self._runner(name)
        if not runner.spawns:
            raise SupervisorError(f"{name} is not started by devmesh (it has no command)", status=409)
        if runner.active:
            runner.request_restart("restart requested")
        else:
            self.up([name])

    def follow_remote(self, name: str, usable: bool | None, detail: str | None) -> None:
        """What the agent's probes found of `name`'s remote: a service served elsewhere follows it."""
        runner = self.runners.get(name)
        if isinstance(runner, RemoteRunner):
            runner.follow_remote(usable, detail)

    def elsewhere(self) -> list[str]:
        """The services with nothing to run or check here: a peer or their remote serves them."""
        return [name for name, runner in self.runners.items() if isinstance(runner, RemoteRunner)]

    def follow_peers(self, name: str, source: Source | None) -> None:
        """What the agent's peers say of `name` (None: no peers are followed): a service served
        elsewhere follows it."""
        runner = self.runners.get(name)
        if isinstance(runner, RemoteRunner):
            runner.follow_peers(source)

    # -- registrations -------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        port: int,
        version: str | None,
        health: HealthSection | None,
        origin: Origin = Origin.REGISTERED,
        ready: bool | None = None,
        ready_detail: str | None = None,
    ) -> None:
        """A service devmesh does not start: registered through the admin API, or found by discovery
        (a Docker container, a Kubernetes Service behind a port-forward).

        `ready` None: it is checked by `health` (its port when None). True/False: its source knows whether
        it can serve and says so (`report_health`); it is never probed, `health` is not used.
        """
        existing = self.runners.get(name)
        if existing is not None and existing.origin not in EXTERNAL_ORIGINS:
            raise SupervisorError(f"{name} is a service of the config; pick another name", status=409)
        spec = ServiceSection(port=port, version=version, health=health if ready is None else None)
        if existing is not None:
            reported = isinstance(existing, ReportedRunner)
            if existing.spec == spec and existing.origin == origin and reported == (ready is not None):
                if isinstance(existing, ReportedRunner) and ready is not None:
                    existing.report(ready, ready_detail)
                return
            raise SupervisorError(
                f"{name} is already registered on port {existing.port} ({existing.origin})", status=409
            )
        runner = self._make_runner(
            name, spec, origin=origin, reported=None if ready is None else (ready, ready_detail)
        )
        self.runners[name] = runner
        runner.start()
        self._on_change()

    def report_health(self, name: str, ready: bool, detail: str | None, origin: Origin) -> None:
        """What the source of a service registered with `ready` says now (only a change is published)."""
        runner = self.runners.get(name)
        if not isinstance(runner, ReportedRunner) or runner.origin != origin:
            raise SupervisorError(
                f"{name} is not a {origin} service whose source reports its health", status=404
            )
        runner.report(ready, detail)

    async def unregister(self, name: str, origin: Origin = Origin.REGISTERED) -> None:
        runner = self.runners.get(name)
        if runner is None or runner.origin != origin:
            raise SupervisorError(f"{name} is not a {origin} service", status=404)
        await runner.stop()
        if self.runners.get(name) is runner:
            del self.runners[name]
            self._release_port(runner.port)
        self._on_change()

    # -- hot reload ----------------------------------------------------------------------------------

    async def apply(self, config: MeshConfig) -> ReloadSummary:
        """Reconcile with a new config: start added services, stop removed ones, restart changed ones."""
        old = {name: r.spec for name, r in self.runners.items() if r.origin not in EXTERNAL_ORIGINS}
        new = dict(config.services)
        summary = ReloadSummary(
            added=[name for name in new if name not in old],
            removed=[name for name in old if name not in new],
            changed=[name for name in new if name in old and new[name] != old[name]],
        )
        self._config = config
        await self.down(summary.removed + summary.changed)
        was_active = {name for name in summary.changed if self._wanted(name)}
        for name in summary.removed:
            self._release_port(self.runners.pop(name).port)
        for name in summary.changed:
            previous = self.runners[name]
            keep_port = previous.port if previous.spec.port is None and new[name].port is None else None
            if keep_port is None:
                self._release_port(previous.port, leaving=previous)
            self.runners[name] = self._make_runner(name, new[name], port=keep_port)
        for name in summary.added:
            # Replaced only once stopped: until then the name stays taken (a discovery source that
            # registers it meanwhile is refused, instead of leaving a runner nobody holds).
            replaced: ServiceRunner | None = None
            while (registered := self.runners.get(name)) is not None and registered is not replaced:
                self._logs.agent(f"{name} is now in the config; its registration is replaced")
                await registered.stop()
                replaced = registered
            self.runners[name] = self._make_runner(name, new[name])
            if replaced is not None:
                self._release_port(replaced.port)
        to_start = [name for name in summary.added if self._selected is None] + sorted(was_active)
        if to_start:
            self._start_all(to_start)
        self._on_change()
        return summary

    # -- internals -----------------------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        return self._selected is None or name in self._selected

    def _start_all(self, names: list[str]) -> None:
        for name in self.closure(names):
            self._start(name)

    def _start(self, name: str) -> None:
        runner = self.runners[name]
        runner.start(after=[self.runners[dependency] for dependency in runner.spec.depends_on])
        if runner.spec.watch and name not in self._watches:
            root = self._project_dir / runner.spec.cwd if runner.spec.cwd else self._project_dir

            def restart(paths: list[Path], runner: ServiceRunner = runner, root: Path = root) -> None:
                shown = ", ".join(
                    str(path.relative_to(root)) for path in paths[:3] if path.is_relative_to(root)
                )
                runner.request_restart(f"files changed ({shown or len(paths)})")

            self._watches[name] = start_watch(root, list(runner.spec.watch), restart)

    async def _stop_watch(self, name: str) -> None:
        task = self._watches.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _release_port(self, port: int | None, *, leaving: ServiceRunner | None = None) -> None:
        """Give `port` back to the allocator, unless a service other than `leaving` still has it (a
        registration may name the port of a service of the config)."""
        if port is not None and all(
            runner.port != port for runner in self.runners.values() if runner is not leaving
        ):
            self._ports.release(port)

    def _runner(self, name: str) -> ServiceRunner:
        runner = self.runners.get(name)
        if runner is None:
            known = ", ".join(sorted(self.runners)) or "none"
            raise SupervisorError(f"no service named {name!r} (services: {known})", status=404)
        return runner

    def _make_runner(
        self,
        name: str,
        spec: ServiceSection,
        *,
        port: int | None = None,
        origin: Origin = Origin.LOCAL,
        reported: tuple[bool, str | None] | None = None,
    ) -> ServiceRunner:
        if spec.port is not None:
            port = spec.port
            self._ports.reserve(port)
        elif port is None and spec.command is not None:
            port = self._ports.allocate()
        if origin is Origin.LOCAL and served_elsewhere(spec):
            remote_or_peer = Origin.REMOTE if spec.remote is not None else Origin.PEER
            return self._new_runner(RemoteRunner, name, spec, port=None, origin=remote_or_peer)
        if reported is not None:
            ready, detail = reported
            return self._new_runner(
                ReportedRunner, name, spec, port=port, origin=origin, ready=ready, detail=detail
            )
        return self._new_runner(ServiceRunner, name, spec, port=port, origin=origin)

    def _new_runner(
        self,
        kind: type[ServiceRunner],
        name: str,
        spec: ServiceSection,
        *,
        port: int | None,
        origin: Origin,
        **extra: Any,
    ) -> ServiceRunner:
        return kind(
            name,
            spec,
            port=port,
            project_dir=self._project_dir,
            owner=self._owner,
            logs=self._logs,
            on_change=self._on_change,
            base_env=self._base_env,
            origin=origin,
            **extra,
        )


def _not_ours(name: str, origin: Origin) -> str:
    """Why `devmesh stop` cannot stop a service devmesh did not start."""
    if origin is Origin.REGISTERED:
        return f"{name} was registered by its own process; unregister it instead"
    if origin is Origin.DOCKER:
        return f"{name} is a Docker container devmesh found; stop it with docker (docker stop ...)"
    return f"{name} is a Kubernetes Service devmesh forwards to; it leaves when the Service does"
