"""`devmesh up --engine nginx`: a real agent whose route table a real nginx serves.

The engine itself (confirmed reloads, rollback, drift, reloads under load) is tested on its own in
test_nginx_engine.py; here the agent drives it: the first config, a config change picked up live, a hub
revision that nginx refuses reported as rejected while the previous table keeps serving, and nothing
left running after `devmesh down`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil
import pytest
from hub_double import HubDouble, hub

from devmesh.dataplane.binary import find_nginx
from devmesh.dataplane.results import EngineError
from support import TINY_COMMAND, Project, free_port, http, running_agent, wait_for

__all__ = ["hub"]  # the fixture

pytestmark = pytest.mark.slow


def _nginx_or_skip() -> None:
    try:
        find_nginx()
    except EngineError as error:
        pytest.skip(f"no nginx here: {error}")


def write_project(project: Project, *, extra: str = "") -> int:
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "edge"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[peers]
discovery = "off"
[engine]
kind = "nginx"
[services.api]
command = "{TINY_COMMAND}"
health = {{ http = "/health", interval = "1s" }}
{extra}
"""
    )
    return listen


def nginx_pids(project_dir: Path) -> list[int]:
    """nginx processes whose command line or cwd points into this project's .devmesh/nginx prefix."""
    prefix = str(project_dir / ".devmesh" / "nginx")
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        if "nginx" in (process.info["name"] or "") and prefix in " ".join(process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


@pytest.mark.timeout(90)
def test_nginx_serves_the_route_table_and_follows_the_config(project: Project) -> None:
    _nginx_or_skip()
    listen = write_project(project)
    with running_agent(project, "--engine", "nginx") as agent:
        agent.wait_healthy("api")
        # A health change reaches nginx by a reload, a moment after the snapshot (debounced, confirmed).
        wait_for(lambda: http(listen, "api.localhost")[0] == 200, timeout=15, what="api served by nginx")
        _, headers, _ = http(listen, "api.localhost")
        assert "nginx" in headers.get("server", "").lower()  # nginx answered, not devmesh's proxy
        assert http(listen, "nobody.localhost")[0] == 404
        assert nginx_pids(project.root)

        # A service added to the config: nginx serves its host once it is healthy.
        write_project_text = (project.root / "devmesh.toml").read_text(encoding="utf-8")
        (project.root / "devmesh.toml").write_text(
            write_project_text
            + f'\n[services.docs]\ncommand = "{TINY_COMMAND}"\nhealth = {{ http = "/health", interval = "1s" }}\n',
            encoding="utf-8",
        )
        wait_for(lambda: http(listen, "docs.localhost")[0] == 200, timeout=30, what="docs served by nginx")
        assert "nginx: revision" in agent.log()
    wait_for(lambda: nginx_pids(project.root) == [], timeout=10, what="nginx stopped with the agent")


@pytest.mark.timeout(90)
def test_a_hub_revision_nginx_refuses_is_rejected_and_the_old_table_serves(
    project: Project, hub: HubDouble
) -> None:
    _nginx_or_skip()
    listen = write_project(project)
    with running_agent(project, "--hub", hub.url, "--hub-token", hub.new_token()) as agent:
        agent.wait_healthy("api")
        api = {"hosts": ["api", "api-v1"]}
        good = hub.push({"services": {"api": api}})
        wait_for(lambda: hub.agent().statuses.get(good), timeout=20, what="the good revision's status")
        assert hub.agent().statuses[good]["status"] == "applied"
        wait_for(lambda: http(listen, "api-v1.localhost")[0] == 200, timeout=15, what="api-v1 via nginx")

        # Valid for devmesh's schema, refused by `nginx -t`: an upstream host name that does not resolve.
        # (A revision is a whole document: it keeps api's hosts, so api itself does not change.)
        bad = hub.push({"services": {"api": api, "ghost": {"remote": "http://ghost.devmesh-test.invalid"}}})
        wait_for(lambda: hub.agent().statuses.get(bad), timeout=30, what="the bad revision's status")
        rejected = hub.agent().statuses[bad]
        assert rejected["status"] == "rejected", rejected
        assert "data plane refused" in rejected["details"] and "ghost" in rejected["details"]
        assert http(listen, "api-v1.localhost")[0] == 200, agent.log()[-6000:]  # the previous table serves
        linked = agent.status()["agent"]["hub"]
        assert linked["revision"] == good

        # A change on this agent (not a revision) that nginx refuses while the revision is in force:
        # the log says so plainly, as the hub still shows that revision applied.
        config = project.root / "devmesh.toml"
        config.write_text(
            config.read_text(encoding="utf-8")
            + '\n[services.phantom]\nremote = "http://phantom.devmesh-test.invalid"\n',
            encoding="utf-8",
        )
        said = f"nginx refused the route table after a change on this agent, with hub revision {good[:12]}"
        wait_for(lambda: said in agent.log(), timeout=30, what="the refusal logged")
        assert http(listen, "api-v1.localhost")[0] == 200
    assert os.path.exists(project.root / ".devmesh" / "hub-revision.json")


@pytest.mark.timeout(90)
async def test_a_shutdown_step_that_fails_leaves_neither_nginx_nor_services_running(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent in this process whose plugins' stop raises: the steps after it (nginx, the services)
    still run, and the failure is logged."""
    import asyncio
    import io
    import signal

    from devmesh.agent.runtime import Agent
    from devmesh.config import load_config
    from devmesh.plugins.hooks import PluginHooks

    _nginx_or_skip()
    listen = write_project(project)

    async def broken_stop(self: PluginHooks) -> None:
        raise RuntimeError("a plugin fell over")

    monkeypatch.setattr(PluginHooks, "stop", broken_stop)
    terminal = io.StringIO()
    agent = Agent(load_config(project.root / "devmesh.toml"), terminal=terminal, engine="nginx")
    run = asyncio.get_running_loop().create_task(agent.run())
    try:
        for _ in range(600):
            if run.done():
                break
            if agent.dataplane is not None and agent.dataplane.last is not None and project.leftovers():
                with contextlib.suppress(OSError):
                    status, _, _ = await asyncio.to_thread(http, listen, "api.localhost", timeout=5)
                    if status == 200:
                        break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("api was not served by nginx in time")
        assert not run.done(), terminal.getvalue()
        assert nginx_pids(project.root)
        assert agent._stop_event is not None
        agent._stop_event.set()
        assert await asyncio.wait_for(run, 30) == 0
        assert "stopping the plugins failed: RuntimeError('a plugin fell over')" in terminal.getvalue()
        assert nginx_pids(project.root) == []
        await asyncio.to_thread(
            wait_for, lambda: not project.leftovers(), timeout=10, what="the services stopped"
        )
    finally:  # what this test's agent left, when the shutdown did not stop it
        if not run.done():
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
        if agent.dataplane is not None:
            await agent.dataplane.close()  # nginx's master and workers, gracefully
        for pid in nginx_pids(project.root):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # the master leads its workers' group
        for pid in project.leftovers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
