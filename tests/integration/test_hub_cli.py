"""`devmesh hub ...` as a user runs it, against a real hub: login, keys, enroll, apply, agents, revisions."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.kit import ADMIN, ADMIN_PASSWORD, WORKSPACE, HubProcess, ProtoAgent, api, cli, running_hub

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with running_hub(tmp_path) as process:
        yield process


async def test_the_hub_commands(hub: HubProcess, tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "DEVMESH_HUB_URL": hub.base, "DEVMESH_HUB_KEY": ""}
    done = cli("hub", "agents", WORKSPACE, cwd=tmp_path, env=env)
    assert done.returncode == 1 and "devmesh hub login" in done.stderr

    done = cli(
        "hub",
        "login",
        "--username",
        ADMIN,
        "--password-stdin",
        cwd=tmp_path,
        env=env,
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "config" / "devmesh" / "hub-login.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and json.loads(saved.read_text())["hub"] == hub.base

    done = cli("hub", "key", "add", WORKSPACE, "ci", "--role", "editor", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    key_env = {**env, "DEVMESH_HUB_KEY": done.stdout.strip()}

    done = cli("hub", "enroll", WORKSPACE, "--ttl", "10m", cwd=tmp_path, env=key_env)
    assert done.returncode == 0 and done.stdout.startswith("dme_"), done.stderr
    code, enrolled = api(
        hub.base,
        "POST",
        "/hub/v1/enroll",
        {"token": done.stdout.strip(), "name": "box", "hostname": "h", "version": "1.2"},
    )
    assert code == 201
    agent = ProtoAgent(hub.ws_url, enrolled["agent_id"], enrolled["credential"], "box")
    await agent.connect()

    policy = tmp_path / "policy.toml"
    policy.write_text('[services.api]\nport = 8000\nhosts = ["api.test"]\n')
    done = cli("hub", "apply", WORKSPACE, str(policy), cwd=tmp_path, env=key_env)
    assert done.returncode == 0, done.stderr
    revision = done.stdout.strip()
    await agent.wait_for("revision", where=lambda m: m["revision"] == revision)
    yaml_policy = tmp_path / "policy.yaml"
    yaml_policy.write_text("services:\n  api:\n    hosts: [api.test]\n    port: 8000\n")
    done = cli("hub", "apply", WORKSPACE, str(yaml_policy), cwd=tmp_path, env=key_env)
    assert done.returncode == 0 and done.stdout.strip() == revision and "unchanged" in done.stderr

    broken = tmp_path / "broken.toml"
    broken.write_text("[services.api\n")
    done = cli("hub", "apply", WORKSPACE, str(broken), cwd=tmp_path, env=key_env)
    assert done.returncode == 2 and f"{broken} is not valid TOML" in done.stderr
    odd = tmp_path / "odd.toml"
    odd.write_text("[routes.x]\na = 1\n")
    done = cli("hub", "apply", WORKSPACE, str(odd), cwd=tmp_path, env=key_env)
    assert done.returncode == 2 and "unknown top-level key(s) routes" in done.stderr

    done = cli("hub", "agents", WORKSPACE, "--json", cwd=tmp_path, env=key_env)
    listed = json.loads(done.stdout)
    assert [(a["name"], a["online"], a["version"], a["revision"]) for a in listed] == [
        ("box", True, "1.0", revision)
    ]
    done = cli("hub", "agents", WORKSPACE, cwd=tmp_path, env=key_env)
    assert "box" in done.stdout and "yes" in done.stdout

    done = cli("hub", "revisions", WORKSPACE, "--json", cwd=tmp_path, env=env)
    found = json.loads(done.stdout)
    assert found[0]["revision"] == revision and found[0]["agents"][0]["status"] == "applied"
    assert revision[:12] in cli("hub", "revisions", WORKSPACE, cwd=tmp_path, env=env).stdout

    done = cli("hub", "enroll", WORKSPACE, "--json", cwd=tmp_path, env=env)
    token = json.loads(done.stdout)
    done = cli("hub", "token", "revoke", WORKSPACE, str(token["id"]), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert api(hub.base, "POST", "/hub/v1/enroll", {"token": token["token"], "name": "x"})[0] == 401
    done = cli("hub", "audit", WORKSPACE, cwd=tmp_path, env=env)
    assert "enrollment.revoke" in done.stdout and "revision.apply" in done.stdout
    await agent.close()


def test_user_add_and_workspace_add_work_on_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'direct.db'}"
    done = cli("hub", "workspace", "add", "ops", "--db", url, cwd=tmp_path)
    assert done.returncode == 0 and "created" in done.stdout
    done = cli(
        "hub",
        "user",
        "add",
        "bob",
        "--workspace",
        "ops",
        "--role",
        "viewer",
        "--password-stdin",
        "--db",
        url,
        cwd=tmp_path,
        stdin="short\n",
    )
    assert done.returncode == 2 and "at least 8 characters" in done.stderr
    done = cli(
        "hub", "user", "add", "bad name", "--password-stdin", "--db", url, cwd=tmp_path, stdin="long-enough\n"
    )
    assert done.returncode == 2 and "user name 'bad name' is not valid" in done.stderr
    done = cli("hub", "serve", "--listen", "nonsense", "--db", url, cwd=tmp_path)
    assert done.returncode == 2 and "--listen 'nonsense' is not HOST:PORT" in done.stderr
