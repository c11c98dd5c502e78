"""The CLI as a user runs it, in fresh processes: up --detach, status, logs, run/stop/restart, down, init."""

from __future__ import annotations

import json

from support import TINY_COMMAND, Project, devmesh, pid_alive, wait_for

CONFIG = f"""
[mesh]
name = "cli"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.api]
command = "{TINY_COMMAND}"
version = "2.0.0"
health = {{ http = "/health", interval = "0.2s" }}
[services.web]
command = "{TINY_COMMAND}"
depends_on = ["api"]
health = {{ http = "/health", interval = "0.2s" }}
"""


def test_detached_lifecycle(project: Project) -> None:
    project.write(CONFIG)
    try:
        result = devmesh("up", "--detach", cwd=project.root)
        assert result.returncode == 0, result.stderr
        assert "healthy" in result.stdout
        assert project.paths.pid_file.exists()
        assert (project.paths.root / "agent.log").exists()

        status = devmesh("status", "--json", cwd=project.root)
        assert status.returncode == 0
        document = json.loads(status.stdout)
        assert document["mesh"] == "cli"
        entries = {entry["name"]: entry for entry in document["services"]}
        assert set(entries) == {"api", "web"}
        for key in ("name", "origin", "state", "health", "pid", "port", "url", "version"):
            assert key in entries["api"]
        assert entries["api"]["version"] == "2.0.0"
        assert document["peers"] == []

        table = devmesh("status", cwd=project.root)
        assert "api" in table.stdout and "healthy" in table.stdout

        again = devmesh("up", "--detach", cwd=project.root)
        assert again.returncode == 1
        assert "already running" in again.stderr

        logs = devmesh("logs", "api", cwd=project.root)
        assert "listening on" in logs.stdout
        merged = devmesh("logs", cwd=project.root)
        assert "api " in merged.stdout and "web " in merged.stdout

        api_pid = entries["api"]["pid"]
        assert devmesh("restart", "api", cwd=project.root).returncode == 0
        wait_for(
            lambda: (
                json.loads(devmesh("status", "--json", cwd=project.root).stdout)["services"][0]["pid"]
                not in (None, api_pid)
            ),
            what="a new api process",
        )
        assert devmesh("stop", "web", cwd=project.root).returncode == 0
        web = json.loads(devmesh("status", "--json", cwd=project.root).stdout)["services"][1]
        assert web["state"] == "stopped"
        assert devmesh("run", "web", cwd=project.root).returncode == 0
        wait_for(
            lambda: (
                json.loads(devmesh("status", "--json", cwd=project.root).stdout)["services"][1]["health"]
                == "healthy"
            ),
            what="web healthy again",
        )
        unknown = devmesh("restart", "nope", cwd=project.root)
        assert unknown.returncode == 2
        assert "nope" in unknown.stderr
    finally:
        down = devmesh("down", cwd=project.root)
    assert down.returncode == 0, down.stderr
    assert not project.paths.pid_file.exists()
    assert not pid_alive(api_pid)
    assert project.leftovers() == []
    offline = devmesh("status", "--json", cwd=project.root)
    assert json.loads(offline.stdout)["agent"] is None


def test_status_works_from_a_subfolder(project: Project) -> None:
    project.write(CONFIG)
    (project.root / "deep" / "er").mkdir(parents=True)
    result = devmesh("status", "--json", cwd=project.root / "deep" / "er")
    assert result.returncode == 0
    assert json.loads(result.stdout)["mesh"] == "cli"


def test_broken_config_names_file_line_and_key(project: Project) -> None:
    project.write(
        """
[mesh]
name = "x"

[services.api]
command = "run"
helth = { http = "/health" }
"""
    )
    result = devmesh("up", cwd=project.root)
    assert result.returncode == 2
    assert "devmesh.toml:7: services.api.helth: unknown key" in result.stderr
    assert 'did you mean "health"?' in result.stderr
    assert project.leftovers() == []


def test_bad_value_names_the_key(project: Project) -> None:
    project.write('[services.api]\ncommand = "run"\nrestart = "sometimes"\n')
    result = devmesh("status", cwd=project.root)
    assert result.returncode == 2
    assert "devmesh.toml:3: services.api.restart" in result.stderr
    assert "'always', 'on-failure' or 'never'" in result.stderr


def test_unknown_service_on_up_is_a_usage_error(project: Project) -> None:
    project.write(CONFIG)
    result = devmesh("up", "nope", "--detach", cwd=project.root)
    assert result.returncode == 2
    assert "nope" in result.stderr


def test_up_subset_starts_dependencies_too(project: Project) -> None:
    project.write(CONFIG)
    try:
        assert devmesh("up", "web", "--detach", cwd=project.root).returncode == 0
        document = json.loads(devmesh("status", "--json", cwd=project.root).stdout)
        assert {entry["name"]: entry["health"] for entry in document["services"]} == {
            "api": "healthy",
            "web": "healthy",
        }
    finally:
        devmesh("down", cwd=project.root)


def test_no_config_is_a_usage_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = devmesh("status", cwd=tmp_path)
    assert result.returncode == 2
    assert "devmesh init" in result.stderr


def test_help_and_version() -> None:
    from pathlib import Path

    result = devmesh("--help", cwd=Path.cwd())
    assert result.returncode == 0
    for command in ("up", "down", "status", "logs", "run", "stop", "restart", "init"):
        assert command in result.stdout
    version = devmesh("--version", cwd=Path.cwd())
    assert version.stdout.startswith("devmesh ")
    usage = devmesh("frobnicate", cwd=Path.cwd())
    assert usage.returncode == 2


def test_logs_follow_prints_new_lines(project: Project) -> None:
    import os
    import signal
    import subprocess
    import sys

    project.write(CONFIG)
    try:
        assert devmesh("up", "--detach", cwd=project.root).returncode == 0
        follower = subprocess.Popen(
            [sys.executable, "-m", "devmesh", "logs", "-f", "-n", "1"],
            cwd=project.root,
            env={**os.environ, "NO_COLOR": "1"},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert follower.stdout is not None
            follower.stdout.readline()  # the last earlier line: from here on it is following
            assert devmesh("restart", "api", cwd=project.root).returncode == 0
            seen = []
            for line in follower.stdout:
                seen.append(line)
                if line.startswith("api") and "listening on" in line:
                    break
            assert any(line.startswith("devmesh") and "api restarting" in line for line in seen)
        finally:
            # Our end of its pipe first: a follower blocked writing to a full pipe gets EPIPE and exits.
            if follower.stdout is not None:
                follower.stdout.close()
            follower.send_signal(signal.SIGINT)
            try:
                follower.wait(10)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
                raise
    finally:
        devmesh("down", cwd=project.root)


def test_detach_reports_an_agent_that_fails_to_start(project: Project) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        project.write(CONFIG.replace('admin = "127.0.0.1:0"', f'admin = "127.0.0.1:{port}"'))
        result = devmesh("up", "--detach", cwd=project.root)
        assert result.returncode == 1
        assert "cannot listen on" in result.stderr
        assert "agent.log" in result.stderr
    finally:
        holder.close()
    assert project.leftovers() == []
