"""Plugins for real: installed distributions (dist-info + entry_points.txt on PYTHONPATH) and
`devmesh-NAME` programs on PATH, run through the `devmesh` CLI in a fresh process."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from plugins.distributions import make_distribution
from support import TINY_COMMAND, Project, devmesh, running_agent, wait_for

GREET = """
    import click

    @click.command()
    @click.option("--name", default="world")
    @click.argument("words", nargs=-1)
    @click.pass_context
    def greet(ctx, name, words):
        '''Say hello.'''
        click.echo(f"hello {name} {' '.join(words)} config={ctx.find_root().obj.config_file}")
        raise SystemExit(3 if words == ("fail",) else 0)
"""

HOOKS = """
    import json, os

    def _write(kind, payload):
        with open(os.environ["HOOK_RECORD"], "a") as handle:
            handle.write(json.dumps({"hook": kind, **payload}) + "\\n")

    def on_agent_started(info):
        _write("started", {"mesh": info.mesh, "admin": info.admin_url, "services": list(info.services)})

    def on_event(event):
        if event["type"] == "service":
            _write("event", {"service": event["service"]["name"], "health": event["service"]["health"]})

    def on_agent_stopping(info):
        _write("stopping", {"mesh": info.mesh})
"""


def _env(site: Path | None = None, bin_dir: Path | None = None) -> dict[str, str]:
    env: dict[str, str] = {}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return env


def _config(project: Project, services: str = "") -> Path:
    return project.write(
        f'[mesh]\nname = "plugins"\n[proxy]\nadmin = "127.0.0.1:0"\nlisten = "127.0.0.1:0"\n{services}'
    )


def _program(bin_dir: Path, name: str, source: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
    path.chmod(0o755)
    return path


def test_an_entry_point_command_runs_as_devmesh_name(project: Project, tmp_path: Path) -> None:
    _config(project)
    site = make_distribution(
        tmp_path / "site",
        "devmesh-greet",
        modules={"greet_plugin": GREET},
        entry_points={"greet": "greet_plugin:greet"},
    )
    result = devmesh(
        "-f", "devmesh.toml", "greet", "--name", "Ann", "a", "b", cwd=project.root, env=_env(site)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello Ann a b config=devmesh.toml"
    failed = devmesh("greet", "fail", cwd=project.root, env=_env(site))
    assert failed.returncode == 3

    listed = devmesh("plugin", "list", "--json", cwd=project.root, env=_env(site))
    assert json.loads(listed.stdout) == [
        {"name": "greet", "kind": "command", "source": "devmesh-greet 0.1", "status": "ok", "detail": ""}
    ]
    helped = devmesh("--help", cwd=project.root, env=_env(site))
    assert "Plugins:" in helped.stdout
    assert "greet" in helped.stdout.split("Plugins:")[1]


def test_a_broken_plugin_is_listed_as_broken_and_help_still_works(project: Project, tmp_path: Path) -> None:
    _config(project)
    site = make_distribution(
        tmp_path / "site",
        "devmesh-broken",
        modules={"broken_plugin": "import no_such_module_anywhere\n"},
        entry_points={"broken": "broken_plugin:command"},
    )
    started = time.monotonic()
    helped = devmesh("--help", cwd=project.root, env=_env(site))
    assert helped.returncode == 0 and helped.stderr == ""
    assert "broken" in helped.stdout.split("Plugins:")[1]  # named, never imported
    assert time.monotonic() - started < 5

    listed = json.loads(devmesh("plugin", "list", "--json", cwd=project.root, env=_env(site)).stdout)
    assert [(entry["name"], entry["status"]) for entry in listed] == [("broken", "broken")]
    assert "ModuleNotFoundError" in listed[0]["detail"] and "devmesh-broken 0.1" in listed[0]["detail"]

    ran = devmesh("broken", cwd=project.root, env=_env(site))
    assert ran.returncode == 1
    assert "plugin 'broken'" in ran.stderr and "no_such_module_anywhere" in ran.stderr
    # Other commands do not care.
    assert devmesh("status", "--json", cwd=project.root, env=_env(site)).returncode == 0


def test_a_builtin_wins_and_plugin_run_reaches_the_shadowed_plugin(project: Project, tmp_path: Path) -> None:
    _config(project)
    site = make_distribution(
        tmp_path / "site",
        "devmesh-shadow",
        modules={"greet_plugin": GREET},
        entry_points={"status": "greet_plugin:greet"},
    )
    bin_dir = tmp_path / "bin"
    _program(bin_dir, "devmesh-logs", "print('program')\n")
    env = _env(site, bin_dir)
    status = devmesh("status", "--json", cwd=project.root, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["mesh"] == "plugins"
    listed = {
        entry["name"]: entry
        for entry in json.loads(devmesh("plugin", "list", "--json", cwd=project.root, env=env).stdout)
    }
    assert listed["status"]["status"] == "shadowed" and "built-in" in listed["status"]["detail"]
    assert listed["logs"]["status"] == "shadowed" and listed["logs"]["kind"] == "executable"
    ran = devmesh("plugin", "run", "status", "--name", "Bo", cwd=project.root, env=env)
    assert ran.returncode == 0 and ran.stdout.startswith("hello Bo")
    assert devmesh("plugin", "run", "logs", cwd=project.root, env=env).stdout == "program\n"
    unknown = devmesh("plugin", "run", "nothing", cwd=project.root, env=env)
    assert unknown.returncode == 2 and "no plugin named 'nothing'" in unknown.stderr


REPORTER = """
import json, os, sys
keys = ("DEVMESH_CONFIG", "DEVMESH_PROJECT_DIR", "DEVMESH_ADMIN", "DEVMESH_ENV")
print(json.dumps({"args": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}))
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""


