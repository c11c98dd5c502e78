"""PluginHooks: hooks run off the loop, a failing plugin is disabled, a slow one loses events, not the
agent; `load` finds hook plugins among real installed distributions."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from devmesh.observe.events import EventHub
from devmesh.plugins.hooks import AgentInfo, HookPlugin, PluginHooks, hook_plugin, load
from devmesh.plugins.registry import PluginError
from plugins.distributions import make_distribution
from support import wait_for

INFO = AgentInfo(
    mesh="shop",
    project_dir=Path("/p"),
    config_file=Path("/p/devmesh.toml"),
    peer_id="host-abc",
    admin_url="http://127.0.0.1:7070",
    proxy_url="http://127.0.0.1:7080",
    services=("api",),
)


class Logs:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.threads: set[str] = set()

    def agent(self, text: str, **fields: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.records.append({"text": text, **fields})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.threads: set[str] = set()

    def on_agent_started(self, info: AgentInfo) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append(("started", info))

    def on_event(self, event: dict[str, Any]) -> None:
        event["touched"] = True  # a plugin's change must not reach anyone else
        self.calls.append(("event", event))

    def on_agent_stopping(self, info: AgentInfo) -> None:
        self.calls.append(("stopping", info))


async def test_hooks_run_in_order_off_the_loop_with_their_own_copy_of_each_event() -> None:
    hub = EventHub()
    recorder = Recorder()
    logs = Logs()
    hooks = PluginHooks([hook_plugin("rec", "rec 1.0", recorder)], logs=logs)
    hooks.start(INFO, hub)
    await asyncio.sleep(0)  # the follower subscribes
    event = {"type": "service", "service": {"name": "api"}}
    hub.publish(event)
    await asyncio.to_thread(wait_for, lambda: len(recorder.calls) == 2, what="the event")
    await hooks.stop()
    assert [kind for kind, _ in recorder.calls] == ["started", "event", "stopping"]
    assert recorder.calls[0][1] is INFO
    assert recorder.calls[1][1] == {"type": "service", "service": {"name": "api"}, "touched": True}
    assert "touched" not in event
    assert recorder.threads == {"devmesh-plugin-rec"}
    assert hub.subscribers == []


async def test_a_plugin_that_raises_is_disabled_and_logged_and_the_others_go_on() -> None:
    calls: list[str] = []

    def explode(_event: object) -> None:
        raise RuntimeError("boom")

    broken = HookPlugin("bad", "bad 0.1", {"on_event": explode, "on_agent_stopping": calls.append})
    good = HookPlugin("good", "good 0.1", {"on_event": lambda event: calls.append(event["n"])})
    logs = Logs()
    hooks = PluginHooks([broken, good], logs=logs)
    hooks.start(INFO)
    for number in range(3):
        hooks.event({"n": number})
    await asyncio.to_thread(wait_for, lambda: len(calls) == 3, what="the good plugin's events")
    await hooks.stop()
    assert calls == [0, 1, 2]  # the broken plugin's on_agent_stopping never ran: it is disabled
    assert hooks.failed == {"bad": "on_event raised RuntimeError: boom"}
    failures = [record for record in logs.records if record.get("event") == "plugin_failed"]
    assert len(failures) == 1 and "bad" in failures[0]["text"] and failures[0]["level"] == "error"
    assert logs.threads == {threading.current_thread().name}  # logged on the loop, not the plugin's thread


async def test_a_slow_plugin_loses_events_instead_of_holding_up_the_loop() -> None:
    release = threading.Event()
    seen: list[int] = []

    def slow(event: dict[str, int]) -> None:
        release.wait(10)
        seen.append(event["n"])

    logs = Logs()
    hooks = PluginHooks([HookPlugin("slow", "slow 0.1", {"on_event": slow})], logs=logs, queue_max_events=5)
    hooks.start(INFO)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for number in range(100):
        hooks.event({"n": number})
    assert loop.time() - started < 0.5  # never waited for the plugin
    release.set()
    await hooks.stop()
    assert len(seen) <= 6 and seen == sorted(seen) and seen[0] == 0
    assert hooks.dropped["slow"] == 100 - len(seen)
    warnings = [record for record in logs.records if record.get("event") == "plugin_events_dropped"]
    assert warnings and warnings[0]["level"] == "warning"


async def test_stop_does_not_wait_for_ever_for_a_stuck_hook() -> None:
    stuck = threading.Event()
    logs = Logs()
    hooks = PluginHooks(
        [HookPlugin("stuck", "s 0.1", {"on_agent_stopping": lambda _info: stuck.wait(10)})],
        logs=logs,
        stop_timeout_s=0.2,
    )
    hooks.start(INFO)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await hooks.stop()
    assert loop.time() - started < 2
    assert any(record.get("event") == "plugin_stuck" for record in logs.records)
    stuck.set()


def test_hook_plugin_refuses_objects_without_hooks_and_async_hooks() -> None:
    with pytest.raises(PluginError, match="has none of the hooks"):
        hook_plugin("x", "x 1", object())

    class Async:
        async def on_event(self, event: object) -> None:
            pass

    with pytest.raises(PluginError, match="async def"):
        hook_plugin("x", "x 1", Async)
    assert set(hook_plugin("r", "r 1", Recorder).hooks) == {
        "on_agent_started",
        "on_event",
        "on_agent_stopping",
    }


def test_load_finds_hook_plugins_and_logs_broken_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_distribution(
        tmp_path / "site",
        "devmesh-mixed",
        modules={
            "mixed_hooks": "def on_event(event):\n    pass\n",
            "mixed_command": "import click\n@click.command()\ndef cmd():\n    pass\n",
            "mixed_broken": "raise ImportError('half installed')\n",
        },
        entry_points={"hooks": "mixed_hooks", "cmd": "mixed_command:cmd", "broken": "mixed_broken"},
    )
    monkeypatch.syspath_prepend(str(site))
    logs = Logs()
    hooks = load(logs)
    assert [(plugin.name, plugin.source, list(plugin.hooks)) for plugin in hooks.plugins] == [
        ("hooks", "devmesh-mixed 0.1", ["on_event"])
    ]
    broken = [record for record in logs.records if record.get("event") == "plugin_broken"]
    assert len(broken) == 1 and "half installed" in broken[0]["text"]
