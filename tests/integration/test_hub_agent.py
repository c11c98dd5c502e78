"""`devmesh up --hub`: a real agent against a hub on a real socket (tests/integration/hub_double.py, a
protocol double of the issue 8 contract): enrollment, the credential reused, revisions applied and
rejected, the hub going away and coming back, peers found through the hub."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hub_double import HubDouble, hub

from support import TINY_COMMAND, Project, devmesh, free_port, http, running_agent, wait_for

__all__ = ["hub"]  # the fixture

pytestmark = pytest.mark.slow


def write_project(project: Project, *, extra: str = "") -> int:
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "team"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[peers]
discovery = "off"
[services.api]
command = "{TINY_COMMAND}"
health = {{ http = "/health", interval = "1s" }}
{extra}
"""
    )
    return listen


def status_of(hub: HubDouble, revision: str) -> dict[str, Any]:
    return dict(
        wait_for(lambda: hub.agent().statuses.get(revision), timeout=15, what=f"status of {revision[:8]}")
    )


def healthy_catalog(hub: HubDouble) -> bool:
    catalog = hub.agent().catalog or {}
    return any(entry["name"] == "api" and entry["healthy"] for entry in catalog.get("services", []))


def test_enrols_once_then_reuses_its_credential(project: Project, hub: HubDouble) -> None:
    write_project(project)
    token = hub.new_token()
    with running_agent(project, "--hub", hub.url, "--hub-token", token):
        wait_for(lambda: len(hub.agents) == 1 and hub.agent().sessions == 1, what="a session")
        record = hub.agent()
        hello = hub.messages("hello")[0]
        assert hello["revision"] is None and hello["seq"] == 1
        wait_for(lambda: healthy_catalog(hub), what="a catalog with api healthy")
        wait_for(lambda: len(hub.messages("heartbeat")) >= 2, what="heartbeats")
        seqs = [message["seq"] for message in record.received]
        assert seqs == list(range(1, len(seqs) + 1))  # numbered from 1 on the connection, no gap
    state = project.root / ".devmesh" / "hub.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert saved == {
        "hub": hub.url,
        "agent_id": record.agent_id,
        "workspace": "team",
        "credential": record.credential,
    }
    # The token is spent; the kept credential is what the second start uses.
    assert token not in hub.tokens
    with running_agent(project, "--hub", hub.url, "--hub-token", token):
        wait_for(lambda: record.sessions == 2, what="a second session")
        second = [message for message in record.received if message["session"] == 2]
        assert second[0]["type"] == "hello" and second[0]["seq"] == 1
    assert len(hub.agents) == 1 and "enroll" not in hub.refused


def test_a_refused_token_stops_up_with_what_to_do(project: Project, hub: HubDouble) -> None:
    write_project(project)
    result = devmesh("up", "--hub", hub.url, "--hub-token", "spent-or-wrong", cwd=project.root)
    assert result.returncode == 1, result.stderr
    assert f"the hub {hub.url} refused the enrollment token" in result.stderr
    assert "devmesh hub enroll WORKSPACE" in result.stderr
    assert not (project.root / ".devmesh" / "hub.json").exists()
    assert not project.leftovers()


def test_revisions_applied_and_a_bad_one_rejected(project: Project, hub: HubDouble) -> None:
    listen = write_project(project)
    with running_agent(project, "--hub", hub.url, "--hub-token", hub.new_token()) as agent:
        agent.wait_healthy("api")
        assert http(listen, "api.localhost")[0] == 200
        assert http(listen, "api-v2.localhost")[0] == 404
        good = hub.push(
            {
                "services": {"api": {"hosts": ["api", "api-v2"]}},
                "faults": {"teapot": {"service": "api", "abort": 418, "paths": ["/brew*"]}},
            }
        )
        applied = status_of(hub, good)
        assert {key: applied[key] for key in ("type", "revision", "status", "details")} == {
            "type": "revision_status",
            "revision": good,
            "status": "applied",
            "details": None,
        }
        assert http(listen, "api-v2.localhost", "/x")[0] == 200  # the service changed: a new host
        assert http(listen, "api.localhost", "/brew/tea")[0] == 418  # the fault is in force
        assert http(listen, "api.localhost", "/other")[0] == 200
        saved = json.loads((project.root / ".devmesh" / "hub-revision.json").read_text())
        assert saved["revision"] == good

        bad = hub.push({"faults": {"broken": {"service": "payments", "abort": 500}}})
        rejected = status_of(hub, bad)
        assert rejected["status"] == "rejected"
        assert "faults.broken.service" in rejected["details"] and "'payments'" in rejected["details"]
        # The previous revision keeps serving, and stays the saved one.
        assert http(listen, "api.localhost", "/brew/tea")[0] == 418
        assert http(listen, "api-v2.localhost")[0] == 200
        assert json.loads((project.root / ".devmesh" / "hub-revision.json").read_text())["revision"] == good

        runs = hub.push({"services": {"api": {"command": "rm -rf ~"}}})
        refused = status_of(hub, runs)
        assert refused["status"] == "rejected"
        assert "services.api.command: a revision may not run programs on this machine" in refused["details"]
        heartbeat = wait_for(
            lambda: [m for m in hub.messages("heartbeat") if m["revision"] == good], what="heartbeats"
        )
        assert heartbeat


