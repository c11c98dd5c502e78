"""The pytest plugin, used as a user uses it: an inner pytest session (pytester, in a fresh process) on a
small project whose tests ask for `devmesh_mesh` and call the service through the proxy."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from support import TINY_COMMAND, Project, running_agent, wait_for

pytest_plugins = ["pytester"]

CONFIG = f"""
[mesh]
name = "plugin"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.api]
command = "{TINY_COMMAND}"
version = "1.0.0"
health = {{ http = "/health", interval = "0.2s" }}
"""

INNER_TESTS = """
import json
import os
import urllib.request


def test_calls_the_api_through_the_mesh(devmesh_mesh):
    url = devmesh_mesh.url("api")
    assert url.startswith("http://api.localhost:")
    # *.localhost resolves to the proxy in the test process, even where the system's resolver does not.
    with urllib.request.urlopen(url + "/hello", timeout=10) as response:
        assert response.status == 200
        assert response.headers["X-DevMesh-Served-By"].startswith("local/api")
        body = json.load(response)
    assert (body["service"], body["path"]) == ("api", "/hello")


def test_the_mesh_is_the_same_for_the_whole_session(devmesh_mesh):
    assert devmesh_mesh.services == ["api"]
    assert os.environ["DEVMESH_API_URL"] == devmesh_mesh.url("api")
    status = devmesh_mesh.status()
    assert status["services"][0]["health"] == "healthy"
    assert devmesh_mesh.admin.get("/healthz")["status"] == "ok"
    (devmesh_mesh.project_dir / "inner-session.json").write_text(json.dumps({
        "agent": status["agent"]["pid"], "api": status["services"][0]["pid"], "started": devmesh_mesh.started,
    }))
"""


def _inner_project(pytester: pytest.Pytester) -> Project:
    project = Project(pytester.path.resolve())
    project.write(CONFIG)
    return project


def test_the_entry_point_is_installed() -> None:
    found = [ep for ep in entry_points(group="pytest11") if ep.name == "devmesh"]
    assert [ep.value for ep in found] == ["devmesh.testing.pytest_plugin"], (
        "reinstall devmesh (pip install -e .) to register its pytest11 entry point"
    )


def test_a_session_brings_the_mesh_up_and_down(pytester: pytest.Pytester) -> None:
    project = _inner_project(pytester)
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=50)
    result.assert_outcomes(passed=2)
    seen = json.loads((project.root / "inner-session.json").read_text())
    assert seen["started"] is True
    # It started the agent, so it stopped it at the end of the session, with its service.
    assert not project.paths.agent_file.exists()
    wait_for(lambda: not project.leftovers(), timeout=10, what="no process left behind")
    assert not Path(f"/proc/{seen['agent']}").exists() and not Path(f"/proc/{seen['api']}").exists()


def test_a_running_agent_is_used_and_left_running(pytester: pytest.Pytester) -> None:
    project = _inner_project(pytester)
    # --devmesh: every test gets the mesh, even one that does not ask for it (it reads the environment).
    pytester.makepyfile(
        test_inner="""
import os
import urllib.request

def test_reads_the_url_from_the_environment():
    with urllib.request.urlopen(os.environ["DEVMESH_API_URL"] + "/", timeout=10) as response:
        assert response.status == 200
"""
    )
    with running_agent(project) as agent:
        agent.wait_healthy()
        pid = agent.client.record.pid
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devmesh", timeout=50)
        result.assert_outcomes(passed=1)
        assert agent.process.poll() is None and agent.client.record.pid == pid
        assert agent.service("api")["health"] == "healthy"


def test_the_plugin_is_inert_when_unused(pytester: pytest.Pytester) -> None:
    _inner_project(pytester)
    pytester.makepyfile(
        test_inner="""
import os
import sys

def test_nothing_of_devmesh_was_loaded():
    loaded = sorted(name for name in sys.modules if name == "devmesh" or name.startswith("devmesh."))
    assert loaded == ["devmesh", "devmesh.testing", "devmesh.testing.pytest_plugin"]
    assert not any(key.startswith("DEVMESH_") and key.endswith("_URL") for key in os.environ)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=50)
    result.assert_outcomes(passed=1)
    assert not (pytester.path / ".devmesh").exists()


def test_a_broken_config_fails_the_tests_that_need_the_mesh(pytester: pytest.Pytester) -> None:
    project = Project(pytester.path.resolve())
    project.write('[services.api]\ncommand = "run"\nhelth = { http = "/health" }\n')
    pytester.makepyfile(
        test_inner="""
def test_needs_the_mesh(devmesh_mesh):
    pass

def test_does_not():
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=50)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*devmesh.toml:3: services.api.helth: unknown key*"])
    assert not project.paths.agent_file.exists()


def test_options_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help", timeout=50)
    result.stdout.fnmatch_lines(["*--devmesh *", "*--devmesh-config=FILE*", "*--devmesh-timeout=DURATION*"])


def test_a_mesh_that_is_not_healthy_in_time_fails_and_is_stopped(pytester: pytest.Pytester) -> None:
    project = Project(pytester.path.resolve())
    fail_file = project.root / "health-fails"
    fail_file.write_text("x")
    project.write(CONFIG.replace('version = "1.0.0"', f'env = {{ HEALTH_FAIL_FILE = "{fail_file}" }}'))
    pytester.makepyfile(test_inner="def test_needs_the_mesh(devmesh_mesh):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devmesh-timeout", "1.5s", timeout=50)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*was not healthy within 1.5s (api: starting, unknown: GET /health answered 500)*"]
    )
    # The session started that agent: it stopped it, even though the mesh never became healthy.
    assert not project.paths.agent_file.exists()
    wait_for(lambda: not project.leftovers(), timeout=10, what="no process left behind")
