"""The hub with real agents: `devmesh hub serve` and two `devmesh up --hub` agents over real sockets,
on SQLite and on a real PostgreSQL.

What the issue asks to see end to end: enrollment (and a spent token refused), a revision pushed to
both agents and acknowledged by both, a bad one rejected with details while both keep serving the
previous one, the hub restarted and the agents reconnecting, and each agent reaching the other's service
through the catalogs the hub aggregates (traffic agent to agent over the mesh port).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engines.postgres import PostgresServer, postgres_server
from hub.kit import WORKSPACE, HubProcess, api, bootstrap, enrollment_token, login
from support import TINY_COMMAND, Project, devmesh, free_port, http, running_agent, wait_for

__all__ = ["postgres_server"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        yield server.new_database()


def agent_project(root: Path, name: str, service: str) -> tuple[Project, int]:
    """A project sharing one service on its mesh port; peers come only from the hub."""
    folder = root / name
    folder.mkdir()
    project = Project(folder.resolve())
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "team"
secret = "fleet-secret"
share = true
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
mesh = "127.0.0.1:{free_port()}"
[peers]
discovery = "off"
[services.{service}]
command = "{TINY_COMMAND}"
health = {{ http = "/health", interval = "1s" }}
"""
    )
    return project, listen


def statuses(hub: HubProcess, token: str, revision: str) -> dict[str, dict[str, Any]]:
    code, listed = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/revisions", token=token)
    assert code == 200, listed
    entry = next((item for item in listed if item["revision"] == revision), None)
    return {status["agent_id"]: status for status in (entry or {}).get("agents", [])}


@pytest.mark.timeout(180)
def test_a_fleet_of_real_agents_on_a_real_hub(hub_url: str, tmp_path: Path) -> None:
    bootstrap(hub_url, tmp_path)
    hub = HubProcess(hub_url, tmp_path).start()
    try:
        admin = login(hub.base)
        (alice, alice_listen), (bob, bob_listen) = (
            agent_project(tmp_path, "alice", "api"),
            agent_project(tmp_path, "bob", "web"),
        )
        alice_token, bob_token = enrollment_token(hub.base, admin), enrollment_token(hub.base, admin)
        with (
            running_agent(alice, "--hub", hub.base, "--hub-token", alice_token) as a,
            running_agent(bob, "--hub", hub.base, "--hub-token", bob_token) as b,
        ):
            a.wait_healthy("api")
            b.wait_healthy("web")
            # A spent token is refused: a third project cannot enrol with alice's.
            carol, _ = agent_project(tmp_path, "carol", "docs")
            refused = devmesh("up", "--hub", hub.base, "--hub-token", alice_token, cwd=carol.root, timeout=60)
            assert refused.returncode == 1 and "devmesh hub enroll" in refused.stderr, refused.stderr

            code, agents = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/agents", token=admin)
            assert code == 200 and len(agents) == 2

            # Peers on "different networks": each finds the other's service through the hub only.
            wait_for(lambda: http(alice_listen, "web.localhost")[0] == 200, timeout=30, what="alice -> web")
            wait_for(lambda: http(bob_listen, "api.localhost")[0] == 200, timeout=30, what="bob -> api")
            served_by = http(bob_listen, "api.localhost")[1].get("x-devmesh-served-by")
            assert served_by == f"{a.status()['agent']['peer_id']}/api"  # alice's agent served bob

            # A revision to both, acknowledged by both, in force on both.
            code, good = api(
                hub.base,
                "POST",
                f"/hub/v1/workspaces/{WORKSPACE}/revisions",
                # `api` declared for the whole workspace: bob, who does not run it, reaches it at a peer.
                {
                    "document": {
                        "services": {"api": {"requires": ">=0"}},
                        "faults": {"teapot": {"service": "api", "abort": 418}},
                    }
                },
                admin,
            )
            assert code == 201, good

            def all_applied(revision: str) -> bool:
                found = statuses(hub, admin, revision)
                return len(found) == 2 and all(s["status"] == "applied" for s in found.values())

            try:
                wait_for(lambda: all_applied(good["revision"]), timeout=30, what="both agents applied it")
            except AssertionError:
                raise AssertionError(f"{statuses(hub, admin, good['revision'])}\n{b.log()[-3000:]}") from None
            assert http(alice_listen, "api.localhost")[0] == 418

            # A bad one (a fault for a service nobody has): rejected with details; the good one serves.
            code, bad = api(
                hub.base,
                "POST",
                f"/hub/v1/workspaces/{WORKSPACE}/revisions",
                {
                    "document": {
                        "services": {"api": {"requires": ">=0"}},
                        "faults": {"teapot": {"service": "nope", "abort": 500}},
                    }
                },
                admin,
            )
            assert code == 201, bad

            def all_rejected() -> bool:
                found = statuses(hub, admin, bad["revision"])
                return len(found) == 2 and all(s["status"] == "rejected" for s in found.values())

            wait_for(all_rejected, timeout=30, what="both agents rejected the bad revision")
            details = [s["details"] for s in statuses(hub, admin, bad["revision"]).values()]
            assert all("nope" in (text or "") for text in details), details
            assert http(alice_listen, "api.localhost")[0] == 418  # the previous revision still in force

            # The hub restarts (same address, same database): both agents come back on their own.
            hub.stop()
            wait_for(lambda: a.status()["agent"]["hub"]["connected"] is False, timeout=15, what="a: lost")
            assert http(alice_listen, "api.localhost")[0] == 418  # serving on without the hub
            hub.start()
            for agent in (a, b):
                wait_for(
                    lambda agent=agent: agent.status()["agent"]["hub"]["connected"] is True,  # type: ignore[misc]
                    timeout=45,
                    what="reconnected to the restarted hub",
                )
            code, agents = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/agents", token=admin)
            assert code == 200 and all(entry["online"] for entry in agents), agents
    finally:
        hub.stop()
