"""The hub's store on a real SQLite file: every change and its audit row commit together, tokens are
one-time, secrets are kept only hashed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from devmesh.hub import fleet, security, store
from devmesh.hub.database import Database, Event
from devmesh.hub.models import Agent, ApiKey, AuditEntry, EnrollmentToken


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    database.migrate()
    store.add_user(
        database,
        "alice",
        "alice-password",
        actor="test",
        workspace="team",
        role="admin",
        create_workspace=True,
    )
    return database


def actions(db: Database) -> list[str]:
    with db.sessions() as session:
        return [row.action for row in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]


def test_migrations_are_idempotent_and_the_secret_is_made_once(db: Database) -> None:
    db.migrate()
    first = store.jwt_secret(db)
    assert store.jwt_secret(db) == first and len(first) >= 48


def test_a_failed_change_leaves_no_audit_row(db: Database) -> None:
    before = actions(db)
    with pytest.raises(store.StoreError, match="no workspace named 'nope'"):
        store.create_enrollment(db, "nope", 60, actor="test")
    with pytest.raises(store.StoreError, match="unknown top-level key"):
        fleet.apply_revision(db, "team", {"routes": {}}, actor="test")
    assert actions(db) == before == ["workspace.create", "user.create", "member.set"]


def test_enrollment_is_one_time_expires_and_keeps_only_hashes(db: Database) -> None:
    created = store.create_enrollment(db, "team", 60, actor="user:alice")
    answer = fleet.enroll(db, created["token"], "laptop", "host-1", "0.9")
    with pytest.raises(store.StoreError, match="already used") as used:
        fleet.enroll(db, created["token"], "laptop", "host-1", "0.9")
    assert used.value.status == 401
    with db.sessions() as session:
        agent = session.get(Agent, answer["agent_id"])
        token_row = session.scalars(select(EnrollmentToken)).one()
        assert agent is not None and agent.credential_hash == security.digest(answer["credential"])
        assert answer["credential"] not in agent.credential_hash and token_row.token_hash == security.digest(
            created["token"]
        )
    assert fleet.identify(db, answer["credential"]) == fleet.AgentIdentity(
        answer["agent_id"], agent.workspace_id, "team"
    )
    assert fleet.identify(db, "forged") is None

    short = store.create_enrollment(db, "team", 0.05, actor="user:alice")
    time.sleep(0.1)
    with pytest.raises(store.StoreError, match="expired"):
        fleet.enroll(db, short["token"], "late", "h", "1")
    assert actions(db)[-3:] == ["enrollment.create", "agent.enroll", "enrollment.create"]


def test_revisions_are_hashed_canonically_and_not_duplicated(db: Database) -> None:
    events: list[Event] = []
    db.listener = events.append
    one = fleet.apply_revision(
        db, "team", {"services": {"b": {"port": 2}, "a": {"port": 1}}}, actor="user:alice"
    )
    again = fleet.apply_revision(
        db, "team", {"services": {"a": {"port": 1}, "b": {"port": 2}}}, actor="user:alice"
    )
    assert one["created"] and not again["created"] and one["revision"] == again["revision"]
    assert one["revision"] == fleet.canonical_hash({"services": {"a": {"port": 1}, "b": {"port": 2}}})
    assert [e.kind for e in events] == ["revision"]
    with pytest.raises(store.StoreError, match=r"\[faults\] must be a table of tables"):
        fleet.check_document({"faults": {"x": 1}})


def test_statuses_sessions_and_peers(db: Database) -> None:
    agents = [
        fleet.enroll(db, store.create_enrollment(db, "team", 60, actor="t")["token"], n, "h", "1")
        for n in ("a", "b")
    ]
    workspace_id = fleet.identify(db, agents[0]["credential"]).workspace_id  # type: ignore[union-attr]
    fleet.hello(
        db,
        agents[0]["agent_id"],
        "s1",
        name="a",
        version="1",
        revision=None,
        catalog={"services": [], "mesh": "h:1"},
    )
    fleet.hello(db, agents[1]["agent_id"], "s2", name="b", version="1", revision=None, catalog=None)
    assert [p["name"] for p in fleet.peers(db, workspace_id, exclude=agents[1]["agent_id"])] == ["a"]
    assert fleet.peers(db, workspace_id, exclude=agents[0]["agent_id"])[0]["mesh"] is None
    # A newer session of the same agent wins; the old one's close changes nothing.
    fleet.hello(db, agents[0]["agent_id"], "s3", name="a", version="1", revision=None, catalog=None)
    beats = [fleet.Beat(agents[0]["agent_id"], "s1", time.time(), None)]
    assert fleet.flush_heartbeats(db, beats) == {agents[0]["agent_id"]: "replaced"}
    fleet.closed(db, agents[0]["agent_id"], "s1")
    assert sorted(p["name"] for p in fleet.peers(db, workspace_id, exclude="")) == ["a", "b"]
    fleet.closed(db, agents[0]["agent_id"], "s3")
    assert [p["name"] for p in fleet.peers(db, workspace_id, exclude="")] == ["b"]

    digest = fleet.apply_revision(db, "team", {"services": {}}, actor="t")["revision"]
    fleet.mark_pending(db, agents[1]["agent_id"], workspace_id, digest)
    fleet.record_status(db, agents[1]["agent_id"], digest, "rejected", "services.x: bad")
    listed = fleet.list_revisions(db, "team")
    # Every agent is pending from the moment the revision exists (a, offline, included).
    assert sorted(
        (s["agent_id"], s["name"], s["status"], s["details"], s["time"] > 0) for s in listed[0]["agents"]
    ) == sorted(
        [
            (agents[0]["agent_id"], "a", "pending", None, True),
            (agents[1]["agent_id"], "b", "rejected", "services.x: bad", True),
        ]
    )
    with pytest.raises(store.StoreError, match="is not one of applied, rejected"):
        fleet.record_status(db, agents[1]["agent_id"], digest, "maybe", None)


def test_api_keys_and_logins(db: Database) -> None:
    created = store.create_api_key(db, "team", "ci", "editor", actor="user:alice")
    principal = store.key_principal(db, created["key"])
    assert principal is not None and list(principal.roles.values()) == ["editor"]
    with db.sessions() as session:
        assert session.scalars(select(ApiKey.key_hash)).one() == security.digest(created["key"])
    store.revoke_api_key(db, "team", created["id"], actor="user:alice")
    assert store.key_principal(db, created["key"]) is None
    assert store.login(db, "alice", "alice-password") is not None
    assert store.login(db, "alice", "wrong") is None and store.login(db, "nobody", "x") is None
    with pytest.raises(store.StoreError, match="role 'root' is not one of"):
        store.create_api_key(db, "team", "x", "root", actor="t")


def test_jwt_is_checked_for_secret_and_expiry() -> None:
    issued = security.issue_jwt("s" * 40, 7, "alice")
    assert security.read_jwt("s" * 40, issued.token) == 7
    with pytest.raises(security.InvalidToken):
        security.read_jwt("t" * 40, issued.token)
    old = security.issue_jwt("s" * 40, 7, "alice", now=time.time() - 2 * 86400)
    with pytest.raises(security.InvalidToken, match="expired"):
        security.read_jwt("s" * 40, old.token)


def test_bad_database_urls_say_what_to_use() -> None:
    from devmesh.hub.database import DatabaseError

    with pytest.raises(DatabaseError, match="supports sqlite:/// and postgresql"):
        Database("mysql://x/y")
    assert Database("postgresql://u@h/d").url == "postgresql+psycopg://u@h/d"


def test_a_password_for_an_existing_user_is_refused_unless_set_on_the_database(db: Database) -> None:
    store.add_workspace(db, "other", actor="test")
    # As the API does for the admin of "other": alice (admin of "team") must not change hands.
    with pytest.raises(store.StoreError, match="user 'alice' exists already") as refused:
        store.add_user(db, "alice", "taken-over", actor="key:x", workspace="other", may_set_password=False)
    assert refused.value.status == 409
    assert store.login(db, "alice", "taken-over") is None and store.login(db, "alice", "alice-password")
    # Adding her without a password is fine; the CLI on the database may still change it.
    assert not store.add_user(db, "alice", None, actor="key:x", workspace="other", may_set_password=False)
    assert store.add_user(db, "bob", "bob-password", actor="key:x", workspace="other", may_set_password=False)
    store.add_user(db, "alice", "changed-on-the-db", actor="cli:root")
    assert store.login(db, "alice", "changed-on-the-db") is not None


def test_a_document_applied_again_starts_a_new_rollout(db: Database) -> None:
    agents = [
        fleet.enroll(db, store.create_enrollment(db, "team", 60, actor="t")["token"], n, "h", "1")
        for n in ("a", "b")
    ]
    a, b = (agent["agent_id"] for agent in agents)
    first = fleet.apply_revision(db, "team", {"services": {"x": {"port": 1}}}, actor="t")["revision"]
    for agent_id in (a, b):
        fleet.record_status(db, agent_id, first, "applied", None)
    second = fleet.apply_revision(db, "team", {"services": {"x": {"port": 2}}}, actor="t")["revision"]
    fleet.record_status(db, a, second, "applied", None)
    fleet.record_status(db, b, second, "rejected", "no")  # b keeps running the first one
    assert fleet.apply_revision(db, "team", {"services": {"x": {"port": 1}}}, actor="t")["revision"] == first

    listed = fleet.list_revisions(db, "team")
    assert [r["revision"] for r in listed] == [first, second, first]
    # a has not acknowledged this rollout yet; b runs that document already.
    assert {s["name"]: s["status"] for s in listed[0]["agents"]} == {"a": "pending", "b": "applied"}
    assert listed[2]["agents"] == []  # the statuses are the latest rollout's, listed once
    fleet.record_status(db, a, first, "applied", None)
    assert {s["name"]: s["status"] for s in fleet.list_revisions(db, "team")[0]["agents"]} == {
        "a": "applied",
        "b": "applied",
    }


def test_values_longer_than_their_columns_are_refused_naming_the_field(db: Database) -> None:
    token = store.create_enrollment(db, "team", 60, actor="t")["token"]
    with pytest.raises(store.StoreError, match="name is longer than 255") as refused:
        fleet.enroll(db, token, "n" * 256, "h", "1")
    assert refused.value.status == 422
    agent = fleet.enroll(db, token, "n" * 255, "h", "1")  # the token is still unused
    with pytest.raises(store.StoreError, match=r"revision_status\.revision is longer than 64"):
        fleet.record_status(db, agent["agent_id"], "f" * 65, "applied", None)


def test_database_errors_never_show_the_password() -> None:
    from devmesh.hub.database import DatabaseError

    for url in (
        "mysql://hub:s3cret@db/hub",
        "postgresql+psycopg://hub:s3cret@db:notaport/hub",
        "postgresql+psycopg://hub:s3cret@127.0.0.1:1/hub",  # parses; nothing listens there
    ):
        with pytest.raises(DatabaseError) as failed:
            Database(url).migrate()
        assert "s3cret" not in str(failed.value) and "***" in str(failed.value), str(failed.value)
