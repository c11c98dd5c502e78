"""`devmesh up` for real: child processes, dependency order, restarts, watch, health, shutdown."""

from __future__ import annotations

import itertools
import os
import signal
import time

from support import TINY_COMMAND, Project, pid_alive, running_agent, wait_for


def _config(project: Project, services: str, *, extra: str = "") -> None:
    project.write(
        f"""
[mesh]
name = "test"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
{extra}
{services}
"""
    )


def _service(
    name: str, *, depends_on: list[str] | None = None, env: dict[str, str] | None = None, **keys: str
) -> str:
    lines = [
        f"[services.{name}]",
        f'command = "{TINY_COMMAND}"',
        'health = { http = "/health", interval = "0.2s" }',
    ]
    if depends_on is not None:
        lines.append(f"depends_on = {depends_on!r}".replace("'", '"'))
    environment = {"EVENTS_FILE": "events.txt", **(env or {})}
    lines.append("env = { " + ", ".join(f'{k} = "{v}"' for k, v in environment.items()) + " }")
    lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def test_starts_in_dependency_order_and_stops_in_reverse(project: Project) -> None:
    _config(
        project,
        _service("db", env={"STARTUP_DELAY_S": "0.3"})
        + _service("api", depends_on=["db"])
        + _service("web", depends_on=["api"]),
    )
    with running_agent(project) as agent:
        agent.wait_healthy()
        starts = [name for event, name, _ in project.events() if event == "start"]
        assert starts == ["db", "api", "web"]
        assert agent.stop() == 0
    stops = [name for event, name, _ in project.events() if event == "stop"]
    assert stops == ["web", "api", "db"]


def test_status_reports_each_service(project: Project) -> None:
    _config(project, _service("api", version='"1.4.2"'))
    with running_agent(project) as agent:
        document = agent.wait_healthy()
        assert document["mesh"] == "test"
        (api,) = document["services"]
        assert api["name"] == "api"
        assert api["origin"] == "local"
        assert api["state"] == "running"
        assert api["health"] == "healthy"
        assert api["version"] == "1.4.2"
        assert pid_alive(api["pid"])
        assert api["url"] is not None
        # The service really listens on the port devmesh gave it.
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{api['port']}/health", timeout=5) as response:
            assert response.status == 200