def test_a_program_on_path_runs_like_git_with_args_env_and_exit_code(
    project: Project, tmp_path: Path
) -> None:
    config = _config(project)
    bin_dir = tmp_path / "bin"
    _program(bin_dir, "devmesh-hello", REPORTER)
    (project.root / "sub").mkdir()
    result = devmesh(
        "--env", "ci", "hello", "a", "b c", "--help", "-x",
        cwd=project.root / "sub",
        env={**_env(bin_dir=bin_dir), "EXIT_WITH": "7", "DEVMESH_ADMIN": "http://stale"},
    )  # fmt: skip
    assert result.returncode == 7, result.stderr
    report = json.loads(result.stdout)
    assert report["args"] == ["a", "b c", "--help", "-x"]
    assert report["env"] == {
        "DEVMESH_CONFIG": str(config),
        "DEVMESH_PROJECT_DIR": str(project.root),
        "DEVMESH_ADMIN": None,  # no agent runs here (an inherited one named another project)
        "DEVMESH_ENV": "ci",
    }
    listed = json.loads(
        devmesh("plugin", "list", "--json", cwd=project.root, env=_env(bin_dir=bin_dir)).stdout
    )
    assert listed == [
        {
            "name": "hello",
            "kind": "executable",
            "source": str(bin_dir / "devmesh-hello"),
            "status": "ok",
            "detail": "",
        }
    ]
    # Outside any project: the program still runs, without the project's variables.
    elsewhere = devmesh("hello", cwd=tmp_path, env=_env(bin_dir=bin_dir))
    assert elsewhere.returncode == 0
    assert json.loads(elsewhere.stdout)["env"]["DEVMESH_CONFIG"] is None


def test_a_program_on_path_learns_the_running_agents_admin_url(project: Project, tmp_path: Path) -> None:
    _config(project)
    bin_dir = tmp_path / "bin"
    _program(bin_dir, "devmesh-hello", REPORTER)
    with running_agent(project) as agent:
        admin = agent.client.record.admin
        result = devmesh("hello", cwd=project.root, env=_env(bin_dir=bin_dir))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["env"]["DEVMESH_ADMIN"] == f"http://{admin}"


def test_a_hook_plugin_is_called_by_a_real_agent(project: Project, tmp_path: Path) -> None:
    _config(
        project,
        f'[services.api]\ncommand = "{TINY_COMMAND}"\nhealth = {{ http = "/health", interval = "0.2s" }}\n',
    )
    record = tmp_path / "hooks.jsonl"
    site = make_distribution(
        tmp_path / "site",
        "devmesh-recorder",
        modules={"recorder_plugin": HOOKS},
        entry_points={"recorder": "recorder_plugin"},
    )

    def calls() -> list[dict[str, object]]:
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    with running_agent(project, env={**_env(site), "HOOK_RECORD": str(record)}) as agent:
        agent.wait_healthy()
        admin = agent.client.record.admin
        wait_for(lambda: any(call["hook"] == "started" for call in calls()), what="on_agent_started")
        agent.client.post("/api/v1/services/api/restart", {})  # a change the plugin hears of
        wait_for(
            lambda: {"hook": "event", "service": "api", "health": "healthy"} in calls(),
            timeout=15,
            what="a service event for api",
        )
        assert agent.stop() == 0
    seen = calls()
    assert seen[0] == {"hook": "started", "mesh": "plugins", "admin": f"http://{admin}", "services": ["api"]}
    assert seen[-1] == {"hook": "stopping", "mesh": "plugins"}
