"""Faults and scenarios through a real agent's proxy, measured on the client."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time

import pytest

from support import Project, bulk_project, devmesh, http, next_event, running_agent, wait_for


def write_project(project: Project, extra: str = "", proxy: str = "") -> int:
    return bulk_project(project, proxy=f'access_log = "off"\n{proxy}', extra=extra)


def timed(listen: int, target: str, **options: object) -> tuple[float, int, dict[str, str], bytes]:
    started = time.monotonic()
    status, headers, body = http(listen, f"bulk.localhost:{listen}", target, **options)  # type: ignore[arg-type]
    return time.monotonic() - started, status, headers, body


def test_a_delay_is_felt_by_the_client_only_where_it_matches(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        added = devmesh(
            "fault",
            "add",
            "slow",
            "--service",
            "bulk",
            "--delay",
            "400ms",
            "--path",
            "/health*",
            cwd=project.root,
        )
        assert added.returncode == 0, added.stderr
        took, status, headers, _ = timed(listen, "/health")
        assert status == 200 and 0.4 <= took < 1.5 and headers["x-devmesh-fault"] == "slow"
        took, status, headers, _ = timed(listen, "/other")
        assert status == 200 and took < 0.3 and "x-devmesh-fault" not in headers
        listed = json.loads(devmesh("fault", "list", "--json", cwd=project.root).stdout)
        assert listed[0]["name"] == "slow" and listed[0]["injected"] == 1 and listed[0]["source"] == "runtime"
        assert devmesh("fault", "rm", "slow", cwd=project.root).returncode == 0
        took, _, headers, _ = timed(listen, "/health")
        assert took < 0.3 and "x-devmesh-fault" not in headers


def test_an_error_rate_falls_within_binomial_bounds_and_is_counted(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        agent.client.post("/api/v1/faults", {"name": "flaky", "service": "bulk", "abort": 503, "rate": 0.3})
        count, rate = 400, 0.3
        statuses = [http(listen, f"bulk.localhost:{listen}", "/health")[0] for _ in range(count)]
        aborted = statuses.count(503)
        assert statuses.count(200) + aborted == count
        spread = 4.5 * math.sqrt(count * rate * (1 - rate))  # a false failure about once in 150,000 runs
        assert abs(aborted - count * rate) <= spread, f"{aborted} aborted of {count}"
        admin = agent.status()["agent"]["admin"]
        _, _, metrics = http(int(admin.rpartition(":")[2]), admin, "/metrics")
        assert f'devmesh_faults_injected_total{{fault="flaky"}} {float(aborted)}'.encode() in metrics


def test_an_outage_resets_the_connection(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        agent.client.post("/api/v1/faults", {"name": "gone", "service": "bulk", "outage": "reset"})
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: bulk.localhost:{listen}\r\n\r\n".encode())
            with pytest.raises(ConnectionResetError):
                sock.recv(1024)
        agent.client.post("/api/v1/faults/gone/disable", {})
        assert http(listen, f"bulk.localhost:{listen}", "/health")[0] == 200


def test_bandwidth_is_limited_on_the_response(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        size = 400_000
        took, status, _, body = timed(listen, f"/download?bytes={size}")
        assert status == 200 and len(body) == size and took < 0.5
        agent.client.post(
            "/api/v1/faults",
            {"name": "thin", "service": "bulk", "bandwidth": "200KB/s", "paths": ["/download"]},
        )
        took, status, headers, body = timed(listen, f"/download?bytes={size}")
        # 400 kB at 200 kB/s: 2 s, less the first tenth-of-a-second slice that leaves at once.
        assert status == 200 and len(body) == size and headers["x-devmesh-fault"] == "thin"
        assert 1.8 <= took <= 3.0, took


def test_header_matching_and_faults_a_request_asks_for(project: Project) -> None:
    listen = write_project(
        project,
        extra='[faults.chaos-only]\nservice = "bulk"\nabort = 500\nheaders = { "x-chaos" = "on" }\n',
        proxy="allow_fault_header = true",
    )
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        host = f"bulk.localhost:{listen}"
        assert http(listen, host, "/health")[0] == 200
        status, headers, _ = http(listen, host, "/health", {"X-Chaos": "on"})
        assert status == 500 and headers["x-devmesh-fault"] == "chaos-only"
        assert http(listen, host, "/health", {"X-Chaos": "off"})[0] == 200

        status, headers, _ = http(listen, host, "/health", {"X-DevMesh-Fault": "abort=418"})
        assert status == 418 and headers["x-devmesh-fault"] == "header"
        started = time.monotonic()
        assert http(listen, host, "/health", {"X-DevMesh-Fault": "delay=300ms"})[0] == 200
        assert time.monotonic() - started >= 0.3
        status, _, body = http(listen, host, "/health", {"X-DevMesh-Fault": "explode"})
        assert status == 400 and b"X-DevMesh-Fault takes" in body

        # Switched off at run time, and back on, without touching the file.
        assert devmesh("fault", "disable", "chaos-only", cwd=project.root).returncode == 0
        assert http(listen, host, "/health", {"X-Chaos": "on"})[0] == 200
        assert devmesh("fault", "enable", "chaos-only", cwd=project.root).returncode == 0
        assert http(listen, host, "/health", {"X-Chaos": "on"})[0] == 500


def test_a_request_may_not_ask_for_a_fault_unless_allowed(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        status, headers, _ = http(
            listen, f"bulk.localhost:{listen}", "/health", {"X-DevMesh-Fault": "abort=503"}
        )
        assert status == 200 and "x-devmesh-fault" not in headers


def test_a_scenario_ends_on_time_when_the_cli_that_started_it_is_killed(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        host = f"bulk.localhost:{listen}"
        started = time.monotonic()
        cli = subprocess.Popen(
            [sys.executable, "-m", "devmesh", "chaos", "run", "down:bulk", "--duration", "3s"],
            cwd=project.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: http(listen, host, "/health")[0] == 503, timeout=10, what="the outage")
            on_at = time.monotonic()
            cli.send_signal(signal.SIGKILL)  # the agent owns the timer
            cli.wait(5)
            assert http(listen, host, "/health")[0] == 503
            scenarios = agent.status()["scenarios"]
            assert scenarios[0]["name"] == "down:bulk" and 0 < scenarios[0]["remaining_s"] <= 3
            wait_for(
                lambda: http(listen, host, "/health")[0] == 200, timeout=10, what="the end of the outage"
            )
            ended = time.monotonic()
            # On for 3 s from when the agent started it (between `started` and `on_at`).
            assert ended - started >= 3.0 - 0.3 and ended - on_at <= 3.0 + 0.5
            assert agent.status()["scenarios"] == []
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()


def test_a_config_scenario_runs_its_faults_and_outages(project: Project) -> None:
    listen = write_project(
        project,
        extra="""