def test_crashed_service_is_restarted_with_growing_backoff(project: Project) -> None:
    _config(project, _service("flaky", env={"EXIT_CODE": "3"}, restart='"on-failure"'))
    with running_agent(project) as agent:
        try:
            wait_for(
                lambda: len(project.events()) >= 4, timeout=20, what="four starts of the crashing service"
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\nservice: {agent.service('flaky')}\nlog:\n{agent.log()}") from None
        entry = agent.service("flaky")
        assert entry["state"] in ("crashed", "starting")
        assert entry["restarts"] >= 3
        assert "exited with code 3" in agent.log()
    times = [float(line.split()[3]) for line in project.events_file.read_text().splitlines()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 0.5 s, 1 s, 2 s: each wait at least the backoff, and growing.
    assert gaps[0] >= 0.45
    assert gaps[1] >= 0.95
    assert gaps[2] >= 1.9
    assert gaps[0] < gaps[1] < gaps[2]


def test_clean_exit_is_not_restarted_with_on_failure(project: Project) -> None:
    _config(project, _service("once", env={"EXIT_CODE": "0"}))
    with running_agent(project) as agent:
        wait_for(lambda: agent.service("once")["state"] == "stopped", what="the service to exit")
        time.sleep(0.8)  # longer than the first backoff: a restart would have happened by now
        assert len(project.events()) == 1


def test_never_policy_leaves_a_crashed_service_down(project: Project) -> None:
    _config(project, _service("broken", env={"EXIT_CODE": "2"}, restart='"never"'))
    with running_agent(project) as agent:
        wait_for(lambda: agent.service("broken")["state"] == "crashed", what="crashed state")
        entry = agent.service("broken")
        assert entry["detail"] == "exited with code 2"
        time.sleep(0.8)
        assert len(project.events()) == 1


def test_watch_restarts_on_file_change(project: Project) -> None:
    (project.root / "src").mkdir()
    source = project.root / "src" / "app.py"
    source.write_text("x = 1\n")
    _config(project, _service("api", watch='["src/*.py"]'))
    with running_agent(project) as agent:
        first = agent.wait_healthy()["services"][0]["pid"]
        (project.root / "src" / "notes.txt").write_text("not watched\n")
        time.sleep(0.6)
        assert agent.service("api")["pid"] == first
        source.write_text("x = 2\n")
        wait_for(
            lambda: (
                agent.service("api")["pid"] not in (None, first)
                and agent.service("api")["health"] == "healthy"
            ),
            what="a new process after the change",
        )
        assert not pid_alive(first)
        assert agent.service("api")["restarts"] == 1
        assert "files changed (src/app.py)" in agent.log()


def test_unhealthy_service_with_restart_always_is_restarted(project: Project) -> None:
    flag = project.root / "sick"
    _config(project, _service("api", env={"HEALTH_FAIL_FILE": str(flag)}, restart='"always"'))
    project.write(
        project.root.joinpath("devmesh.toml")
        .read_text()
        .replace('interval = "0.2s"', 'interval = "0.2s", unhealthy_after = 2')
    )
    with running_agent(project) as agent:
        first = agent.wait_healthy()["services"][0]["pid"]
        flag.write_text("")
        wait_for(
            lambda: agent.service("api")["pid"] not in (None, first), what="a restart after failing checks"
        )
        assert "api is unhealthy: GET /health answered 500" in agent.log()
        flag.unlink()
        agent.wait_healthy("api")


def test_service_started_elsewhere_is_checked_not_spawned(project: Project) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    _config(project, f"[services.db]\nport = {port}\n")
    try:
        with running_agent(project) as agent:
            wait_for(lambda: agent.service("db")["detail"], what="db probed")
            assert agent.service("db")["state"] == "stopped"
            assert agent.service("db")["health"] != "healthy"
            assert "port" in agent.service("db")["detail"]
            listener.listen()
            entry = agent.wait_healthy("db")["services"][0]
            assert entry["pid"] is None
            assert entry["state"] == "running"
            listener.close()
            wait_for(
                lambda: agent.service("db")["health"] == "unhealthy",
                timeout=10,
                what="db unhealthy once closed",
            )
            assert agent.service("db")["state"] == "stopped"
    finally:
        listener.close()


def test_cmd_health_check(project: Project) -> None:
    flag = project.root / "ready"
    project.write(
        f"""
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.worker]
command = "sleep 600"
health = {{ cmd = "test -f {flag}", interval = "0.2s" }}
"""
    )
    with running_agent(project) as agent:
        time.sleep(0.5)
        assert agent.service("worker")["health"] != "healthy"
        flag.write_text("")
        agent.wait_healthy("worker")


def test_ctrl_c_stops_everything_and_exits_zero(project: Project) -> None:
    _config(project, _service("api", env={"GRANDCHILD": "group"}) + _service("web", depends_on=["api"]))
    with running_agent(project) as agent:
        agent.wait_healthy()
        pids = [entry["pid"] for entry in agent.status()["services"]]
        assert agent.stop(signal.SIGINT) == 0
        assert "stopped" in agent.log()
        wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=5, what="the services gone")
        assert project.leftovers() == []
        assert not project.paths.agent_file.exists()


def test_sigkill_of_the_agent_leaves_no_child_alive(project: Project) -> None:
    _config(
        project,
        _service("api", env={"GRANDCHILD": "group"}) + _service("jobs", env={"GRANDCHILD": "session"}),
    )
    with running_agent(project) as agent:
        agent.wait_healthy()
        marked = project.leftovers()
        assert len(marked) >= 4  # two services and their two grandchildren
        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait(5)
        # The guardian notices at once and stops every process the agent started.
        wait_for(lambda: not project.leftovers(), timeout=8, what="the guardian to stop the children")
        # A process that is exiting no longer shows its marker but still has a /proc entry for a moment.
        wait_for(
            lambda: not any(pid_alive(pid) for pid in marked), timeout=8, what="every marked process gone"
        )


def test_next_up_stops_what_a_killed_agent_and_guardian_left(project: Project) -> None:
    import psutil

    _config(project, _service("api", env={"GRANDCHILD": "session"}))
    with running_agent(project, expect_clean=False) as agent:
        agent.wait_healthy()
        children = project.leftovers()
        guardians = [
            child.pid
            for child in psutil.Process(agent.process.pid).children()
            if "devmesh.supervisor.guardian" in " ".join(child.cmdline())
        ]
        assert len(guardians) == 1
        # Kill the agent and its guardian together, as `kill -9` of everything or an OOM killer might.
        for pid in [*guardians, agent.process.pid]:
            os.kill(pid, signal.SIGKILL)
        agent.process.wait(5)
    time.sleep(0.3)
    assert children
    assert all(pid_alive(pid) for pid in children)
    with running_agent(project) as second:
        second.wait_healthy()
        assert "left behind by an earlier devmesh agent" in second.log()
        for pid in children:
            assert not pid_alive(pid)
