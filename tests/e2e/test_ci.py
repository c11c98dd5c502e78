"""`devmesh wait` and `devmesh check` as CI runs them: real agents, real services, JUnit XML read back."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support import TINY_COMMAND, AgentProcess, Project, devmesh, running_agent, wait_for

HEALTH = '{ http = "/health", interval = "0.2s" }'

GOOD = f"""
[mesh]
name = "preflight"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.api]
command = "{TINY_COMMAND}"
version = "2.1.0"
requires = "^2"
routes = ["/api/*"]
health = {HEALTH}
[services.web]
command = "{TINY_COMMAND}"
depends_on = ["api"]
health = {HEALTH}
"""


def broken_config(fail_file: Path) -> str:
    """api: healthy, but its version is outside its requires; shaky: healthy by TCP, but its route
    answers 500; sick: never healthy. Each is one check's failure, and nothing else fails."""
    return f"""
[mesh]
name = "broken"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.api]
command = "{TINY_COMMAND}"
version = "2.1.0"
requires = "^3"
health = {HEALTH}
[services.shaky]
command = "{TINY_COMMAND}"
env = {{ HEALTH_FAIL_FILE = "{fail_file}" }}
routes = ["/health"]
health = {{ tcp = true, interval = "0.2s" }}
[services.sick]
command = "{TINY_COMMAND}"
env = {{ HEALTH_FAIL_FILE = "{fail_file}" }}
health = {HEALTH}
"""


# -- JUnit XML, as the Jenkins / Ant schema (junit-10.xsd) has it ----------------------------------

_DECIMAL = re.compile(r"^\d+(\.\d+)?$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")  # ISO 8601 without a zone, as the XSD wants


