"""Metrics, logs, recent requests, replay and the events stream of a real agent, after real traffic."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from support import Project, bulk_project, devmesh, http, next_event, running_agent, wait_for


def write_project(project: Project, observe: str = "", proxy: str = "") -> int:
    return bulk_project(project, proxy=proxy, service='restart = "always"', extra=f"[observe]\n{observe}")


def scrape(admin: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    _host, _, port = admin.rpartition(":")
    code, _, body = http(int(port), admin, "/metrics")
    assert code == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == w for k, w in labels.items()))


def test_metrics_count_real_traffic_and_restarts(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        admin = agent.status()["agent"]["admin"]
        for _ in range(7):
            assert http(listen, f"bulk.localhost:{listen}", "/health")[0] == 200
        code, _, body = http(listen, f"bulk.localhost:{listen}", "/download?bytes=300000")
        assert code == 200 and len(body) == 300000
        assert http(listen, f"nothing.localhost:{listen}", "/")[0] == 404

        samples = scrape(admin)
        assert value(samples, "devmesh_requests_total", service="bulk", origin="local", code="200") == 8
        assert value(samples, "devmesh_requests_total", service="-", code="404") == 1
        assert value(samples, "devmesh_request_duration_seconds_count", service="bulk", origin="local") == 8
        inf = value(samples, "devmesh_request_duration_seconds_bucket", service="bulk", le="+Inf")
        sub_second = value(samples, "devmesh_request_duration_seconds_bucket", service="bulk", le="1.0")
        assert inf == 8 and sub_second == 8  # a loopback request is well under a second
        assert 0 < value(samples, "devmesh_request_duration_seconds_sum", service="bulk") < 8
        assert value(samples, "devmesh_service_up", service="bulk", origin="local") == 1
        assert value(samples, "devmesh_restarts_total", service="bulk") == 0
        assert value(samples, "devmesh_peers") == 0

        agent.client.post("/api/v1/services/bulk/restart", {})
        wait_for(
            lambda: value(scrape(admin), "devmesh_restarts_total", service="bulk") == 1,
            timeout=10,
            what="the restart counted",
        )
        agent.wait_healthy("bulk")


def test_access_log_and_agent_records_are_json_lines_with_levels_per_component(project: Project) -> None:
    listen = write_project(project)
    # Warnings only, except the supervisor's records: the agent's own "proxy on ..." is filtered out.
    with running_agent(project, env={"DEVMESH_LOG": "warning,supervisor=info"}) as agent:
        agent.wait_healthy("bulk")
        http(listen, f"bulk.localhost:{listen}", "/health", headers={"X-DevMesh-Trace-ID": "trace-one"})
        access = project.paths.log_dir / "access.log"
        wait_for(
            lambda: access.exists() and "trace-one" in access.read_text(), timeout=5, what="the access log"
        )
        lines = [json.loads(line) for line in access.read_text().splitlines()]
        line = next(entry for entry in lines if entry["trace_id"] == "trace-one")
        assert line["method"] == "GET" and line["path"] == "/health" and line["status"] == 200
        assert line["service"] == "bulk" and line["origin"] == "local" and line["response_bytes"] == 2
        assert isinstance(line["id"], int) and line["duration_ms"] >= 0
        assert "headers" not in line and "request_headers" not in line  # credentials never reach the file

        records = [
            json.loads(raw) for raw in (project.paths.log_dir / "devmesh.log").read_text().splitlines()
        ]
        started = [record for record in records if record.get("event") == "service_started"]
        assert started and started[0]["service"] == "bulk" and started[0]["component"] == "supervisor"
        assert started[0]["pid"] > 0 and started[0]["level"] == "info"
        assert not any(record["message"].startswith("proxy on") for record in records)

        os.kill(agent.service("bulk")["pid"], signal.SIGKILL)

        def crashed() -> dict[str, Any] | None:
            for raw in (project.paths.log_dir / "devmesh.log").read_text().splitlines():
                record = json.loads(raw)
                if record.get("event") == "service_crashed":
                    return dict(record)
            return None

        record = wait_for(crashed, timeout=5, what="the crash record")
        assert record["level"] == "warning" and record["reason"] == "killed by signal 9"
        assert "killed by signal 9" in devmesh("logs", "devmesh", "-n", "50", cwd=project.root).stdout


def test_a_bad_devmesh_log_is_refused_with_what_to_write(project: Project) -> None:
    write_project(project)
    result = devmesh("up", cwd=project.root, env={"DEVMESH_LOG": "proxy=loud"}, timeout=30)
    assert result.returncode != 0
    assert "DEVMESH_LOG" in result.stderr and "'loud' is not a level" in result.stderr
    assert not project.leftovers()


def test_the_access_log_can_go_to_the_terminal(project: Project) -> None:
    listen = write_project(project, observe='access_log_path = "-"', proxy='access_log = "text"')
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        http(listen, f"bulk.localhost:{listen}", "/health?from=terminal")
        wait_for(lambda: "/health?from=terminal 200 bulk local" in agent.log(), timeout=5, what="the line")
        line = next(text for text in agent.log().splitlines() if "from=terminal" in text)
        assert line.startswith("access ") and "GET bulk.localhost/health" in line
        assert not (project.paths.log_dir / "access.log").exists()


def test_recent_requests_filter_and_replay(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        http(listen, f"bulk.localhost:{listen}", "/health", headers={"Authorization": "Bearer secret-value"})
        http(listen, f"bulk.localhost:{listen}", "/missing-route", headers={"X-DevMesh-Trace-ID": "find-me"})
        http(listen, f"nowhere.localhost:{listen}", "/")
        http(listen, f"bulk.localhost:{listen}", "/upload", method="POST", body=b"x" * 10)

        client = agent.client
        everything = wait_for(
            lambda: client.get("/api/v1/requests") if len(client.get("/api/v1/requests")) >= 4 else None,
            timeout=5,
            what="4 requests",
        )
        first = everything[0]
        assert first["path"] == "/health" and first["status"] == 200
        headers = dict(first["request_headers"])
        assert headers["Authorization"] == "[masked]" and headers["Host"] == f"bulk.localhost:{listen}"
        assert [entry["host"] for entry in client.get("/api/v1/requests?status=4xx")] == ["nowhere.localhost"]
        assert client.get("/api/v1/requests?service=bulk&limit=1")[0]["method"] == "POST"
        traced = client.get("/api/v1/requests?trace_id=find-me")
        assert [entry["path"] for entry in traced] == ["/missing-route"]
        assert client.get(f"/api/v1/requests/{first['id']}")["path"] == "/health"

        listed = devmesh("requests", "--service", "bulk", cwd=project.root)
        assert listed.returncode == 0 and "/missing-route" in listed.stdout and "nowhere" not in listed.stdout

        replayed = devmesh("replay", str(first["id"]), "--json", cwd=project.root)
        assert replayed.returncode == 0, replayed.stderr
        result = json.loads(replayed.stdout)
        assert result["status"] == 200 and result["served_by"] == "local/bulk" and result["id"] > first["id"]
        again = client.get(f"/api/v1/requests/{result['id']}")
        # The original headers, credentials included, went again (shown masked); a new trace of its own.
        assert dict(again["request_headers"])["Authorization"] == "[masked]"
        assert dict(again["request_headers"])["X-DevMesh-Replay-Of"] == str(first["id"])
        assert again["trace_id"] != first["trace_id"]

        upload = next(entry for entry in everything if entry["method"] == "POST")
        refused = devmesh("replay", str(upload["id"]), cwd=project.root)
        assert refused.returncode == 2 and "10-byte body" in refused.stderr
        gone = devmesh("replay", "999999", cwd=project.root)
        assert gone.returncode == 2 and "no recent request 999999" in gone.stderr


def test_the_events_stream_delivers_a_crash_within_a_second(project: Project) -> None:
    listen = write_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        admin = agent.status()["agent"]["admin"]
        with connect(f"ws://{admin}/api/v1/events", open_timeout=5) as stream:
            hello = json.loads(stream.recv(timeout=5))
            assert hello["type"] == "hello"
            [bulk] = hello["status"]["services"]
            assert bulk["name"] == "bulk" and bulk["state"] == "running" and bulk["health"] == "healthy"

            http(listen, f"bulk.localhost:{listen}", "/health", headers={"X-DevMesh-Trace-ID": "in-a-sample"})
            sample = next_event(
                stream, lambda event: event["type"] == "traffic" and "bulk" in event["services"], 3
            )
            assert sample["services"]["bulk"]["requests"] == 1 and sample["services"]["bulk"]["rps"] > 0
            assert sample["requests"][0]["trace_id"] == "in-a-sample"

            killed_at = time.monotonic()
            os.kill(bulk["pid"], signal.SIGKILL)
            crash = next_event(
                stream,
                lambda event: event["type"] == "service" and event["service"]["state"] == "crashed",
                1.0,
            )
            assert time.monotonic() - killed_at < 1.0
            assert crash["previous"] == {"state": "running", "health": "healthy"}
            assert crash["service"]["detail"] == "killed by signal 9"
            assert crash["revision"] > hello["status"]["agent"]["revision"]
            back = next_event(
                stream,
                lambda event: event["type"] == "service" and event["service"]["health"] == "healthy",
                10,
            )
            assert back["service"]["restarts"] == 1 and back["service"]["pid"] != bulk["pid"]

            client = agent.client
            client.post("/api/v1/routes/bulk", {"pin": "local"})
            route = next_event(stream, "route", 2)
            assert route["service"] == "bulk" and route["pin"] == "local"
            pinned = next_event(stream, lambda event: event["type"] == "service", 2)
            assert pinned["service"]["pin"] == "local"


def test_the_events_stream_refuses_pages_of_other_origins(project: Project) -> None:
    write_project(project)
    with running_agent(project) as agent:
        admin = agent.status()["agent"]["admin"]
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://{admin}/api/v1/events", origin="http://evil.example", open_timeout=5)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        with connect(f"ws://{admin}/api/v1/events", origin=f"http://{admin}", open_timeout=5) as stream:  # type: ignore[arg-type]
            assert json.loads(stream.recv(timeout=5))["type"] == "hello"