[faults.dormant-slow]
service = "bulk"
delay = "250ms"
enabled = false
[scenarios.rough-day]
faults = ["dormant-slow"]
duration = "30s"
""",
    )
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        assert timed(listen, "/health")[0] < 0.25
        result = devmesh("chaos", "run", "rough-day", "--detach", cwd=project.root)
        assert result.returncode == 0 and "scenario rough-day on (dormant-slow)" in result.stdout
        took, status, headers, _ = timed(listen, "/health")
        assert status == 200 and took >= 0.25 and headers["x-devmesh-fault"] == "dormant-slow"
        assert devmesh("chaos", "stop", "rough-day", cwd=project.root).returncode == 0
        assert timed(listen, "/health")[0] < 0.25
        unknown = devmesh("chaos", "run", "meteor", cwd=project.root)
        assert unknown.returncode == 2 and "no scenario named 'meteor'" in unknown.stderr


def test_fault_and_scenario_events_reach_the_stream(project: Project) -> None:
    from websockets.sync.client import connect

    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        admin = agent.status()["agent"]["admin"]
        with connect(f"ws://{admin}/api/v1/events", open_timeout=5) as stream:
            hello = json.loads(stream.recv(timeout=5))
            assert hello["status"]["faults"] == [] and hello["status"]["scenarios"] == []

            agent.client.post("/api/v1/faults", {"name": "boom", "service": "bulk", "abort": 502})
            added = next_event(stream, "fault")
            assert added["event"] == "added" and added["fault"] == "boom"
            assert [fault["name"] for fault in added["faults"]] == ["boom"]  # type: ignore[attr-defined]
            assert http(listen, f"bulk.localhost:{listen}", "/health")[0] == 502
            sample = next_event(stream, "traffic")
            while sample["faults_injected"] == {}:
                sample = next_event(stream, "traffic")
            assert sample["faults_injected"] == {"boom": 1}

            agent.client.post("/api/v1/scenarios/slow:bulk/run", {"duration": "0.5s"})
            started = next_event(stream, "scenario")
            assert started["event"] == "started" and started["scenario"] == "slow:bulk"
            ended = next_event(stream, "scenario", 3)
            assert ended["event"] == "ended" and ended["scenarios"] == []
