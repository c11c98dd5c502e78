"""Hook plugins: code from other packages that the agent calls when it starts, on each event, and when
it stops.

A hook plugin is an entry point in the group `devmesh.plugins` whose object (a module, any object, or a
class instantiated once without arguments) has one or more of these plain functions:

- `on_agent_started(info: AgentInfo)`: the agent is up: its admin API answers, services are starting;
- `on_event(event: dict)`: one event of the agent's events stream (`GET /api/v1/events`): `service`
  (a service's status changed: `event["service"]` is its status, `event["previous"]` its state and
  health before), `service_removed`, `peer` (joined / left), `route` (a pin), `fault` / `scenario`,
  `agent` (config reloaded or in error), `traffic` (once a second while requests flow). Each plugin gets
  its own copy;
- `on_agent_stopping(info: AgentInfo)`: the agent is stopping; services are still running.

Why a thread per plugin: the agent's one event loop also runs the proxy, so a hook never runs on it.
Each plugin has a worker thread and a bounded queue; when a slow plugin's queue is full, new events for
it are dropped and counted (`dropped`), never waited for, and the other plugins are not held up. A hook
that raises is logged with its traceback's last line and its plugin disabled: a plugin cannot take the
agent down. At shutdown the agent waits `stop_timeout_s` at most for the last hooks to return.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from devmesh.plugins import HOOK_NAMES
from devmesh.plugins.registry import PluginError, entry_point_source, entry_points, load_entry_point

if TYPE_CHECKING:
    from devmesh.observe.events import EventHub

__all__ = ["AgentInfo", "HookPlugin", "PluginHooks", "hook_plugin", "load"]

# Events queued for one plugin before new ones are dropped (a plugin that keeps up never sees a drop).
HOOK_QUEUE_MAX_EVENTS = 1000
# How long the agent's shutdown waits for the plugins' last hooks (on_agent_stopping) to return.
HOOK_STOP_TIMEOUT_S = 3.0
_COMPONENT = "plugins"


class AgentLog(Protocol):
    """What the hooks log to: the agent's LogSink."""

    def agent(
        self, text: str, *, component: str = ..., level: str = ..., event: str = ..., **fields: object
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """The agent, as a hook plugin sees it."""

    mesh: str
    project_dir: Path
    config_file: Path
    peer_id: str
    admin_url: str  # e.g. http://127.0.0.1:7070; writes need the token in project_dir/.devmesh/token
    proxy_url: str | None  # e.g. http://127.0.0.1:7080
    services: tuple[str, ...]  # the config's services


@dataclass(frozen=True, slots=True)
class HookPlugin:
    """One hook plugin: its name, where it comes from, and the hooks it has."""

    name: str
    source: str
    hooks: Mapping[str, Callable[[Any], object]]


def hook_plugin(name: str, source: str, loaded: object) -> HookPlugin:
    """The hooks of a loaded entry point object; `PluginError` when it has none or one is async."""
    target = loaded
    if isinstance(loaded, type):
        try:
            target = loaded()
        except Exception as error:
            raise PluginError(
                f"plugin {name!r} ({source}): {loaded.__name__}() failed: {type(error).__name__}: {error}"
            ) from error
    hooks: dict[str, Callable[[Any], object]] = {}
    for hook in HOOK_NAMES:
        function = getattr(target, hook, None)
        if function is None:
            continue
        if not callable(function):
            raise PluginError(f"plugin {name!r} ({source}): {hook} is not a function")
        if inspect.iscoroutinefunction(function):
            raise PluginError(
                f"plugin {name!r} ({source}): {hook} is `async def`; hooks are plain functions, "
                "each called in the plugin's own thread (see docs/plugins.md)"
            )
        hooks[hook] = function
    if not hooks:
        raise PluginError(f"plugin {name!r} ({source}) has none of the hooks {', '.join(HOOK_NAMES)}")
    return HookPlugin(name, source, hooks)


def load(logs: AgentLog) -> PluginHooks:
    """The installed hook plugins (entry points in `devmesh.plugins`); one that does not load is logged
    and left out. Imports the plugins' code: call it off the event loop (`asyncio.to_thread`)."""
    plugins: list[HookPlugin] = []
    for entry_point in entry_points():
        try:
            loaded, kind = load_entry_point(entry_point)
            if kind != "hooks":
                continue  # a command plugin: nothing for the agent
            plugins.append(hook_plugin(entry_point.name, entry_point_source(entry_point), loaded))
        except PluginError as error:
            logs.agent(
                f"{error}; the agent runs without it",
                component=_COMPONENT,
                level="warning",
                event="plugin_broken",
                plugin=entry_point.name,
            )
    for plugin in plugins:
        logs.agent(
            f"plugin {plugin.name} ({plugin.source}): {', '.join(plugin.hooks)}",
            component=_COMPONENT,
            event="plugin_loaded",
            plugin=plugin.name,
        )
    return PluginHooks(plugins, logs=logs)


class _Worker:
    """One plugin's thread and queue. Items are (hook, argument); None ends the thread."""

    def __init__(self, plugin: HookPlugin, *, queue_max: int, report: Callable[..., None]) -> None:
        self.plugin = plugin
        self.dropped = 0
        self.calls = 0
        self.failed: str | None = None
        self._queue: deque[tuple[str, Any] | None] = deque()
        self._queued_events = 0
        self._queue_max = queue_max
        self._ready = threading.Condition()
        self._dropping = False
        self._report = report
        self.thread = threading.Thread(
            target=self._run, name=f"devmesh-plugin-{plugin.name}", daemon=True
        )  # daemon: a hook stuck for ever must not keep the process alive after the agent is done

    def submit(self, hook: str, argument: Any, *, droppable: bool) -> None:
        if self.failed is not None or hook not in self.plugin.hooks:
            return
        with self._ready:
            if droppable and self._queued_events >= self._queue_max:
                self.dropped += 1
                first_of_burst = not self._dropping
                self._dropping = True
            else:
                first_of_burst = False
                self._dropping = False
                self._queued_events += droppable
                self._queue.append((hook, argument))
                self._ready.notify()
        if first_of_burst:
            self._report(
                f"plugin {self.plugin.name} is not keeping up: events for it are dropped "
                f"({self.dropped} so far; its queue holds {self._queue_max})",
                level="warning",
                event="plugin_events_dropped",
                plugin=self.plugin.name,
                dropped=self.dropped,
            )

    def close(self) -> None:
        with self._ready:
            self._queue.append(None)
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                item = self._queue.popleft()
                if item is not None and item[0] == "on_event":
                    self._queued_events -= 1
            if item is None:
                return
            hook, argument = item
            if self.failed is not None:
                continue
            try:
                # Each plugin gets its own copy of an event: one plugin's changes never reach another.
                self.plugin.hooks[hook](copy.deepcopy(argument) if hook == "on_event" else argument)
                self.calls += 1
            except BaseException as error:  # SystemExit in a plugin must not end its thread silently
                self.failed = f"{hook} raised {type(error).__name__}: {error}"
                self._report(
                    f"plugin {self.plugin.name} ({self.plugin.source}) is disabled: {self.failed}",
                    level="error",
                    event="plugin_failed",
                    plugin=self.plugin.name,
                    hook=hook,
                )


class PluginHooks:
    """The hook plugins of one agent. `start` and `stop` are called on the agent's event loop; every
    hook runs in its plugin's thread."""

    load = staticmethod(load)

    def __init__(
        self,
        plugins: Sequence[HookPlugin],
        *,
        logs: AgentLog,
        queue_max_events: int = HOOK_QUEUE_MAX_EVENTS,
        stop_timeout_s: float = HOOK_STOP_TIMEOUT_S,
    ) -> None:
        self._logs = logs
        self._stop_timeout_s = stop_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_lock = threading.Lock()
        self._workers = [
            _Worker(plugin, queue_max=queue_max_events, report=self._report) for plugin in plugins
        ]
        self._follower: asyncio.Task[None] | None = None
        self._info: AgentInfo | None = None
        self._started = False
        self._stopped = False

    @property
    def plugins(self) -> list[HookPlugin]:
        return [worker.plugin for worker in self._workers]

    @property
    def dropped(self) -> dict[str, int]:
        """Events dropped per plugin because its queue was full."""
        return {worker.plugin.name: worker.dropped for worker in self._workers}

    @property
    def failed(self) -> dict[str, str]:
        """The disabled plugins, each with the error that disabled it."""
        return {worker.plugin.name: worker.failed for worker in self._workers if worker.failed is not None}

    def start(self, info: AgentInfo, events: EventHub | None = None) -> None:
        """Call every `on_agent_started(info)`, and from now on every `on_event` with the events of
        `events` (the agent's EventHub). Call it on the event loop once the admin API answers."""
        if self._started or not self._workers:
            return
        self._started = True
        self._info = info
        self._loop = asyncio.get_running_loop()
        for worker in self._workers:
            worker.thread.start()
            worker.submit("on_agent_started", info, droppable=False)
        if events is not None and any("on_event" in worker.plugin.hooks for worker in self._workers):
            self._follower = self._loop.create_task(self._follow(events))

    def event(self, event: Mapping[str, Any]) -> None:
        """Hand one event to every plugin with `on_event`; never blocks (a full queue drops it)."""
        if not self._started or self._stopped:
            return
        for worker in self._workers:
            worker.submit("on_event", event, droppable=True)

    async def stop(self) -> None:
        """Call every `on_agent_stopping(info)` after the events already queued, and wait for the
        plugins' threads `stop_timeout_s` at most. Safe to call when `start` never was."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        for worker in self._workers:
            worker.submit("on_agent_stopping", self._info, droppable=False)
            worker.close()
        deadline = time.monotonic() + self._stop_timeout_s

        def join_all() -> None:
            for worker in self._workers:
                worker.thread.join(max(deadline - time.monotonic(), 0.0))

        await asyncio.to_thread(join_all)
        for worker in self._workers:
            if worker.thread.is_alive():
                self._logs.agent(
                    f"plugin {worker.plugin.name} was still in a hook after {self._stop_timeout_s:g}s; "
                    "the agent stops without waiting for it",
                    component=_COMPONENT,
                    level="warning",
                    event="plugin_stuck",
                    plugin=worker.plugin.name,
                )
            if worker.dropped:
                self._logs.agent(
                    f"plugin {worker.plugin.name}: {worker.dropped} event(s) dropped in all",
                    component=_COMPONENT,
                    level="warning",
                    event="plugin_events_dropped",
                    plugin=worker.plugin.name,
                    dropped=worker.dropped,
                )

    async def _follow(self, events: EventHub) -> None:
        """Subscribe to the events stream like a dashboard does, and hand each event on at once."""
        while True:
            subscription = events.subscribe()
            try:
                while True:
                    event = await subscription.queue.get()
                    if subscription.overflowed and event.get("type") == "overflow":
                        break  # the hub gave up on us (cannot happen unless the loop starves us): again
                    self.event(event)
            finally:
                events.unsubscribe(subscription)
            self._report(
                "plugins missed some events: the events stream overflowed",
                level="warning",
                event="plugin_events_dropped",
            )

    def _report(self, text: str, *, level: str, event: str, **fields: object) -> None:
        """Log from any thread: on the agent's loop when it runs (the LogSink is not thread-safe)."""
        record = functools.partial(
            self._logs.agent, text, component=_COMPONENT, level=level, event=event, **fields
        )
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: the line is lost
                loop.call_soon_threadsafe(record)
                return
        with self._log_lock:
            record()
