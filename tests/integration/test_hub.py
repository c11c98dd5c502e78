"""The hub for real: `devmesh hub serve` as a child process, agents as real WebSocket sessions speaking
the contract, on SQLite and on a real PostgreSQL started by the test set-up."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engines.postgres import PostgresServer, postgres_server
from hub.kit import (
    WORKSPACE,
    HubProcess,
    ProtoAgent,
    api,
    bootstrap,
    enroll,
    enrollment_token,
    login,
    new_agent,
)
from support import wait_for

__all__ = ["postgres_server"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]

GOOD = {"services": {"api": {"port": 8000}}}
BAD = {"services": {"api": {"port": "not a port"}}}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def hub(db_url: str, tmp_path: Path) -> Iterator[HubProcess]:
    bootstrap(db_url, tmp_path)
    process = HubProcess(db_url, tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


def reject_bad_port(_revision: str, document: dict[str, Any]) -> tuple[str, str | None]:
    port = document.get("services", {}).get("api", {}).get("port")
    if not isinstance(port, int):
        return "rejected", f"services.api.port: {port!r} is not a port number"
    return "applied", None


def statuses(hub: HubProcess, token: str, revision: str) -> dict[str, tuple[str, str | None]]:
    code, found = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/revisions", token=token)
    assert code == 200, found
    for entry in found:
        if entry["revision"] == revision:
            return {a["name"]: (a["status"], a["details"]) for a in entry["agents"]}
    return {}


async def test_enrollment_tokens_are_one_time_and_revocable(hub: HubProcess) -> None:
    admin = login(hub.base)
    token = enrollment_token(hub.base, admin)
    first = enroll(hub.base, token, "alice")
    assert first["workspace"] == WORKSPACE and len(first["credential"]) >= 40
    code, answer = api(hub.base, "POST", "/hub/v1/enroll", {"token": token, "name": "again"})
    assert code == 401 and "already used" in answer["detail"]

    code, created = api(
        hub.base, "POST", f"/hub/v1/workspaces/{WORKSPACE}/enrollment-tokens", {"ttl_s": 60}, admin
    )
    assert code == 201
    code, _ = api(
        hub.base, "DELETE", f"/hub/v1/workspaces/{WORKSPACE}/enrollment-tokens/{created['id']}", token=admin
    )
    assert code == 204
    code, answer = api(hub.base, "POST", "/hub/v1/enroll", {"token": created["token"], "name": "bob"})
    assert code == 401 and "revoked" in answer["detail"]
    code, answer = api(hub.base, "POST", "/hub/v1/enroll", {"token": "dme_forged", "name": "eve"})
    assert code == 401

    # The credential opens a session; a wrong one is closed with 4401 before any message.
    agent = ProtoAgent(hub.ws_url, first["agent_id"], first["credential"], "alice")
    welcome = await agent.connect()
    assert welcome["workspace"] == WORKSPACE and welcome["heartbeat_s"] > 0 and welcome["seq"] == 1
    forged = ProtoAgent(hub.ws_url, first["agent_id"], "wrong-credential", "eve")
    with pytest.raises(AssertionError, match="session ended"):
        await forged.connect()
    assert forged.close_code() == 4401 and forged.received == []
    await forged.close()
    await agent.close()
    audit = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/audit", token=admin)[1]
    actions = [entry["action"] for entry in audit]
    assert {"enrollment.create", "enrollment.revoke", "agent.enroll"} <= set(actions)


async def test_revision_pushed_acked_and_rejected_with_details(hub: HubProcess) -> None:
    admin = login(hub.base)
    agents = [await new_agent(hub, admin, f"agent-{i}", decide=reject_bad_port) for i in range(3)]
    for agent in agents:
        await agent.connect()
    # Each sees the two others as peers, with their catalogs.
    await agents[0].send(
        "catalog",
        catalog={
            "services": [{"name": "api", "version": "2", "healthy": True, "hosts": ["api"]}],
            "mesh": "10.0.0.1:7090",
        },
    )
    for agent in agents[1:]:
        seen = await agent.wait_for(
            "peers", where=lambda m: any(p["mesh"] == "10.0.0.1:7090" for p in m["peers"])
        )
        assert {p["name"] for p in seen["peers"]} == {a.name for a in agents} - {agent.name}
    await agents[0].wait_for("ack")

    code, applied = api(
        hub.base, "POST", f"/hub/v1/workspaces/{WORKSPACE}/revisions", {"document": GOOD}, admin
    )
    assert code == 201 and applied["created"]
    good = applied["revision"]
    for agent in agents:
        pushed = await agent.wait_for("revision", where=lambda m: m["revision"] == good)
        assert pushed["document"] == GOOD
    wait_for(
        lambda: statuses(hub, admin, good) == {a.name: ("applied", None) for a in agents},
        timeout=15,
        what="applied by all",
    )

    bad = api(hub.base, "POST", f"/hub/v1/workspaces/{WORKSPACE}/revisions", {"document": BAD}, admin)[1][
        "revision"
    ]
    for agent in agents:
        await agent.wait_for("revision", where=lambda m: m["revision"] == bad)
        assert agent.revision == good  # kept the last good one
    found = wait_for(
        lambda: (
            all(s == "rejected" for s, _ in statuses(hub, admin, bad).values())
            and len(statuses(hub, admin, bad)) == 3
            and statuses(hub, admin, bad)
        ),
        timeout=15,
    )
    assert found["agent-1"] == ("rejected", "services.api.port: 'not a port' is not a port number")
    listed = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/agents", token=admin)[1]
    assert {a["name"]: (a["online"], a["revision"]) for a in listed} == {a.name: (True, good) for a in agents}
    for agent in agents:
        await agent.close()
    wait_for(
        lambda: (
            not any(
                a["online"]
                for a in api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/agents", token=admin)[1]
            )
        ),
        what="agents offline after their sockets closed",
    )


async def test_hub_restart_agents_reconnect_and_get_the_current_revision(hub: HubProcess) -> None:
    admin = login(hub.base)
    first = await new_agent(hub, admin, "first")
    await first.connect()
    late = await new_agent(hub, admin, "late")
    hub.stop(signal.SIGKILL)
    # While the hub is down nothing reaches it; it comes back on the same port and database.
    hub.start()
    applied = api(
        hub.base, "POST", f"/hub/v1/workspaces/{WORKSPACE}/revisions", {"document": GOOD}, login(hub.base)
    )[1]
    for agent in (first, late):
        await agent.close()
        for _ in range(50):  # the agents' reconnect loop, bounded
            try:
                welcome = await agent.connect()
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert welcome["revision"] == applied["revision"]
        await agent.wait_for("revision", where=lambda m: m["revision"] == applied["revision"])
    wait_for(
        lambda: (
            statuses(hub, admin, applied["revision"])
            == {"first": ("applied", None), "late": ("applied", None)}
        ),
        timeout=15,
    )
    # A reconnecting agent that already runs the current revision is not sent it again.
    await first.close()
    welcome = await first.connect()
    await first.wait_for("peers")
    assert welcome["revision"] == applied["revision"] and not [
        m for m in first.received if m["type"] == "revision"
    ]
    for agent in (first, late):
        await agent.close()


async def test_a_revoked_agent_is_disconnected_and_refused(hub: HubProcess) -> None:
    admin = login(hub.base)
    agent = await new_agent(hub, admin, "stolen")
    await agent.connect()
    code, _ = api(hub.base, "DELETE", f"/hub/v1/workspaces/{WORKSPACE}/agents/{agent.agent_id}", token=admin)
    assert code == 204
    with pytest.raises(AssertionError, match="session ended"):
        await agent.wait_for("__nothing__")
    assert agent.close_code() == 4401
    await agent.close()
    with pytest.raises(AssertionError, match="session ended"):
        await agent.connect()
    assert agent.close_code() == 4401
    await agent.close()


async def test_values_longer_than_their_columns_are_refused_naming_the_field(hub: HubProcess) -> None:
    # PostgreSQL refuses such values (DataError): they must be a 422 / a 4400, never a 500 / a crash.
    admin = login(hub.base)
    token = enrollment_token(hub.base, admin)
    code, answer = api(
        hub.base,
        "POST",
        "/hub/v1/enroll",
        {"token": token, "name": "n" * 256, "hostname": "h", "version": "1"},
    )
    assert code == 422 and answer["detail"][0]["loc"] == ["body", "name"], answer
    code, answer = api(
        hub.base,
        "POST",
        "/hub/v1/enroll",
        {"token": token, "name": "ok", "hostname": "h", "version": "v" * 65},
    )
    assert code == 422 and answer["detail"][0]["loc"] == ["body", "version"], answer
    enrolled = enroll(hub.base, token, "n" * 255)  # the token was not spent by the refusals
    agent = ProtoAgent(hub.ws_url, enrolled["agent_id"], enrolled["credential"], "n" * 255, revision="f" * 65)
    with pytest.raises(AssertionError, match="session ended"):
        await agent.connect()
    assert agent.close_code() == 4400
    assert agent.connection is not None and "hello.revision" in (agent.connection.close_reason or "")
    await agent.close()
    agent.revision = None
    assert (await agent.connect())["workspace"] == WORKSPACE
    await agent.close()
    listed = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/agents", token=admin)[1]
    assert [a["name"] for a in listed] == ["n" * 128]
