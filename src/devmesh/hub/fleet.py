"""Agents and revisions: enrollment, session state (online, last seen, catalog), the workspace's
revisions and each agent's answer. Changes other sessions must hear about emit an event (database.py)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, bindparam, case, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session

from devmesh.hub import limits, security
from devmesh.hub.database import Database, emit
from devmesh.hub.models import Agent, EnrollmentToken, Revision, RevisionStatus, Workspace
from devmesh.hub.store import StoreError, audit, find_workspace

DOCUMENT_KEYS = ("services", "faults", "scenarios")
STATUSES = ("applied", "rejected")


class AgentRevoked(StoreError):
    """The agent's credential was revoked (its session closes with 4401)."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} was revoked", 401)


def check_text(field: str, value: str | None, longest: int) -> str | None:
    """A string from an agent, bounded before it reaches a column (PostgreSQL refuses longer ones)."""
    if value is not None and len(value) > longest:
        raise StoreError(f"{field} is longer than {longest} characters", 422)
    return value


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    agent_id: str
    workspace_id: int
    workspace: str


def canonical_hash(document: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces): the revision's name everywhere."""
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def check_document(document: Any) -> dict[str, Any]:
    """The hub checks only the shape; each agent validates the content against its own config."""
    if not isinstance(document, dict):
        raise StoreError(
            "the revision document must be an object with [services], [faults] or [scenarios]", 422
        )
    unknown = sorted(set(document) - set(DOCUMENT_KEYS))
    if unknown:
        raise StoreError(
            f"the revision document has unknown top-level key(s) {', '.join(unknown)}: "
            f"only {', '.join(DOCUMENT_KEYS)} are allowed",
            422,
        )
    for key, value in document.items():
        if not isinstance(value, dict) or not all(isinstance(entry, dict) for entry in value.values()):
            raise StoreError(f"[{key}] must be a table of tables ([{key}.NAME] entries)", 422)
    if len(json.dumps(document)) > limits.DOCUMENT_MAX_BYTES:
        raise StoreError(f"the revision document is larger than {limits.DOCUMENT_MAX_BYTES} bytes", 413)
    return document


def is_online(agent: Agent, now: float) -> bool:
    return bool(
        agent.online and agent.last_seen is not None and now - agent.last_seen < limits.OFFLINE_AFTER_S
    )


# -- enrollment and credentials -------------------------------------------------------------------


def enroll(db: Database, token: str, name: str, hostname: str, version: str) -> dict[str, str]:
    """Exchange a one-time token for an agent credential; StoreError(401) for a bad token."""
    check_text("name", name, limits.AGENT_NAME_MAX)
    check_text("hostname", hostname, limits.HOSTNAME_MAX)
    check_text("version", version, limits.VERSION_MAX)
    now = time.time()
    credential = security.new_credential()
    with db.transaction() as session:
        row = session.scalar(
            select(EnrollmentToken)
            .where(EnrollmentToken.token_hash == security.digest(token))
            .with_for_update()
        )
        if row is None:
            raise StoreError("unknown enrollment token", 401)
        if row.revoked:
            raise StoreError("this enrollment token was revoked; ask for a new one (devmesh hub enroll)", 401)
        if row.used_at is not None:
            raise StoreError(
                "this enrollment token was already used; ask for a new one (devmesh hub enroll)", 401
            )
        if row.expires <= now:
            raise StoreError("this enrollment token expired; ask for a new one (devmesh hub enroll)", 401)
        # Mark it used only if nobody did in between (two enrolments racing on two replicas).
        claimed = session.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
            .values(used_at=now)
        )
        if getattr(claimed, "rowcount", 1) != 1:
            raise StoreError(
                "this enrollment token was already used; ask for a new one (devmesh hub enroll)", 401
            )
        agent_id = uuid.uuid4().hex
        row.used_by = agent_id
        session.add(
            Agent(
                id=agent_id,
                workspace_id=row.workspace_id,
                name=name[:128] or "agent",
                hostname=hostname,
                version=version,
                credential_hash=security.digest(credential),
                created=now,
                online=False,
                revoked=False,
            )
        )
        workspace = session.get(Workspace, row.workspace_id)
        assert workspace is not None
        audit(
            session,
            f"agent:{agent_id}",
            "agent.enroll",
            name,
            workspace_id=row.workspace_id,
            details={"hostname": hostname, "version": version, "token": row.id},
        )
        return {"agent_id": agent_id, "credential": credential, "workspace": workspace.name}


