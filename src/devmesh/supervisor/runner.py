"""One service under supervision: its process, its restart policy with backoff, its health and its watch.

A runner's life is one task (`_supervise`) that loops spawn → wait for exit, restart request or stop →
decide. Everything else (API calls, file watches, health transitions) only sets events that this loop
reads, so there is one place where the process is started and stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from devmesh import const
from devmesh.config.schema import ServiceSection
from devmesh.health.monitor import HealthMonitor
from devmesh.health.probes import build_probe
from devmesh.mesh.snapshot import Endpoint, Health, Origin, RunState, ServiceView
from devmesh.supervisor.logs import LogSink
from devmesh.supervisor.process import OWNER_ENV, Spawned, reap_group_leftovers, spawn, stop_group

SERVICE_HOST = "127.0.0.1"


def backoff_delay_s(failures: int) -> float:
    """Exponential backoff: 0.5 s, 1 s, 2 s ... capped at `RESTART_BACKOFF_MAX_S`."""
    if failures <= 0:
        return 0.0
    return float(min(const.RESTART_BACKOFF_INITIAL_S * 2 ** (failures - 1), const.RESTART_BACKOFF_MAX_S))


def exit_reason(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        return f"killed by signal {-code}"
    if code == 127:
        return "exited with code 127 (command not found: check `command`)"
    return f"exited with code {code}"


class ServiceRunner:
    """Supervises one service of the config: spawned (with a command) or only health-checked (without)."""

    def __init__(
        self,
        name: str,
        spec: ServiceSection,
        *,
        port: int | None,
        project_dir: Path,
        owner: str,
        logs: LogSink,
        on_change: Callable[[], None],
        base_env: Mapping[str, str] | None = None,
        origin: Origin = Origin.LOCAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.spec = spec
        self.port = port
        self.origin = origin
        self._project_dir = project_dir
        self._owner = owner
        self._logs = logs
        self._notify = on_change
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._clock = clock
        self.state = RunState.STOPPED
        self.health = Health.UNKNOWN
        self.pid: int | None = None
        self.restarts = 0
        self.detail: str | None = None
        self.healthy_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._restart_event = asyncio.Event()
        self._restart_reason = ""
        self._task: asyncio.Task[None] | None = None
        self._healthy_since: float | None = None
        self._monitor: HealthMonitor | None = None
        self._wait_for: list[ServiceRunner] = []
        logs.register(name)

    # -- control -------------------------------------------------------------------------------------

    @property
    def spawns(self) -> bool:
        """Whether devmesh runs this service's process (it has a command)."""
        return self.spec.command is not None

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, *, after: list[ServiceRunner] | None = None) -> None:
        """Begin supervising; the process starts once every runner in `after` is healthy."""
        if self.active:
            return
        self._wait_for = list(after or [])
        self._stop_event = asyncio.Event()
        self._restart_event = asyncio.Event()
        self.detail = None
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"devmesh-service-{self.name}"
        )

    def request_restart(self, reason: str) -> None:
        """Restart now (API, watch): not a failure, no backoff."""
        if not self.active:
            self.start()
            return
        self._restart_reason = reason
        self._restart_event.set()

    async def stop(self) -> None:
        """Stop the process (TERM, grace, KILL of the group) and stop supervising."""
        task = self._task
        if task is None or task.done():
            self._set_state(RunState.STOPPED if self.state != RunState.CRASHED else self.state)
            return
        self._stop_event.set()
        await asyncio.shield(task)

    async def wait_healthy(self) -> None:
        await self.healthy_event.wait()

    # -- the view the mesh snapshot is built from ----------------------------------------------------

    def view(self, domain: str) -> ServiceView:
        hosts = tuple(self.spec.hosts) if self.spec.hosts is not None else (self.name,)
        endpoints: tuple[Endpoint, ...] = ()
        if self.port is not None and self.state in (RunState.STARTING, RunState.RUNNING):
            endpoints = (
                Endpoint(
                    service=self.name,
                    host=SERVICE_HOST,
                    port=self.port,
                    origin=self.origin,
                    healthy=self.health == Health.HEALTHY,
                    version=self.spec.version,
                ),
            )
        detail = self.detail
        if detail is None and self._monitor is not None and self.health != Health.HEALTHY:
            detail = self._monitor.last_reason
        return ServiceView(
            name=self.name,
            origin=self.origin,
            state=self.state,
            health=self.health,
            hosts=hosts,
            routes=tuple(self.spec.routes),
            endpoints=endpoints,
            version=self.spec.version,
            port=self.port,
            pid=self.pid,
            restarts=self.restarts,
            remote=self.spec.remote,
            requires=self.spec.requires,
            lb=self.spec.lb,
            sticky=self.spec.sticky,
            detail=detail,
        )

    # -- the supervision loop ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            if self._wait_for:
                self._set_state(
                    RunState.STARTING, detail="waiting for " + ", ".join(r.name for r in self._wait_for)
                )
                if not await self._until_stop(asyncio.gather(*(r.wait_healthy() for r in self._wait_for))):
                    self._set_state(RunState.STOPPED)
                    return
                self.detail = None
            if self.spawns:
                await self._supervise_process()
            else:
                await self._watch_external()
        finally:
            self._set_health(Health.UNKNOWN)
            self.pid = None
            self._notify()

    async def _watch_external(self) -> None:
        """A service started elsewhere: health-checked (its port, when no check is given), never spawned."""
        if self.port is None and (self.spec.health is None or self.spec.health.cmd is None):
            # Nothing local to check (a remote-only service): the proxy sends its requests to the remote.
            self._set_state(RunState.STOPPED, detail="no local endpoint")
            await self._stop_event.wait()
            return
        # Started elsewhere: "stopped" until its check passes, "running" while it does.
        self._set_state(RunState.STOPPED)
        monitor_task = self._start_monitor(external=True)
        try:
            await self._stop_event.wait()
        finally:
            await _cancel(monitor_task)
        self._set_state(RunState.STOPPED)

    async def _supervise_process(self) -> None:
        failures = 0
        while True:
            spawned = await self._spawn()
            if spawned is None:
                failures += 1
                if not await self._backoff_or_stop(failures):
                    return
                continue
            monitor_task = self._start_monitor(external=False)
            pump_task = asyncio.get_running_loop().create_task(self._pump(spawned))
            exit_wait: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(spawned.process.wait()))
            stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self._stop_event.wait())
            restart_wait: asyncio.Future[Any] = asyncio.ensure_future(self._restart_event.wait())
            try:
                await asyncio.wait({exit_wait, stop_wait, restart_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (stop_wait, restart_wait):
                    waiter.cancel()
            await _cancel(monitor_task)
            healthy_for = self._clock() - self._healthy_since if self._healthy_since is not None else 0.0
            self._healthy_since = None
            if healthy_for >= const.RESTART_BACKOFF_RESET_AFTER_S:
                failures = 0
            if not exit_wait.done():  # stop or restart asked for
                # Out of the route table before the signal: new requests wait for the next process (or
                # get a 503) instead of meeting one that is shutting down.
                self._set_health(Health.UNKNOWN)
                if not self._stop_event.is_set():
                    self._set_state(RunState.STARTING, detail=f"restarting: {self._restart_reason}")
                else:
                    self._notify()
                await asyncio.sleep(0)  # let the new snapshot be published before the signal goes
                code = await stop_group(spawned, grace_s=self.spec.stop_grace)
                exit_wait.cancel()
                await self._finish_pump(pump_task)
                if self._stop_event.is_set():
                    self._record(f"{self.name} stopped ({exit_reason(code)})", "service_stopped")
                    self._set_state(RunState.STOPPED)
                    return
                reason = self._restart_reason
                self._restart_event.clear()
                self.restarts += 1
                self._record(f"{self.name} restarting: {reason}", "service_restarting", reason=reason)
                if reason.startswith("unhealthy"):
                    failures += 1
                    if not await self._backoff_or_stop(failures):
                        return
                continue
            code = exit_wait.result()
            reap_group_leftovers(spawned.pgid)
            await self._finish_pump(pump_task)
            reason = exit_reason(code)
            restart = self.spec.restart == "always" or (self.spec.restart == "on-failure" and code != 0)
            if code == 0 and not restart:
                self._record(f"{self.name} exited cleanly", "service_exited")
                self._set_state(RunState.STOPPED, detail="exited with code 0")
                return
            self._set_state(RunState.CRASHED, detail=reason)
            if not restart:
                self._record(
                    f'{self.name} {reason}; restart = "{self.spec.restart}", not restarting',
                    "service_crashed",
                    level="warning",
                    reason=reason,
                )
                return
            failures += 1
            self.restarts += 1
            self._record(
                f"{self.name} {reason}; restarting in {backoff_delay_s(failures):g}s",
                "service_crashed",
                level="warning",
                reason=reason,
                restart_in_s=backoff_delay_s(failures),
            )
            if not await self._backoff_or_stop(failures):
                return

    def _record(
        self, text: str, event: str, *, level: str = "info", component: str = "supervisor", **fields: object
    ) -> None:
        """One of devmesh's records about this service (`text` for people, the rest for machines)."""
        self._logs.agent(text, component=component, level=level, event=event, service=self.name, **fields)

    async def _spawn(self) -> Spawned | None:
        env = self._child_env()
        cwd = self._project_dir / self.spec.cwd if self.spec.cwd else self._project_dir
        if not cwd.is_dir():
            self._set_state(RunState.CRASHED, detail=f"cwd {cwd} does not exist (check `cwd`)")
            self._record(f"{self.name}: cwd {cwd} does not exist", "service_failed", level="error")
            return None
        assert self.spec.command is not None
        try:
            spawned = await spawn(self.spec.command, env=env, cwd=cwd)
        except OSError as error:
            detail = f"cannot start: {error.strerror or error}"
            self._set_state(RunState.CRASHED, detail=detail)
            self._record(f"{self.name} {detail}", "service_failed", level="error")
            return None
        self.pid = spawned.pid
        self._record(
            f"{self.name} started (pid {spawned.pid}" + (f", port {self.port})" if self.port else ")"),
            "service_started",
            pid=spawned.pid,
            port=self.port,
        )
        self._set_health(Health.UNKNOWN)
        self._set_state(RunState.STARTING)
        return spawned

    async def _backoff_or_stop(self, failures: int) -> bool:
        """Wait out the backoff; False when a stop arrived meanwhile."""
        delay = backoff_delay_s(failures)
        try:
            async with asyncio.timeout(delay):
                await self._stop_event.wait()
        except TimeoutError:
            return True
        if self.state != RunState.CRASHED:
            self._set_state(RunState.STOPPED)
        return False

    async def _until_stop(self, awaitable: asyncio.Future[Any]) -> bool:
        """Wait for `awaitable` unless a stop comes first; True when it completed."""
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self._stop_event.wait())
        try:
            done, _ = await asyncio.wait({awaitable, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        if awaitable in done:
            return True
        awaitable.cancel()
        return False

    def _child_env(self) -> dict[str, str]:
        env = dict(self._base_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.port is not None:
            env["PORT"] = str(self.port)
        env["DEVMESH_SERVICE"] = self.name
        if self.spec.version is not None:
            env["DEVMESH_SERVICE_VERSION"] = self.spec.version
        env[OWNER_ENV] = self._owner
        env.update(self.spec.env)
        return env

    def _start_monitor(self, *, external: bool) -> asyncio.Task[None] | None:
        health = self.spec.health
        probe = build_probe(
            health,
            host=SERVICE_HOST,
            port=self.port,
            env=self._child_env(),
            cwd=self._project_dir / self.spec.cwd if self.spec.cwd else self._project_dir,
            timeout_s=health.timeout if health else const.HEALTH_TIMEOUT_S,
        )
        if probe is None or (health is None and not external):
            # No check: a supervised process is healthy while it runs.
            self._monitor = None
            self._on_health(True, None)
            return None
        self._monitor = HealthMonitor(
            probe,
            interval_s=health.interval if health else const.PORT_PROBE_INTERVAL_S,
            unhealthy_after=health.unhealthy_after if health else 1,
            on_change=self._on_health,
        )
        return asyncio.get_running_loop().create_task(self._monitor.run(), name=f"devmesh-health-{self.name}")

    def _on_health(self, healthy: bool, reason: str | None) -> None:
        if healthy:
            self._healthy_since = self._clock()
            self.detail = None
            self._set_health(Health.HEALTHY)
            self._set_state(RunState.RUNNING)
            return
        self._healthy_since = None
        self.detail = reason
        if not self.spawns:
            self._set_state(RunState.STOPPED)
        self._set_health(Health.UNHEALTHY)
        if self.spawns and self.spec.restart == "always":
            self._restart_reason = f"unhealthy ({reason})"
            self._restart_event.set()
        self._record(
            f"{self.name} is unhealthy: {reason}",
            "service_unhealthy",
            level="warning",
            component="health",
            reason=reason,
        )
        self._notify()

    async def _pump(self, spawned: Spawned) -> None:
        """Copy the child's merged output to the log sink, line by line."""
        stream = spawned.process.stdout
        assert stream is not None
        pending = b""
        while True:
            chunk = await stream.read(const.LOG_LINE_MAX_BYTES)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._logs.line(self.name, line.decode("utf-8", errors="replace"))
            if len(pending) >= const.LOG_LINE_MAX_BYTES:
                self._logs.line(self.name, pending.decode("utf-8", errors="replace"))
                pending = b""
        if pending:
            self._logs.line(self.name, pending.decode("utf-8", errors="replace"))

    async def _finish_pump(self, pump_task: asyncio.Task[None]) -> None:
        # Grandchildren may hold the pipe open after the group is gone; do not wait on them forever.
        try:
            await asyncio.wait_for(asyncio.shield(pump_task), 1.0)
        except TimeoutError:
            await _cancel(pump_task)

    def _set_state(self, state: RunState, *, detail: str | None = None) -> None:
        if detail is not None:
            self.detail = detail
        if state in (RunState.STOPPED, RunState.CRASHED):
            self.pid = None
            self._set_health(Health.UNKNOWN)
        if state != self.state:
            self.state = state
        self._notify()

    def _set_health(self, health: Health) -> None:
        self.health = health
        if health == Health.HEALTHY:
            self.healthy_event.set()
        else:
            self.healthy_event.clear()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait for it to end, cancelling again if a cancellation got lost."""
    while task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait({task}, timeout=1.0)
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()


class ReportedRunner(ServiceRunner):
    """A service whose health its discovery source reports (a Kubernetes Service: whether a ready pod
    backs it), because a probe of its port would say nothing (a port-forward listener accepts with no pod
    behind it) and cost much (each probe would open a port-forward).

    Never probed: running and healthy while the source says it is ready, stopped and unhealthy with the
    source's reason while it says not (`report`), as a service checked by its port is while the port
    refuses.
    """

    def __init__(
        self, name: str, spec: ServiceSection, *, ready: bool, detail: str | None, **kwargs: Any
    ) -> None:
        super().__init__(name, spec, **kwargs)
        self._ready = ready
        self._ready_detail = detail
        self._following = False

    @property
    def ready(self) -> bool:
        return self._ready

    def report(self, ready: bool, detail: str | None) -> None:
        """What the source says now; only a change is published."""
        if (ready, detail) == (self._ready, self._ready_detail):
            return
        self._ready, self._ready_detail = ready, detail
        self._apply()

    async def _watch_external(self) -> None:
        self._following = True
        try:
            self._apply()
            await self._stop_event.wait()
        finally:
            self._following = False
        self._set_state(RunState.STOPPED)

    def _apply(self) -> None:
        if not self._following:
            return
        if self._ready:
            self._on_health(True, None)
            return
        reason = self._ready_detail or "its source says it is not ready"
        if (self.health, self.detail) != (Health.UNHEALTHY, reason):
            self._on_health(False, reason)