def read_junit(path: Path) -> list[dict[str, Any]]:
    """Parse and validate a JUnit file against the schema's structure; the testcases as dicts."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = list(root)
    assert [suite.tag for suite in suites] == ["testsuite"]
    suite = suites[0]
    for required in ("name", "tests", "failures", "errors"):
        assert required in suite.attrib, f"testsuite needs {required}"
    assert suite.get("name") == "devmesh"
    for counter in ("tests", "failures", "errors", "skipped"):
        assert suite.get(counter, "0").isdigit()
        assert root.get(counter) == suite.get(counter)
    assert _DECIMAL.match(suite.get("time", ""))
    assert _TIMESTAMP.match(suite.get("timestamp", ""))
    assert suite.get("hostname")
    cases: list[dict[str, Any]] = []
    for case in suite:
        assert case.tag == "testcase", case.tag
        assert case.get("name") and case.get("classname"), case.attrib
        assert case.get("classname", "").startswith("devmesh.")
        assert _DECIMAL.match(case.get("time", "")), case.attrib
        children = [child.tag for child in case]
        assert set(children) <= {"failure", "error", "skipped", "system-out", "system-err"}, children
        outcomes = [tag for tag in children if tag in ("failure", "error", "skipped")]
        assert len(outcomes) <= 1
        entry: dict[str, Any] = {
            "classname": case.get("classname"),
            "name": case.get("name"),
            "result": outcomes[0] if outcomes else "passed",
            "message": "",
            "text": "",
        }
        if outcomes:
            element = case.find(outcomes[0])
            assert element is not None
            assert element.get("message"), f"{outcomes[0]} without a message in {case.attrib}"
            if outcomes[0] != "skipped":
                assert element.get("type")
            entry["message"] = element.get("message", "")
            entry["text"] = element.text or ""
        out = case.find("system-out")
        entry["note"] = out.text if out is not None else ""
        cases.append(entry)
    assert int(suite.get("tests", "-1")) == len(cases)
    assert int(suite.get("failures", "-1")) == sum(c["result"] == "failure" for c in cases)
    assert int(suite.get("errors", "-1")) == sum(c["result"] == "error" for c in cases)
    assert int(suite.get("skipped", "-1")) == sum(c["result"] == "skipped" for c in cases)
    return cases


def by_check(cases: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(case["classname"].removeprefix("devmesh."), case["name"]): case for case in cases}


def only(cases: list[dict[str, Any]], classname: str, start: str) -> dict[str, Any]:
    found = [c for c in cases if c["classname"] == f"devmesh.{classname}" and c["name"].startswith(start)]
    assert len(found) == 1, (classname, start, [c["name"] for c in cases])
    return found[0]


# -- check -------------------------------------------------------------------------------------------


def test_check_starts_the_mesh_passes_writes_junit_and_stops_what_it_started(project: Project) -> None:
    project.write(GOOD)
    junit = project.root / "reports" / "devmesh-junit.xml"
    result = devmesh("check", "--junit", str(junit), "--timeout", "30s", cwd=project.root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "0 failed" in result.stdout
    cases = read_junit(junit)
    assert all(case["result"] == "passed" for case in cases), cases
    names = [(case["classname"], case["name"]) for case in cases]
    assert names[0] == ("devmesh.config", "devmesh.toml")
    assert ("devmesh.agent", "start") in names and names[-1] == ("devmesh.agent", "stop")
    assert ("devmesh.health", "api") in names and ("devmesh.health", "web") in names
    assert only(cases, "smoke", "api GET http://api.localhost:")["name"].endswith("/health")
    assert only(cases, "smoke", "api GET http://localhost:")["name"].endswith("/api/")  # the route
    assert only(cases, "smoke", "web GET http://web.localhost:")
    assert ("devmesh.versions", "api") in names
    assert ("devmesh.versions", "web") not in names  # no requires, nothing to check
    # It started the agent, so it stopped it: nothing left.
    assert not project.paths.agent_file.exists()
    assert project.leftovers() == []


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    root = tmp_path_factory.mktemp("broken")
    fail_file = root / "health-fails"
    fail_file.write_text("x")
    project = Project(root.resolve())
    project.write(broken_config(fail_file))
    with running_agent(project) as agent:
        agent.wait_healthy("api", "shaky")
        yield agent


def test_check_fails_for_the_right_reasons(broken: AgentProcess) -> None:
    root = broken.project.root
    pid = broken.process.pid
    junit = root / "junit.xml"
    result = devmesh("check", "--junit", str(junit), "--timeout", "2s", cwd=root)
    assert result.returncode == 1, result.stdout + result.stderr
    cases = read_junit(junit)
    checks = by_check(cases)

    # The agent was running: its ports are checked, and it is neither started nor stopped.
    assert not any(c["classname"] == "devmesh.agent" for c in cases)
    assert checks[("config", "devmesh.toml")]["result"] == "passed"
    ports = [c for c in cases if c["classname"] == "devmesh.ports"]
    assert {c["name"].split()[0] for c in ports} == {"admin", "listen"}
    assert all(c["result"] == "passed" for c in ports)

    # sick never became healthy: a health failure that says what to do; its smoke is not run.
    sick = checks[("health", "sick")]
    assert sick["result"] == "failure"
    assert "sick is not healthy after 2s" in sick["message"]
    assert "devmesh logs sick" in sick["text"]
    assert only(cases, "smoke", "sick ")["result"] == "skipped"
    assert checks[("health", "api")]["result"] == "passed"
    assert checks[("health", "shaky")]["result"] == "passed"

    # shaky is healthy (TCP), its host answers, but its route answers 500: that smoke alone fails.
    assert only(cases, "smoke", "shaky GET http://shaky.localhost:")["result"] == "passed"
    route = only(cases, "smoke", "shaky GET http://localhost:")
    assert route["result"] == "failure"
    assert "answered 500 from local/shaky" in route["message"]
    assert only(cases, "smoke", "api GET")["result"] == "passed"

    # api runs 2.1.0 where requires says ^3.
    version = checks[("versions", "api")]
    assert version["result"] == "failure"
    assert "2.1.0" in version["message"] and "'^3'" in version["message"]
    assert "requires" in version["text"]

    failures = sorted((c["classname"], c["name"].split()[0]) for c in cases if c["result"] == "failure")
    assert failures == [("devmesh.health", "sick"), ("devmesh.smoke", "shaky"), ("devmesh.versions", "api")]
    # The terminal says the same, with what to do.
    assert "FAILED devmesh.versions api" in result.stdout
    assert "3 failed" in result.stdout

    assert broken.process.poll() is None and broken.client.record.pid == pid  # still running

    as_json = devmesh("check", "--json", "--timeout", "0.5s", cwd=root)
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["ok"] is False and document["failures"] == 3
    assert {check["result"] for check in document["checks"]} == {"passed", "failed", "skipped"}


def test_wait_names_what_is_not_healthy(broken: AgentProcess) -> None:
    root = broken.project.root
    began = time.monotonic()
    result = devmesh("wait", "--healthy", "--timeout", "1s", cwd=root)
    assert result.returncode == 1
    assert time.monotonic() - began < 10
    assert "not healthy after 1s: sick" in result.stderr
    assert "  sick: starting, unknown: GET /health answered 500" in result.stderr  # the agent's reason
    assert "api:" not in result.stderr and "shaky:" not in result.stderr

    only_healthy = devmesh("wait", "api", "shaky", "--healthy", "--timeout", "5s", cwd=root)
    assert only_healthy.returncode == 0, only_healthy.stderr
    assert "api, shaky healthy" in only_healthy.stdout
    running = devmesh("wait", "api", "shaky", "--timeout", "5s", cwd=root)
    assert running.returncode == 0, running.stderr
    assert "api, shaky running" in running.stdout
    # Running means its check passed once: sick's never did, so it is still "starting".
    not_running = devmesh("wait", "--timeout", "0.5s", cwd=root)
    assert not_running.returncode == 1
    assert "not running after 0.5s: sick" in not_running.stderr

    typo = devmesh("wait", "apii", "--timeout", "30s", cwd=root)
    assert typo.returncode == 2
    assert "no service named 'apii'" in typo.stderr


def test_config_error_is_exit_2_and_a_junit_failure_naming_file_line_key(project: Project) -> None:
    project.write('[mesh]\nname = "x"\n\n[services.api]\ncommand = "run"\nhelth = { http = "/health" }\n')
    junit = project.root / "junit.xml"
    result = devmesh("check", "--junit", str(junit), cwd=project.root)
    assert result.returncode == 2
    cases = read_junit(junit)
    assert len(cases) == 1
    config = cases[0]
    assert (config["classname"], config["name"], config["result"]) == (
        "devmesh.config",
        "devmesh.toml",
        "failure",
    )
    assert "devmesh.toml:6: services.api.helth: unknown key" in config["message"]
    assert 'did you mean "health"?' in config["text"]
    assert not project.paths.agent_file.exists()


def test_a_taken_port_fails_ports_and_starts_nothing(project: Project) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        project.write(GOOD.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
        junit = project.root / "junit.xml"
        result = devmesh("check", "--junit", str(junit), cwd=project.root)
    assert result.returncode == 1
    cases = read_junit(junit)
    listen = by_check(cases)[("ports", f"listen 127.0.0.1:{port}")]
    assert listen["result"] == "failure"
    assert "is not free" in listen["message"]
    assert f"pid {os.getpid()}" in listen["message"]  # who holds it
    assert by_check(cases)[("ports", "admin 127.0.0.1:0")]["result"] == "passed"
    assert [c["result"] for c in cases if c["classname"] == "devmesh.health"] == ["skipped", "skipped"]
    assert [c["result"] for c in cases if c["result"] == "failure"] == ["failure"]  # the root cause only
    assert not project.paths.agent_file.exists()
    assert project.leftovers() == []


def test_no_start_fails_when_no_agent_runs(project: Project) -> None:
    project.write(GOOD)
    result = devmesh("check", "--no-start", "--json", cwd=project.root)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    failed = [c for c in document["checks"] if c["result"] == "failed"]
    assert [(c["check"], c["name"]) for c in failed] == [("devmesh.agent", "running")]
    assert "devmesh up --detach" in failed[0]["hint"]
    assert not project.paths.agent_file.exists()


# -- wait --------------------------------------------------------------------------------------------


def test_wait_without_an_agent_times_out_naming_it(project: Project) -> None:
    project.write(GOOD)
    began = time.monotonic()
    result = devmesh("wait", "--timeout", "500ms", cwd=project.root)
    assert result.returncode == 1
    assert 0.5 <= time.monotonic() - began < 10
    assert "no devmesh agent answered" in result.stderr and "devmesh up --detach" in result.stderr


def test_wait_follows_an_agent_that_starts_after_it(project: Project) -> None:
    # web takes 2.5 s to listen: the agent's admin API (up after at most 2 s) answers while web is still
    # starting, so wait sees it become healthy on the events stream.
    project.write(
        GOOD.replace('depends_on = ["api"]', 'depends_on = ["api"]\nenv = { STARTUP_DELAY_S = "2.5" }')
    )
    waiter = subprocess.Popen(
        [sys.executable, "-m", "devmesh", "wait", "--healthy", "--timeout", "40s"],
        cwd=project.root,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.3)  # wait is waiting for an agent that is not there yet
        assert waiter.poll() is None
        # Returns before web is healthy (exit 1); the agent keeps running.
        up = devmesh("up", "--detach", "--timeout", "0.5", cwd=project.root)
        assert up.returncode == 0 or "the agent keeps running" in up.stderr, up.stderr
        out, err = waiter.communicate(timeout=40)
        assert waiter.returncode == 0, err
        assert re.match(r"mesh preflight: api, web healthy \(\d+\.\d+s\)", out), out
        status = json.loads(devmesh("status", "--json", cwd=project.root).stdout)
        assert {entry["health"] for entry in status["services"]} == {"healthy"}
    finally:
        if waiter.poll() is None:
            waiter.send_signal(signal.SIGTERM)
        waiter.communicate(timeout=10)  # reaps it and closes its pipes
        # The agent writes its record once its admin API is up: `down` needs it to find the agent.
        wait_for(lambda: project.paths.agent_file.exists(), timeout=15, what="the agent record")
        devmesh("down", cwd=project.root)
    assert project.leftovers() == []


def test_help_has_examples() -> None:
    for command in ("wait", "check"):
        result = devmesh(command, "--help", cwd=Path.cwd())
        assert result.returncode == 0
        assert "Examples:" in result.stdout and f"devmesh {command}" in result.stdout
    listed = devmesh("--help", cwd=Path.cwd())
    assert "wait" in listed.stdout and "check" in listed.stdout


def test_bad_timeout_is_a_usage_error(project: Project) -> None:
    project.write(GOOD)
    result = devmesh("wait", "--timeout", "soon", cwd=project.root)
    assert result.returncode == 2
    assert "is not a duration" in result.stderr


# -- the smoke decisions, against a stand-in for the proxy -------------------------------------------


class _StandIn(BaseHTTPRequestHandler):
    """Answers as the proxy would: with X-DevMesh-Served-By when a service answered, without when
    devmesh answered itself (its JSON error page)."""

    answers = {
        "/teapot": (418, "local/teapot@1.0", b"short and stout"),
        "/nothing": (
            404,
            "",
            b'{"status": 404, "error": "Not Found", "message": "no service answers at nope.localhost"}',
        ),
        "/broken": (
            503,
            "",
            b'{"status": 503, "message": "api is not running", "hint": "`devmesh run api`"}',
        ),
        "/ok": (200, "local/ok", b"{}"),
    }

    def do_GET(self) -> None:
        status, served_by, body = self.answers[self.path]
        self.send_response(status)
        if served_by:
            self.send_header("X-DevMesh-Served-By", served_by)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_smoke_decisions(project: Project) -> None:
    from devmesh.config import load_config
    from devmesh.preflight.report import FAILED, PASSED, Report
    from devmesh.preflight.smoke import check_smoke

    services = "".join(
        f'[services.{name}]\ncommand = "x"\nhealth = {{ http = "/{path}" }}\n'
        for name, path in (("teapot", "teapot"), ("nothing", "nothing"), ("broken", "broken"), ("ok", "ok"))
    )
    loaded = load_config(project.write(services))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        entries = {
            name: {"name": name, "url": f"http://{name}.localhost:{port}", "hosts": [name]}
            for name in ("teapot", "nothing", "broken", "ok")
        }
        report = Report()
        check_smoke(loaded, entries, set(), f"127.0.0.1:{port}", report)
    finally:
        server.shutdown()
        server.server_close()
    results = {case.name.split()[0]: case for case in report.results}
    assert results["ok"].outcome == PASSED
    # A 4xx from the service: the mesh reaches it; a pass, with a note in the JUnit system-out.
    assert results["teapot"].outcome == PASSED
    assert "418 from local/teapot@1.0" in results["teapot"].note
    # A 4xx from devmesh itself: nothing routes there.
    assert results["nothing"].outcome == FAILED
    assert "from devmesh itself: nothing routes there" in results["nothing"].message
    assert "no service answers at nope.localhost" in results["nothing"].details
    # A 5xx: failed, with devmesh's own explanation and hint.
    assert results["broken"].outcome == FAILED
    assert "answered 503 from devmesh" in results["broken"].message
    assert (
        "api is not running" in results["broken"].details and "devmesh run api" in results["broken"].details
    )

    refused = Report()
    check_smoke(loaded, {"ok": entries["ok"]}, set(), f"127.0.0.1:{port}", refused)  # the server is gone
    assert refused.results[0].outcome == FAILED
    assert "failed: ConnectionRefusedError" in refused.results[0].message