def identify(db: Database, credential: str) -> AgentIdentity | None:
    with db.sessions() as session:
        agent = session.scalar(select(Agent).where(Agent.credential_hash == security.digest(credential)))
        if agent is None or agent.revoked:
            return None
        workspace = session.get(Workspace, agent.workspace_id)
        assert workspace is not None
        return AgentIdentity(agent.id, agent.workspace_id, workspace.name)


def revoke_agent(db: Database, workspace: str, agent_id: str, *, actor: str) -> None:
    with db.transaction() as session:
        ws = find_workspace(session, workspace)
        agent = session.get(Agent, agent_id)
        if agent is None or agent.workspace_id != ws.id:
            raise StoreError(f"no agent {agent_id!r} in workspace {workspace!r}", 404)
        agent.revoked = True
        agent.online = False
        agent.session = None
        audit(session, actor, "agent.revoke", agent.name, workspace_id=ws.id, details={"agent_id": agent_id})
        emit(session, "peers", ws.id)
        emit(session, "revoke", ws.id)


def is_revoked(db: Database, agent_id: str) -> bool:
    with db.sessions() as session:
        agent = session.get(Agent, agent_id)
        return agent is None or agent.revoked


# -- session state ----------------------------------------------------------------------------------


def hello(
    db: Database,
    agent_id: str,
    session_id: str,
    *,
    name: str,
    version: str,
    revision: str | None,
    catalog: Any,
) -> None:
    """The session said hello: it holds the agent now. AgentRevoked if the agent was revoked, even
    between the credential check and this (that revocation's event reached no session of it)."""
    check_text("hello.name", name, limits.AGENT_NAME_MAX)
    check_text("hello.version", version, limits.VERSION_MAX)
    check_text("hello.revision", revision, limits.REVISION_MAX)
    with db.transaction() as session:
        agent = _agent(session, agent_id, lock=True)
        if agent.revoked:
            raise AgentRevoked(agent_id)
        agent.name = name[:128] or agent.name
        agent.version = version
        agent.revision = revision
        agent.catalog = catalog if isinstance(catalog, dict) else None
        agent.online = True
        agent.session = session_id
        agent.last_seen = time.time()
        emit(session, "peers", agent.workspace_id)


@dataclass(frozen=True, slots=True)
class Beat:
    """The newest heartbeat of a session, kept in memory until the next flush (`flush_heartbeats`)."""

    agent_id: str
    session_id: str
    last_seen: float
    revision: str | None


def flush_heartbeats(db: Database, beats: list[Beat]) -> dict[str, str]:
    """Write the heartbeats a process gathered since its last flush, in one transaction: last_seen,
    online and the reported revision of each agent its session still holds (one executemany).

    Returns the agents whose session should close: "revoked" (or gone) and "replaced" (another session
    holds the agent now). An agent heard from again after it went stale makes its workspace's peers
    change (an event)."""
    if not beats:
        return {}
    outcome: dict[str, str] = {}
    with db.transaction() as session:
        rows = {
            row.id: row
            for row in session.execute(
                select(
                    Agent.id, Agent.workspace_id, Agent.session, Agent.revoked, Agent.online, Agent.last_seen
                ).where(Agent.id.in_({beat.agent_id for beat in beats}))
            )
        }
        now = time.time()
        updates: list[dict[str, Any]] = []
        for beat in beats:
            row = rows.get(beat.agent_id)
            if row is None or row.revoked:
                outcome[beat.agent_id] = "revoked"
                continue
            if row.session != beat.session_id:
                outcome[beat.agent_id] = "replaced"
                continue
            if not (
                row.online and row.last_seen is not None and now - row.last_seen < limits.OFFLINE_AFTER_S
            ):
                emit(session, "peers", row.workspace_id)
            updates.append(
                {"b_id": beat.agent_id, "b_session": beat.session_id, "b_seen": beat.last_seen,
                 "b_revision": beat.revision}
            )  # fmt: skip
        if updates:
            # The session must still hold the agent when the row is written (a takeover or revocation
            # may commit between the read above and this, on another replica).
            session.connection().execute(
                update(Agent)
                .where(Agent.id == bindparam("b_id"), Agent.session == bindparam("b_session"))
                .values(
                    last_seen=bindparam("b_seen"),
                    online=True,
                    revision=func.coalesce(bindparam("b_revision", type_=String), Agent.revision),
                ),
                updates,
            )
    return outcome


def set_catalog(db: Database, agent_id: str, catalog: Any) -> None:
    with db.transaction() as session:
        agent = _agent(session, agent_id)
        agent.catalog = catalog if isinstance(catalog, dict) else None
        agent.last_seen = time.time()
        emit(session, "peers", agent.workspace_id)


