"""People, workspaces, API keys and enrollment tokens: every change with its audit row, in one
transaction (the agents and revisions are in `fleet.py`)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from devmesh.hub import limits, security
from devmesh.hub.database import Database
from devmesh.hub.models import (
    ROLES,
    ApiKey,
    AuditEntry,
    EnrollmentToken,
    Membership,
    Setting,
    User,
    Workspace,
)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SECRET_KEY = "jwt_secret"


class StoreError(Exception):
    """A request the store refuses; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: a user (through a JWT) or an API key, and their role in each workspace (by id)."""

    kind: str  # "user" | "key"
    id: int
    name: str
    roles: dict[int, str] = field(default_factory=dict)

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def role_in(self, workspace_id: int) -> str | None:
        return self.roles.get(workspace_id)


def role_at_least(role: str | None, needed: str) -> bool:
    return role is not None and ROLES.index(role) >= ROLES.index(needed)


def check_name(kind: str, name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise StoreError(
            f"{kind} name {name!r} is not valid: use letters, digits, '.', '_' or '-' (at most 64, "
            "starting with a letter or digit)",
            422,
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise StoreError(f"role {role!r} is not one of {', '.join(ROLES)}", 422)
    return role


def audit(
    session: Session,
    actor: str,
    action: str,
    target: str,
    *,
    workspace_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            workspace_id=workspace_id,
            actor=actor,
            action=action,
            target=target,
            details=details,
            time=time.time(),
        )
    )


def jwt_secret(db: Database, secret_file: Path | None = None) -> str:
    """The signing secret: from `secret_file` if given, else created once and kept in the database
    (so every replica signs and checks alike). It is never returned by any API."""
    if secret_file is not None:
        try:
            value = secret_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise StoreError(f"--secret-file {secret_file}: {error.strerror}") from error
        if len(value) < 32:
            raise StoreError(f"--secret-file {secret_file}: the secret must be at least 32 characters")
        return value
    with db.transaction() as session:
        found = session.get(Setting, SECRET_KEY)
        if found is not None:
            return found.value
        # Replicas starting together on a fresh database all get here: the first insert wins and the
        # others' do nothing (no IntegrityError), then everyone reads the one that was kept.
        values = {"key": SECRET_KEY, "value": security.new_secret()}
        if db.is_postgres:
            session.execute(postgres_insert(Setting).values(values).on_conflict_do_nothing())
        else:
            session.execute(sqlite_insert(Setting).values(values).on_conflict_do_nothing())
    with db.transaction() as session:
        kept = session.get(Setting, SECRET_KEY)
        assert kept is not None
        return kept.value


# -- workspaces and people ------------------------------------------------------------------------


def find_workspace(session: Session, name: str) -> Workspace:
    found = session.scalar(select(Workspace).where(Workspace.name == name))
    if found is None:
        raise StoreError(f"no workspace named {name!r}", 404)
    return found


def add_workspace(db: Database, name: str, *, actor: str) -> bool:
    """Create workspace `name`; False if it already existed."""
    check_name("workspace", name)
    with db.transaction() as session:
        if session.scalar(select(Workspace).where(Workspace.name == name)) is not None:
            return False
        workspace = Workspace(name=name, created=time.time())
        session.add(workspace)
        session.flush()
        audit(session, actor, "workspace.create", name, workspace_id=workspace.id)
    return True


def list_workspaces(db: Database, principal: Principal) -> list[dict[str, Any]]:
    with db.sessions() as session:
        rows = session.scalars(select(Workspace).where(Workspace.id.in_(principal.roles))).all()
        return [{"name": row.name, "role": principal.roles[row.id]} for row in rows]


def add_user(
    db: Database,
    username: str,
    password: str | None,
    *,
    actor: str,
    workspace: str | None = None,
    role: str | None = None,
    create_workspace: bool = False,
    may_set_password: bool = True,
) -> bool:
    """Create the user (or change its password) and give it `role` in `workspace`; True if created.

    Users are hub-wide: through the API (`may_set_password=False`) a password is for a new user only,
    else the admin of one workspace could take over an account that is admin of another."""
    check_name("user", username)
    if role is not None:
        check_role(role)
    with db.transaction() as session:
        ws: Workspace | None = None
        if workspace is not None:
            check_name("workspace", workspace)
            ws = session.scalar(select(Workspace).where(Workspace.name == workspace))
            if ws is None and not create_workspace:
                raise StoreError(f"no workspace named {workspace!r}", 404)
            if ws is None:
                ws = Workspace(name=workspace, created=time.time())
                session.add(ws)
                session.flush()
                audit(session, actor, "workspace.create", workspace, workspace_id=ws.id)
        user = session.scalar(select(User).where(User.username == username))
        created = user is None
        if user is None:
            if not password:
                raise StoreError(f"user {username!r} is new: give it a password", 422)
            user = User(
                username=username, password_hash=security.hash_password(password), created=time.time()
            )
            session.add(user)
            session.flush()
            audit(session, actor, "user.create", username, workspace_id=ws.id if ws else None)
        elif password and not may_set_password:
            raise StoreError(
                f"user {username!r} exists already: a password can only be given to a new user; add an "
                "existing user without one (its password is changed with `devmesh hub user add` on the "
                "hub's database)",
                409,
            )
        elif password:
            user.password_hash = security.hash_password(password)
            audit(session, actor, "user.password", username, workspace_id=ws.id if ws else None)
        if ws is not None:
            wanted = role or "viewer"
            member = session.scalar(
                select(Membership).where(Membership.user_id == user.id, Membership.workspace_id == ws.id)
            )
            if member is None:
                session.add(Membership(user_id=user.id, workspace_id=ws.id, role=wanted))
            else:
                member.role = wanted
            audit(session, actor, "member.set", username, workspace_id=ws.id, details={"role": wanted})
    return created


def login(db: Database, username: str, password: str) -> tuple[int, str] | None:
    with db.sessions() as session:
        user = session.scalar(select(User).where(User.username == username))
        if not security.verify_password(user.password_hash if user else None, password) or user is None:
            return None
        return user.id, user.username


def user_principal(db: Database, user_id: int) -> Principal | None:
    with db.sessions() as session:
        user = session.get(User, user_id)
        if user is None:
            return None
        members = session.scalars(select(Membership).where(Membership.user_id == user_id)).all()
        return Principal("user", user.id, user.username, {m.workspace_id: m.role for m in members})


def key_principal(db: Database, key: str) -> Principal | None:
    with db.sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == security.digest(key)))
        if row is None or row.revoked:
            return None
        return Principal("key", row.id, f"{row.name}#{row.id}", {row.workspace_id: row.role})


# -- API keys ---------------------------------------------------------------------------------------


def create_api_key(db: Database, workspace: str, name: str, role: str, *, actor: str) -> dict[str, Any]:
    check_name("key", name)
    check_role(role)
    key = security.new_api_key()
    with db.transaction() as session:
        ws = find_workspace(session, workspace)
        row = ApiKey(
            workspace_id=ws.id,
            name=name,
            role=role,
            key_hash=security.digest(key),
            prefix=key[:8],
            created=time.time(),
            created_by=actor,
            revoked=False,
        )
        session.add(row)
        session.flush()
        audit(session, actor, "key.create", f"{name}#{row.id}", workspace_id=ws.id, details={"role": role})
        return {"id": row.id, "name": name, "role": role, "key": key, "workspace": workspace}


def list_api_keys(db: Database, workspace: str) -> list[dict[str, Any]]:
    with db.sessions() as session:
        ws = find_workspace(session, workspace)
        rows = session.scalars(select(ApiKey).where(ApiKey.workspace_id == ws.id).order_by(ApiKey.id)).all()
        return [
            {
                "id": r.id,
                "name": r.name,
                "role": r.role,
                "prefix": r.prefix,
                "created": r.created,
                "created_by": r.created_by,
                "revoked": r.revoked,
            }
            for r in rows
        ]


def revoke_api_key(db: Database, workspace: str, key_id: int, *, actor: str) -> None:
    with db.transaction() as session:
        ws = find_workspace(session, workspace)
        row = session.get(ApiKey, key_id)
        if row is None or row.workspace_id != ws.id:
            raise StoreError(f"no API key {key_id} in workspace {workspace!r}", 404)
        row.revoked = True
        audit(session, actor, "key.revoke", f"{row.name}#{row.id}", workspace_id=ws.id)


# -- enrollment tokens ------------------------------------------------------------------------------


def create_enrollment(db: Database, workspace: str, ttl_s: float, *, actor: str) -> dict[str, Any]:
    if not 0 < ttl_s <= limits.ENROLL_TTL_MAX_S:
        raise StoreError(f"ttl {ttl_s:g}s is out of range: give 1 s to {limits.ENROLL_TTL_MAX_S:g} s", 422)
    token = security.new_enrollment_token()
    now = time.time()
    with db.transaction() as session:
        ws = find_workspace(session, workspace)
        row = EnrollmentToken(
            workspace_id=ws.id,
            token_hash=security.digest(token),
            created=now,
            created_by=actor,
            expires=now + ttl_s,
            revoked=False,
        )
        session.add(row)
        session.flush()
        audit(session, actor, "enrollment.create", f"token#{row.id}", workspace_id=ws.id)
        return {"id": row.id, "token": token, "expires": row.expires, "workspace": workspace}


def list_enrollments(db: Database, workspace: str) -> list[dict[str, Any]]:
    with db.sessions() as session:
        ws = find_workspace(session, workspace)
        rows = session.scalars(
            select(EnrollmentToken).where(EnrollmentToken.workspace_id == ws.id).order_by(EnrollmentToken.id)
        ).all()
        now = time.time()
        return [
            {
                "id": r.id,
                "created": r.created,
                "created_by": r.created_by,
                "expires": r.expires,
                "state": "revoked"
                if r.revoked
                else "used"
                if r.used_at is not None
                else "expired"
                if r.expires <= now
                else "usable",
                "used_by": r.used_by,
            }
            for r in rows
        ]


def revoke_enrollment(db: Database, workspace: str, token_id: int, *, actor: str) -> None:
    with db.transaction() as session:
        ws = find_workspace(session, workspace)
        row = session.get(EnrollmentToken, token_id)
        if row is None or row.workspace_id != ws.id:
            raise StoreError(f"no enrollment token {token_id} in workspace {workspace!r}", 404)
        row.revoked = True
        audit(session, actor, "enrollment.revoke", f"token#{row.id}", workspace_id=ws.id)


def audit_log(db: Database, workspace: str, limit: int = 200) -> list[dict[str, Any]]:
    with db.sessions() as session:
        ws = find_workspace(session, workspace)
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.workspace_id == ws.id)
            .order_by(AuditEntry.id.desc())
            .limit(max(1, min(limit, 1000)))
        ).all()
        return [
            {
                "id": r.id,
                "time": r.time,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "details": r.details,
            }
            for r in rows
        ]