def test_the_hub_going_away_and_coming_back(project: Project, hub: HubDouble) -> None:
    listen = write_project(project)
    token = hub.new_token()
    with running_agent(project, "--hub", hub.url, "--hub-token", token) as agent:
        agent.wait_healthy("api")
        good = hub.push({"faults": {"teapot": {"service": "api", "abort": 418}}})
        assert status_of(hub, good)["status"] == "applied"
        record = hub.agent()
        linked = agent.status()["agent"]["hub"]
        assert linked == {**linked, "url": hub.url, "connected": True, "revision": good}
        hub.stop()
        assert http(listen, "api.localhost")[0] == 418  # serving on, with the revision
        log_says = "trying again"
        wait_for(lambda: log_says in agent.log(), what="the lost connection in the log")
        assert agent.status()["agent"]["hub"]["connected"] is False
        hub.start()
        wait_for(lambda: record.sessions == 2 and record.socket is not None, timeout=20, what="reconnected")
        hello = next(m for m in record.received if m["session"] == 2)
        assert hello["type"] == "hello" and hello["seq"] == 1 and hello["revision"] == good
    # An agent started while the hub is down serves with its last good revision.
    hub.stop()
    with running_agent(project, "--hub", hub.url) as agent:
        agent.wait_healthy("api")
        assert http(listen, "api.localhost")[0] == 418
        assert "serving with the last good hub revision" in agent.log()
        hub.start()
        # The double counts a session on accept and records its hello once read: wait for the hello.
        hello = wait_for(
            lambda: next((m for m in record.received if m["session"] == 3), None),
            timeout=20,
            what="the session once the hub is back",
        )
        assert hello["type"] == "hello" and hello["revision"] == good


def test_a_status_unacknowledged_is_sent_again_on_the_next_connection(
    project: Project, hub: HubDouble
) -> None:
    write_project(project)
    hub.ack = False
    with running_agent(project, "--hub", hub.url, "--hub-token", hub.new_token()) as agent:
        agent.wait_healthy("api")
        good = hub.push({"faults": {"teapot": {"service": "api", "abort": 418}}})
        record = hub.agent()
        wait_for(lambda: good in record.statuses, what="the status")
        hub.ack = True
        hub.stop()
        hub.start()
        wait_for(
            lambda: [m for m in record.received if m["session"] == 2 and m["type"] == "revision_status"],
            timeout=20,
            what="the status sent again",
        )
        wait_for(lambda: len(hub.messages("revision_status")) == 2, what="two statuses")
        # Acknowledged now: a third connection does not send it again.
        hub.stop()
        hub.start()
        wait_for(
            lambda: record.sessions == 3 and len(hub.messages("heartbeat")) > 0, timeout=20, what="session 3"
        )
        wait_for(
            lambda: [m for m in record.received if m["session"] == 3 and m["type"] == "heartbeat"],
            what="a heartbeat on session 3",
        )
        assert not [m for m in record.received if m["session"] == 3 and m["type"] == "revision_status"]


def test_peers_found_through_the_hub_serve_over_the_mesh_port(tmp_path: Path, hub: HubDouble) -> None:
    offering = Project((tmp_path / "alice").resolve())
    offering.root.mkdir()
    following = Project((tmp_path / "bob").resolve())
    following.root.mkdir()
    offering.write(
        f"""
[mesh]
name = "team"
secret = "s3cret"
share = true
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{free_port()}"
mesh = "127.0.0.1:{free_port()}"
[peers]
discovery = "off"
[services.api]
command = "{TINY_COMMAND}"
version = "1.4.2"
health = {{ http = "/health", interval = "1s" }}
"""
    )
    listen = free_port()
    following.write(
        f"""
[mesh]
name = "team"
secret = "s3cret"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[peers]
discovery = "off"
[services.api]
requires = ">=1.4"
"""
    )
    with running_agent(offering, "--hub", hub.url, "--hub-token", hub.new_token()) as alice:
        alice.wait_healthy("api")
        with running_agent(following, "--hub", hub.url, "--hub-token", hub.new_token()) as bob:
            served = wait_for(
                lambda: (answer := http(listen, "api.localhost", "/hello"))[0] == 200 and answer,
                timeout=20,
                what="api served by the peer",
            )
            assert json.loads(served[2])["path"] == "/hello"
            peers = bob.status()["peers"]
            assert [peer["address"] for peer in peers] == [str(alice.status()["agent"]["mesh"])]


def test_detached_the_token_reaches_the_agent_but_not_its_command_line(
    project: Project, hub: HubDouble
) -> None:
    write_project(project)
    token = hub.new_token()
    started = devmesh("up", "--detach", "--hub", hub.url, "--hub-token", token, cwd=project.root)
    try:
        assert started.returncode == 0, started.stderr
        wait_for(
            lambda: len(hub.agents) == 1 and hub.agent().socket is not None,
            what="the detached agent's session",
        )
        pid = json.loads((project.root / ".devmesh" / "agent.json").read_text())["pid"]
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert hub.url in command_line and token not in command_line
    finally:
        assert devmesh("down", cwd=project.root).returncode == 0
    assert (
        json.loads((project.root / ".devmesh" / "hub.json").read_text())["agent_id"] == hub.agent().agent_id
    )