def closed(db: Database, agent_id: str, session_id: str, last: Beat | None = None) -> None:
    """The session ended: offline, unless a newer session holds the agent already. `last` is its
    heartbeat not flushed yet, written now (last_seen and revision)."""
    with db.transaction() as session:
        agent = session.get(Agent, agent_id)
        if agent is not None and agent.session == session_id:
            agent.online = False
            agent.session = None
            if last is not None:
                agent.last_seen = max(agent.last_seen or 0.0, last.last_seen)
                if last.revision is not None:
                    agent.revision = last.revision
            emit(session, "peers", agent.workspace_id)


def reset_sessions(db: Database) -> None:
    """At the start of the only hub (SQLite): no session survives a restart."""
    with db.transaction() as session:
        session.execute(update(Agent).values(online=False, session=None))


def peers(db: Database, workspace_id: int, *, exclude: str) -> list[dict[str, Any]]:
    """The workspace's other online agents and their catalogs, as the `peers` message lists them."""
    now = time.time()
    with db.sessions() as session:
        rows = session.scalars(
            select(Agent).where(Agent.workspace_id == workspace_id, Agent.online.is_(True)).order_by(Agent.id)
        ).all()
        found = []
        for agent in rows:
            if agent.id == exclude or agent.revoked or not is_online(agent, now):
                continue
            catalog = agent.catalog or {"services": [], "mesh": None}
            mesh = catalog.get("mesh") if isinstance(catalog.get("mesh"), str) else None
            found.append({"agent_id": agent.id, "name": agent.name, "mesh": mesh, "catalog": catalog})
        return found


def list_agents(db: Database, workspace: str) -> list[dict[str, Any]]:
    now = time.time()
    with db.sessions() as session:
        ws = find_workspace(session, workspace)
        rows = session.scalars(select(Agent).where(Agent.workspace_id == ws.id).order_by(Agent.name)).all()
        return [
            {
                "agent_id": a.id,
                "name": a.name,
                "hostname": a.hostname,
                "version": a.version,
                "online": is_online(a, now) and not a.revoked,
                "last_seen": a.last_seen,
                "revision": a.revision,
                "revoked": a.revoked,
                "catalog": a.catalog,
            }
            for a in rows
        ]


# -- revisions --------------------------------------------------------------------------------------


def apply_revision(db: Database, workspace: str, document: Any, *, actor: str) -> dict[str, Any]:
    """Make `document` the workspace's current revision (unchanged if it already is).

    In the same transaction every agent of the workspace gets its status for this rollout: pending,
    or applied for an agent that runs this document already (applied again after another: A, B, A).
    Two statements whatever the number of agents; sessions then only push the document."""
    check_document(document)
    digest = canonical_hash(document)
    with db.transaction() as session:
        ws = find_workspace(session, workspace)
        current = _current(session, ws.id)
        if current is not None and current.hash == digest:
            return {"revision": digest, "created": False, "workspace": workspace}
        row = Revision(workspace_id=ws.id, hash=digest, document=document, author=actor, created=time.time())
        session.add(row)
        _start_rollout(session, ws.id, digest)
        audit(
            session, actor, "revision.apply", digest, workspace_id=ws.id, details={"keys": sorted(document)}
        )
        emit(session, "revision", ws.id)
        return {"revision": digest, "created": True, "workspace": workspace}


def _start_rollout(session: Session, workspace_id: int, digest: str) -> None:
    """Replace the statuses an earlier rollout of `digest` left by this rollout's."""
    session.execute(
        delete(RevisionStatus).where(
            RevisionStatus.workspace_id == workspace_id, RevisionStatus.revision_hash == digest
        )
    )
    runs_it = Agent.revision == digest
    session.execute(
        insert(RevisionStatus).from_select(
            ["workspace_id", "agent_id", "revision_hash", "status", "details", "time"],
            select(
                literal(workspace_id),
                Agent.id,
                literal(digest),
                case((runs_it, literal("applied")), else_=literal("pending")),
                literal(None),
                literal(time.time()),
            ).where(Agent.workspace_id == workspace_id, Agent.revoked.is_(False)),
        )
    )


def current_revision(db: Database, workspace_id: int) -> tuple[str, dict[str, Any]] | None:
    with db.sessions() as session:
        row = _current(session, workspace_id)
        return None if row is None else (row.hash, row.document)


