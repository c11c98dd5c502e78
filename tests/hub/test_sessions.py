"""Agent sessions in-process (Starlette's TestClient over the real application, SQLite): the races
and the fan-out that a hub in a child process cannot show deterministically."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DataError, OperationalError
from starlette.websockets import WebSocketDisconnect

from devmesh.hub import fleet, limits, store
from devmesh.hub.database import Database
from devmesh.hub.models import Agent, AuditEntry
from devmesh.hub.server import create_app

with warnings.catch_warnings():
    # Starlette asks for httpx2 over httpx when its test client is imported; either works here.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketTestSession

SESSION = "/hub/v1/agent/session"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    database.migrate()
    store.add_workspace(database, "team", actor="test")
    return database


@pytest.fixture
def client(db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(db)) as running:
        yield running


def enrolled(db: Database, name: str) -> dict[str, str]:
    token = store.create_enrollment(db, "team", 60, actor="test")["token"]
    return {**fleet.enroll(db, token, name, "h", "1"), "name": name}


def open_session(client: TestClient, agent: dict[str, str], stack: ExitStack) -> WebSocketTestSession:
    return stack.enter_context(
        client.websocket_connect(SESSION, headers={"Authorization": f"Bearer {agent['credential']}"})
    )


def hello(ws: WebSocketTestSession, agent: dict[str, str], **fields: Any) -> None:
    ws.send_json(
        {
            "type": "hello",
            "seq": 1,
            "agent_id": agent["agent_id"],
            "name": agent["name"],
            "version": "1",
            "revision": None,
            "catalog": None,
            **fields,
        }
    )


def closed_before_an_ack(ws: WebSocketTestSession) -> WebSocketDisconnect:
    """Ask for an ack (unknown types are acknowledged): the session must close before it answers."""
    ws.send_json({"type": "ping", "seq": 99})
    with pytest.raises(WebSocketDisconnect) as closed:
        receive_until(ws, "ack")
    return closed.value


def closed_soon(ws: WebSocketTestSession, within_s: float = 10) -> WebSocketDisconnect:
    """The session closes within `within_s` (asked for acks meanwhile, so the wait never blocks)."""
    deadline = time.monotonic() + within_s
    with pytest.raises(WebSocketDisconnect) as closed:
        while time.monotonic() < deadline:
            ws.send_json({"type": "ping", "seq": 99})
            receive_until(ws, "ack")
            time.sleep(0.02)
    return closed.value


def receive_until(ws: WebSocketTestSession, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = ws.receive_json()
        if message["type"] == kind:
            return message


def test_a_revocation_between_the_credential_check_and_the_registration_is_not_missed(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = enrolled(db, "stolen")
    checked = fleet.identify

    def identify_then_revoked(database: Database, credential: str) -> fleet.AgentIdentity | None:
        found = checked(database, credential)
        # The revocation commits now: its event reaches no session of this agent (none is registered).
        fleet.revoke_agent(database, "team", agent["agent_id"], actor="test")
        return found

    monkeypatch.setattr(fleet, "identify", identify_then_revoked)
    with ExitStack() as stack:
        ws = open_session(client, agent, stack)
        hello(ws, agent)
        assert closed_before_an_ack(ws).code == 4401


def test_a_heartbeat_of_a_revoked_agent_closes_its_session_even_if_the_event_was_lost(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "HEARTBEAT_FLUSH_S", 0.05)
    agent = enrolled(db, "stolen")
    with ExitStack() as stack:
        ws = open_session(client, agent, stack)
        hello(ws, agent)
        receive_until(ws, "welcome")
        listener, db.listener = db.listener, None  # the revocation's event is lost (a LISTEN gap)
        fleet.revoke_agent(db, "team", agent["agent_id"], actor="test")
        db.listener = listener
        ws.send_json({"type": "heartbeat", "seq": 2, "revision": None})
        assert closed_soon(ws).code == 4401  # at the flush of that heartbeat


@pytest.mark.parametrize(
    ("first", "then", "field"),
    [
        ({"revision": "f" * 65}, None, "hello.revision"),
        ({"version": "v" * 65}, None, "hello.version"),
        ({"name": 7}, None, "hello.name"),
        ({}, {"type": "heartbeat", "seq": 2, "revision": "f" * 65}, "heartbeat.revision"),
        (
            {},
            {"type": "revision_status", "seq": 2, "revision": "f" * 65, "status": "applied"},
            "revision_status.revision",
        ),
    ],
)
def test_over_long_values_from_an_agent_close_its_session_with_4400(
    db: Database, client: TestClient, first: dict[str, Any], then: dict[str, Any] | None, field: str
) -> None:
    agent = enrolled(db, "long")
    with ExitStack() as stack:
        ws = open_session(client, agent, stack)
        hello(ws, agent, **first)
        if then is not None:
            receive_until(ws, "welcome")
            ws.send_json(then)
        closed = closed_before_an_ack(ws)
        assert closed.code == 4400 and field in str(closed.reason)
    # The hub is fine: the agent connects again with a sane hello.
    with ExitStack() as stack:
        ws = open_session(client, agent, stack)
        hello(ws, agent)
        assert receive_until(ws, "welcome")["workspace"] == "team"


def test_a_revision_is_read_once_for_all_sessions_and_pending_for_all_agents_at_once(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = [enrolled(db, f"agent-{i}") for i in range(6)]
    calls = {"current_revision": 0, "mark_pending": 0}
    for name in calls:
        original = getattr(fleet, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fleet, name, counted)
    with ExitStack() as stack:
        sessions = []
        for agent in agents[:5]:  # the sixth stays offline
            ws = open_session(client, agent, stack)
            hello(ws, agent)
            receive_until(ws, "welcome")
            sessions.append(ws)
        before = dict(calls)
        digest = fleet.apply_revision(db, "team", {"services": {"api": {"port": 1}}}, actor="test")[
            "revision"
        ]
        # Pending for every agent (the offline one too) in the revision's own transaction.
        listed = fleet.list_revisions(db, "team")[0]
        assert sorted((a["name"], a["status"]) for a in listed["agents"]) == [
            (f"agent-{i}", "pending") for i in range(6)
        ]
        for ws in sessions:
            pushed = receive_until(ws, "revision")
            assert pushed["revision"] == digest and pushed["document"] == {"services": {"api": {"port": 1}}}
        assert calls["current_revision"] - before["current_revision"] == 1
        assert calls["mark_pending"] == before["mark_pending"]
        for ws in sessions:
            ws.send_json({"type": "revision_status", "seq": 2, "revision": digest, "status": "applied"})
            receive_until(ws, "ack")
        statuses = {a["name"]: a["status"] for a in fleet.list_revisions(db, "team")[0]["agents"]}
        assert statuses == {**{f"agent-{i}": "applied" for i in range(5)}, "agent-5": "pending"}


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DataError("UPDATE agents", {}, Exception("value too long for type character varying(128)")), 4400),
        (OperationalError("UPDATE agents", {}, Exception("the database is gone")), 1011),
    ],
)
def test_a_database_error_in_a_session_closes_it_with_a_code(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception, code: int
) -> None:
    agent = enrolled(db, "odd")

    def refused(*_args: Any) -> None:
        raise error

    with ExitStack() as stack:
        ws = open_session(client, agent, stack)
        hello(ws, agent)
        receive_until(ws, "welcome")
        monkeypatch.setattr(fleet, "set_catalog", refused)
        ws.send_json({"type": "catalog", "seq": 2, "catalog": {"services": [], "mesh": None}})
        assert closed_before_an_ack(ws).code == code


def agent_row(db: Database, agent_id: str) -> Agent:
    with db.sessions() as session:
        found = session.get(Agent, agent_id)
        assert found is not None
        return found


def test_heartbeats_are_written_together_not_one_transaction_each(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "HEARTBEAT_FLUSH_S", 0.3)
    flushed: list[int] = []
    original = fleet.flush_heartbeats

    def counted(database: Database, beats: list[fleet.Beat]) -> dict[str, str]:
        flushed.append(len(beats))
        return original(database, beats)

    monkeypatch.setattr(fleet, "flush_heartbeats", counted)
    agents = [enrolled(db, f"agent-{i}") for i in range(3)]
    with ExitStack() as stack:
        sessions = []
        for agent in agents:
            ws = open_session(client, agent, stack)
            hello(ws, agent)
            receive_until(ws, "welcome")
            sessions.append(ws)
        hello_seen = agent_row(db, agents[0]["agent_id"]).last_seen
        assert hello_seen is not None
        for seq in range(2, 12):
            for ws in sessions:
                ws.send_json({"type": "heartbeat", "seq": seq, "revision": f"r{seq}"})
        for ws in sessions:  # every heartbeat was read once the pings after them are answered
            ws.send_json({"type": "ping", "seq": 50})
            receive_until(ws, "ack")
        deadline = time.monotonic() + 10
        while agent_row(db, agents[2]["agent_id"]).revision != "r11" and time.monotonic() < deadline:
            time.sleep(0.05)
        rows = [agent_row(db, agent["agent_id"]) for agent in agents]
        assert [row.revision for row in rows] == ["r11"] * 3
        assert all(row.online and (row.last_seen or 0) > hello_seen for row in rows)
        # 30 heartbeats, a few flushes of at most 3 agents (the last heartbeat of each session).
        assert sum(flushed) <= 6 and max(flushed) <= 3


def test_a_closing_session_writes_its_last_heartbeat_at_once(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "HEARTBEAT_FLUSH_S", 3600.0)
    agent = enrolled(db, "leaving")
    with ExitStack() as stack:
        ws = open_session(client, agent, stack)
        hello(ws, agent)
        receive_until(ws, "welcome")
        hello_seen = agent_row(db, agent["agent_id"]).last_seen
        time.sleep(0.01)
        ws.send_json({"type": "heartbeat", "seq": 2, "revision": "abc"})
        ws.send_json({"type": "ping", "seq": 3})
        receive_until(ws, "ack")
        assert agent_row(db, agent["agent_id"]).revision is None  # not written yet
        ws.send_text("not json")  # the hub ends the session (4400)
        with pytest.raises(WebSocketDisconnect):
            receive_until(ws, "ack")
        deadline = time.monotonic() + 10
        while agent_row(db, agent["agent_id"]).online and time.monotonic() < deadline:
            time.sleep(0.02)
        row = agent_row(db, agent["agent_id"])
    assert not row.online and row.revision == "abc" and (row.last_seen or 0) > (hello_seen or 0)


def test_an_older_session_is_closed_at_the_flush_after_a_newer_one_took_over(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "HEARTBEAT_FLUSH_S", 0.05)
    agent = enrolled(db, "twice")
    with ExitStack() as stack:
        old = open_session(client, agent, stack)
        hello(old, agent)
        receive_until(old, "welcome")
        new = open_session(client, agent, stack)
        hello(new, agent)
        receive_until(new, "welcome")
        old.send_json({"type": "heartbeat", "seq": 2, "revision": None})
        assert closed_soon(old).code == 4409
        new.send_json({"type": "heartbeat", "seq": 2, "revision": None})
        new.send_json({"type": "ping", "seq": 3})
        assert receive_until(new, "ack")["ack"] == 3


def test_revision_answers_are_recorded_in_one_batch_and_acked_after_it_commits(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "STATUS_BATCH_WAIT_S", 0.5)
    batches: list[int] = []
    original = fleet.record_statuses

    def counted(database: Database, reports: list[fleet.StatusReport]) -> None:
        batches.append(len(reports))
        original(database, reports)

    monkeypatch.setattr(fleet, "record_statuses", counted)
    agents = [enrolled(db, f"agent-{i}") for i in range(5)]
    with ExitStack() as stack:
        sessions = []
        for agent in agents:
            ws = open_session(client, agent, stack)
            hello(ws, agent)
            receive_until(ws, "welcome")
            sessions.append(ws)
        digest = fleet.apply_revision(db, "team", {"services": {}}, actor="test")["revision"]
        for ws in sessions:
            receive_until(ws, "revision")
        for index, ws in enumerate(sessions):
            status = "rejected" if index == 0 else "applied"
            ws.send_json({"type": "revision_status", "seq": 2, "revision": digest, "status": status})
        for index, ws in enumerate(sessions):
            assert receive_until(ws, "ack")["ack"] == 2
            # Acknowledged only once recorded.
            listed = {a["agent_id"]: a["status"] for a in fleet.list_revisions(db, "team")[0]["agents"]}
            assert listed[agents[index]["agent_id"]] == ("rejected" if index == 0 else "applied")
    assert batches == [5]
    with db.sessions() as session:
        actions = [
            row.action for row in session.query(AuditEntry).filter(AuditEntry.action.like("revision.%"))
        ]
    assert sorted(actions) == ["revision.applied"] * 4 + ["revision.apply", "revision.rejected"]


def test_an_answer_the_database_refuses_fails_only_its_own_session(
    db: Database, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "STATUS_BATCH_WAIT_S", 0.5)
    original = fleet.record_statuses
    bad = enrolled(db, "bad")

    def refusing(database: Database, reports: list[fleet.StatusReport]) -> None:
        if any(report.agent_id == bad["agent_id"] for report in reports):
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        original(database, reports)

    monkeypatch.setattr(fleet, "record_statuses", refusing)
    good = enrolled(db, "good")
    with ExitStack() as stack:
        sessions = []
        for agent in (bad, good):
            ws = open_session(client, agent, stack)
            hello(ws, agent)
            receive_until(ws, "welcome")
            sessions.append(ws)
        digest = fleet.apply_revision(db, "team", {"services": {}}, actor="test")["revision"]
        for ws in sessions:
            receive_until(ws, "revision")
            ws.send_json({"type": "revision_status", "seq": 2, "revision": digest, "status": "applied"})
        assert receive_until(sessions[1], "ack")["ack"] == 2
        with pytest.raises(WebSocketDisconnect) as closed:
            receive_until(sessions[0], "ack")
        assert closed.value.code == 1011
