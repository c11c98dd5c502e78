"""The hub's database: engine, migrations at start-up, transactions that carry change events.

A change that other sessions must hear about (a new revision, an agent's catalog) records an `Event` in
its transaction. On PostgreSQL the event is a NOTIFY in that same transaction, so every replica (this
one included) hears it exactly when the change is visible; on SQLite (one hub process) it is handed to
the local listener after the commit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from devmesh.hub import limits

DEFAULT_DB_FILE = "devmesh-hub.db"
_MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseError(Exception):
    """The database URL is unusable or the database cannot be reached or migrated."""


@dataclass(frozen=True, slots=True)
class Event:
    """`kind` is "revision" (a workspace got a new current revision) or "peers" (its online agents or
    their catalogs changed)."""

    kind: str
    workspace_id: int

    def encode(self) -> str:
        return json.dumps({"kind": self.kind, "workspace_id": self.workspace_id})

    @classmethod
    def decode(cls, payload: str) -> Event:
        data = json.loads(payload)
        return cls(kind=str(data["kind"]), workspace_id=int(data["workspace_id"]))


def default_url() -> str:
    """$DEVMESH_HUB_DB, else a SQLite file in the current folder."""
    return os.environ.get("DEVMESH_HUB_DB") or f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` as psycopg 3 (the driver the hub extra installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def masked_url(url: str) -> str:
    """`url` fit for messages and logs: its password (if any) shown as ***, even if it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        scheme, separator, rest = url.rpartition("://")
        if "@" in rest:  # whoever and whatever comes before the host
            rest = "***@" + rest.rpartition("@")[2]
        return scheme + separator + rest


def libpq_url(url: str) -> str:
    """The same database as a URL psycopg itself accepts (for the LISTEN connection)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Database:
    """One engine and its sessions; `listener` receives events after commit on SQLite."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        try:
            parsed = make_url(self.url)
        except Exception:
            raise DatabaseError(
                f"--db {masked_url(url)!r} is not a database URL (use sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST/DB)"
            ) from None  # the parser's own message may quote the URL, password included
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        if not self.is_postgres and parsed.get_backend_name() != "sqlite":
            raise DatabaseError(
                f"--db {masked_url(url)!r}: the hub supports sqlite:/// and postgresql+psycopg:// URLs"
            )
        self.engine: Engine = _make_engine(self.url, sqlite=not self.is_postgres)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.listener: Callable[[Event], None] | None = None

    def migrate(self) -> None:
        """Bring the schema to the newest migration (several replicas at once: one at a time)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                if self.is_postgres:
                    connection.execute(text("SELECT pg_advisory_xact_lock(7262001)"))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except Exception as error:
            if isinstance(error, DatabaseError):
                raise
            raise DatabaseError(f"cannot migrate the hub database {self.safe_url()}: {error}") from error

    def safe_url(self) -> str:
        return masked_url(self.url)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose changes commit together (or not at all) with their events and audit rows."""
        session = self.sessions()
        session.info["events"] = []
        try:
            yield session
            events: list[Event] = session.info["events"]
            if self.is_postgres:
                for item in dict.fromkeys(events):
                    session.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": limits.NOTIFY_CHANNEL, "payload": item.encode()},
                    )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        if not self.is_postgres and self.listener is not None:
            for item in dict.fromkeys(events):
                self.listener(item)

    def dispose(self) -> None:
        self.engine.dispose()


def emit(session: Session, kind: str, workspace_id: int) -> None:
    """Record an event to publish with this session's commit."""
    session.info.setdefault("events", []).append(Event(kind, workspace_id))


def _make_engine(url: str, *, sqlite: bool) -> Engine:
    if not sqlite:
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine
