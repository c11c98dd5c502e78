"""The store on a real PostgreSQL where it differs from SQLite: replicas starting together on a fresh
database (one JWT secret, no IntegrityError)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from devmesh.hub import fleet, store
from devmesh.hub.database import Database, libpq_url
from devmesh.hub.server import create_app
from engines.postgres import PostgresServer, postgres_server

__all__ = ["postgres_server"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


def test_a_replica_losing_the_race_for_the_jwt_secret_reads_the_winners(
    postgres_server: PostgresServer,
) -> None:
    db = Database(postgres_server.new_database())
    db.migrate()
    found: dict[str, Any] = {}

    def replica() -> None:
        try:
            found["secret"] = store.jwt_secret(db)
        except Exception as error:  # reported below
            found["error"] = error

    # Another replica inserted its secret and has not committed yet: this one reads no secret, inserts
    # its own and waits on the unique key until the other commits.
    with psycopg.connect(libpq_url(db.url)) as other, psycopg.connect(libpq_url(db.url)) as watch:
        other.execute("INSERT INTO settings (key, value) VALUES ('jwt_secret', %s)", ("w" * 48,))
        thread = threading.Thread(target=replica)
        thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            watch.commit()
            if row is not None and row[0] > 0:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the replica never waited on the other's secret")
        other.commit()
        thread.join(20)
    db.dispose()
    assert "error" not in found, found
    assert found["secret"] == "w" * 48


def test_replicas_starting_together_on_a_fresh_database_share_one_secret(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.new_database()
    count = 6
    gate = threading.Barrier(count)
    secrets: list[str] = []
    errors: list[BaseException] = []

    def replica() -> None:
        db = Database(url)
        try:
            gate.wait(10)
            db.migrate()
            secrets.append(create_app(db).state.hub.secret)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            db.dispose()

    threads = [threading.Thread(target=replica) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(secrets) == count and len(set(secrets)) == 1


def test_heartbeats_and_revision_answers_are_written_in_batches_on_postgres(
    postgres_server: PostgresServer,
) -> None:
    db = Database(postgres_server.new_database())
    db.migrate()
    try:
        store.add_workspace(db, "team", actor="test")
        ids = []
        for name in ("a", "b", "c"):
            token = store.create_enrollment(db, "team", 60, actor="test")["token"]
            ids.append(fleet.enroll(db, token, name, "h", "1")["agent_id"])
            fleet.hello(db, ids[-1], f"s-{name}", name=name, version="1", revision=None, catalog=None)
        fleet.revoke_agent(db, "team", ids[2], actor="test")
        now = time.time() + 1
        beats = [fleet.Beat(ids[0], "s-a", now, "r1"), fleet.Beat(ids[1], "s-old", now, "r1")]
        beats.append(fleet.Beat(ids[2], "s-c", now, None))
        assert fleet.flush_heartbeats(db, beats) == {ids[1]: "replaced", ids[2]: "revoked"}
        rows = {row["agent_id"]: row for row in fleet.list_agents(db, "team")}
        assert rows[ids[0]]["last_seen"] == now and rows[ids[0]]["revision"] == "r1"
        assert rows[ids[1]]["revision"] is None and rows[ids[1]]["last_seen"] < now
        digest = fleet.apply_revision(db, "team", {"services": {}}, actor="test")["revision"]
        fleet.record_statuses(
            db,
            [
                fleet.StatusReport(ids[0], digest, "applied", None),
                fleet.StatusReport(ids[1], digest, "rejected", "x"),
            ],
        )
        listed = {s["agent_id"]: s["status"] for s in fleet.list_revisions(db, "team")[0]["agents"]}
        assert listed == {ids[0]: "applied", ids[1]: "rejected"}
        assert [e["action"] for e in store.audit_log(db, "team", 2)] == [
            "revision.rejected",
            "revision.applied",
        ]
    finally:
        db.dispose()