def mark_pending(db: Database, agent_id: str, workspace_id: int, revision: str) -> None:
    """A session (re)sends `revision` to its agent when it connects: pending until it answers."""
    with db.transaction() as session:
        row = session.scalar(
            select(RevisionStatus).where(
                RevisionStatus.agent_id == agent_id, RevisionStatus.revision_hash == revision
            )
        )
        if row is None:
            session.add(
                RevisionStatus(
                    workspace_id=workspace_id,
                    agent_id=agent_id,
                    revision_hash=revision,
                    status="pending",
                    details=None,
                    time=time.time(),
                )
            )
        elif row.status != "pending":
            row.status, row.details, row.time = "pending", None, time.time()


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An agent's `revision_status` answer."""

    agent_id: str
    revision: str
    status: str
    details: str | None


def check_status(report: StatusReport) -> StatusReport:
    if report.status not in STATUSES:
        raise StoreError(f"revision_status status {report.status!r} is not one of {', '.join(STATUSES)}", 422)
    check_text("revision_status.revision", report.revision, limits.REVISION_MAX)
    return report


def record_status(db: Database, agent_id: str, revision: str, status: str, details: str | None) -> None:
    record_statuses(db, [StatusReport(agent_id, revision, status, details)])


def record_statuses(db: Database, reports: list[StatusReport]) -> None:
    """Record answers (of one agent or many) in one transaction, each with its audit row: all or none
    (StoreError 404 if an agent is gone). A few statements whatever the number of answers."""
    for report in reports:
        check_status(report)
    if not reports:
        return
    with db.transaction() as session:
        ids = {report.agent_id for report in reports}
        agents = {agent.id: agent for agent in session.scalars(select(Agent).where(Agent.id.in_(ids)))}
        for agent_id in ids - set(agents):
            raise StoreError(f"no agent {agent_id!r}", 404)
        rows = {
            (row.agent_id, row.revision_hash): row
            for row in session.scalars(
                select(RevisionStatus).where(
                    RevisionStatus.agent_id.in_(ids),
                    RevisionStatus.revision_hash.in_({report.revision for report in reports}),
                )
            )
        }
        now = time.time()
        for report in reports:
            agent = agents[report.agent_id]
            row = rows.get((report.agent_id, report.revision))
            if row is None:
                row = RevisionStatus(
                    workspace_id=agent.workspace_id, agent_id=report.agent_id, revision_hash=report.revision
                )
                session.add(row)
                rows[(report.agent_id, report.revision)] = row
            row.status = report.status
            row.details = report.details
            row.time = now
            if report.status == "applied":
                agent.revision = report.revision
            audit(
                session,
                f"agent:{report.agent_id}",
                f"revision.{report.status}",
                report.revision,
                workspace_id=agent.workspace_id,
                details={"agent": agent.name, "details": report.details}
                if report.details
                else {"agent": agent.name},
            )


def list_revisions(db: Database, workspace: str, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first. Statuses are per document (agents answer with its hash): a document applied
    again lists them under its newest row, where they describe the latest rollout."""
    with db.sessions() as session:
        ws = find_workspace(session, workspace)
        rows = session.scalars(
            select(Revision).where(Revision.workspace_id == ws.id).order_by(Revision.id.desc()).limit(limit)
        ).all()
        names = {a.id: a.name for a in session.scalars(select(Agent).where(Agent.workspace_id == ws.id))}
        newest: dict[str, int] = {}
        for r in rows:
            newest.setdefault(r.hash, r.id)
        statuses: dict[str, list[dict[str, Any]]] = {}
        for status in session.scalars(
            select(RevisionStatus)
            .where(
                RevisionStatus.workspace_id == ws.id, RevisionStatus.revision_hash.in_({r.hash for r in rows})
            )
            .order_by(RevisionStatus.agent_id)
        ):
            statuses.setdefault(status.revision_hash, []).append(
                {
                    "agent_id": status.agent_id,
                    "name": names.get(status.agent_id, "?"),
                    "status": status.status,
                    "details": status.details,
                    "time": status.time,
                }
            )
        return [
            {
                "revision": r.hash,
                "current": index == 0,
                "author": r.author,
                "created": r.created,
                "document": r.document,
                "agents": statuses.get(r.hash, []) if newest[r.hash] == r.id else [],
            }
            for index, r in enumerate(rows)
        ]


def _current(session: Session, workspace_id: int) -> Revision | None:
    return session.scalar(
        select(Revision).where(Revision.workspace_id == workspace_id).order_by(Revision.id.desc()).limit(1)
    )


def _agent(session: Session, agent_id: str, *, lock: bool = False) -> Agent:
    agent = session.get(Agent, agent_id, with_for_update=lock)
    if agent is None:
        raise StoreError(f"no agent {agent_id!r}", 404)
    return agent
