"""Editing the config while the mesh runs applies the difference, and only the difference."""

from __future__ import annotations

from support import TINY_COMMAND, Project, running_agent, wait_for

HEADER = """
[mesh]
name = "reload"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
"""


def _service(name: str, version: str = "1") -> str:
    return f"""
[services.{name}]
command = "{TINY_COMMAND}"
version = "{version}"
health = {{ http = "/health", interval = "0.2s" }}
"""


def _pids(agent: object) -> dict[str, int | None]:
    return {entry["name"]: entry["pid"] for entry in agent.status()["services"]}  # type: ignore[attr-defined]


def test_reload_adds_removes_and_changes_without_touching_the_rest(project: Project) -> None:
    project.write(HEADER + _service("keep") + _service("change") + _service("remove"))
    with running_agent(project) as agent:
        agent.wait_healthy()
        before = _pids(agent)
        project.write(HEADER + _service("keep") + _service("change", version="2") + _service("added"))
        wait_for(lambda: set(_pids(agent)) == {"keep", "change", "added"}, timeout=5, what="the reload")
        document = agent.wait_healthy()
        after = {entry["name"]: entry for entry in document["services"]}
        assert after["keep"]["pid"] == before["keep"]
        assert after["change"]["pid"] != before["change"]
        assert after["change"]["version"] == "2"
        assert after["added"]["health"] == "healthy"
        assert "config reloaded: added added; removed remove; changed change" in agent.log()


def test_invalid_edit_keeps_the_running_config_and_says_why(project: Project) -> None:
    project.write(HEADER + _service("api"))
    with running_agent(project) as agent:
        pid = agent.wait_healthy()["services"][0]["pid"]
        project.write(HEADER + _service("api") + '[services.web]\ncomand = "x"\n')
        wait_for(lambda: agent.status()["agent"]["config_error"], timeout=5, what="the config error")
        error = agent.status()["agent"]["config_error"]
        assert "devmesh.toml:" in error
        assert "services.web.comand" in error
        assert 'did you mean "command"' in error
        assert agent.service("api")["pid"] == pid
        assert "config error; keeping the running config" in agent.log()
        # Fixing the file clears the error and applies the change.
        project.write(HEADER + _service("api") + _service("web"))
        wait_for(
            lambda: agent.status()["agent"]["config_error"] is None, timeout=5, what="the error to clear"
        )
        agent.wait_healthy("web")
        assert agent.service("api")["pid"] == pid


def test_editing_an_env_overlay_reloads(project: Project) -> None:
    project.write(HEADER + _service("api"))
    project.write('[services.api]\nversion = "local"\n', name="devmesh.local.toml")
    with running_agent(project) as agent:
        agent.wait_healthy()
        assert agent.service("api")["version"] == "local"
        project.write('[services.api]\nversion = "local-2"\n', name="devmesh.local.toml")
        wait_for(lambda: agent.service("api")["version"] == "local-2", timeout=5, what="the overlay change")
