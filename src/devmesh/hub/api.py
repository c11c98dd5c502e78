"""The hub's REST API under /hub/v1 (OpenAPI at /hub/openapi.json) and its authentication.

Every operation but `login` and `enroll` needs a JWT (from login) or an API key (`dmk_...`) as
`Authorization: Bearer`; `login` and `enroll` refuse anything but valid credentials / a valid token,
with 401 either way. Roles are per workspace: viewer reads, editor applies and enrols, admin manages
people and keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import select

from devmesh.hub import fleet, limits, security, store
from devmesh.hub.database import Database
from devmesh.hub.models import Workspace
from devmesh.hub.store import Principal, StoreError

_bearer = HTTPBearer(auto_error=False, description="A JWT from /hub/v1/login or an API key dmk_...")


@dataclass
class HubContext:
    db: Database
    secret: str


# Every string the API takes has a bound at the edge: a value longer than its column is a 422 naming
# the field, not a database error. Names and versions are one line of printable text.
_TEXT = r"^[^\x00-\x1f\x7f]*$"
NAME_MAX = 64
PASSWORD_MAX = 1024
SECRET_MAX = 256


class LoginBody(BaseModel):
    username: str = Field(default="", max_length=NAME_MAX)
    password: str = Field(default="", max_length=PASSWORD_MAX)


class LoginAnswer(BaseModel):
    token: str
    expires: float


class EnrollBody(BaseModel):
    token: str = Field(default="", max_length=SECRET_MAX)
    name: str = Field(default="", max_length=limits.AGENT_NAME_MAX, pattern=_TEXT)
    hostname: str = Field(default="", max_length=limits.HOSTNAME_MAX, pattern=_TEXT)
    version: str = Field(default="", max_length=limits.VERSION_MAX, pattern=_TEXT)


class EnrollAnswer(BaseModel):
    agent_id: str
    credential: str
    workspace: str


class EnrollmentRequest(BaseModel):
    ttl_s: float = Field(default=limits.ENROLL_TTL_DEFAULT_S, gt=0, le=limits.ENROLL_TTL_MAX_S)


class RevisionBody(BaseModel):
    document: dict[str, Any]


class KeyBody(BaseModel):
    name: str = Field(max_length=NAME_MAX)
    role: str = Field(default="editor", max_length=16)


class MemberBody(BaseModel):
    username: str = Field(max_length=NAME_MAX)
    role: str = Field(default="viewer", max_length=16)
    password: str | None = Field(
        default=None,
        max_length=PASSWORD_MAX,
        description="Only for a new user: an existing user's password is not changed here (409).",
    )


def _context(request: Request) -> HubContext:
    context: HubContext = request.app.state.hub
    return context


def _principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    context = _context(request)
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "credentials required: Bearer JWT or API key")
    value = credentials.credentials
    found: Principal | None = None
    if value.startswith(security.API_KEY_PREFIX):
        found = store.key_principal(context.db, value)
    else:
        try:
            found = store.user_principal(context.db, security.read_jwt(context.secret, value))
        except security.InvalidToken:
            found = None
    if found is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or expired credentials")
    return found


Caller = Annotated[Principal, Depends(_principal)]


def _need(context: HubContext, principal: Principal, workspace: str, role: str) -> None:
    with context.db.sessions() as session:
        workspace_id = session.scalar(select(Workspace.id).where(Workspace.name == workspace))
    held = principal.role_in(workspace_id) if workspace_id is not None else None
    if held is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you have no role in workspace {workspace!r}")
    if not store.role_at_least(held, role):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this needs the {role} role in {workspace!r}; you are {held}"
        )


def _role(needed: str) -> Any:
    """A dependency: the caller, holding at least `needed` in the path's workspace. As a dependency it
    runs before the body is validated, so a viewer's write is refused (403) whatever it sends."""

    def check(request: Request, caller: Caller) -> Principal:
        _need(_context(request), caller, str(request.path_params.get("workspace", "")), needed)
        return caller

    return check


Viewer = Annotated[Principal, Depends(_role("viewer"))]
Editor = Annotated[Principal, Depends(_role("editor"))]
Admin = Annotated[Principal, Depends(_role("admin"))]


def _run(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except StoreError as error:
        raise HTTPException(error.status, str(error)) from None


router = APIRouter(prefix="/hub/v1")


@router.post("/login", response_model=LoginAnswer, tags=["auth"])
def login(request: Request, body: LoginBody | None = None) -> LoginAnswer:
    """Exchange a username and password for a JWT (HS256)."""
    context = _context(request)
    if body is None or not body.username or not body.password:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "username and password required")
    found = store.login(context.db, body.username, body.password)
    if found is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    issued = security.issue_jwt(context.secret, *found)
    return LoginAnswer(token=issued.token, expires=issued.expires)


@router.post("/enroll", response_model=EnrollAnswer, status_code=201, tags=["agents"])
def enroll(request: Request, body: EnrollBody | None = None) -> EnrollAnswer:
    """Exchange a one-time enrollment token for the agent's own credential (shown only here)."""
    if body is None or not body.token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an enrollment token is required")
    answer = _run(fleet.enroll, _context(request).db, body.token, body.name, body.hostname, body.version)
    return EnrollAnswer(**answer)


@router.get("/me", tags=["auth"])
def me(request: Request, caller: Caller) -> dict[str, Any]:
    """Who the credentials belong to, and their workspaces and roles."""
    return {
        "kind": caller.kind,
        "name": caller.name,
        "workspaces": store.list_workspaces(_context(request).db, caller),
    }


@router.get("/workspaces", tags=["workspaces"])
def workspaces(request: Request, caller: Caller) -> list[dict[str, Any]]:
    return store.list_workspaces(_context(request).db, caller)


@router.get("/workspaces/{workspace}/agents", tags=["agents"])
def agents(request: Request, caller: Viewer, workspace: str) -> list[dict[str, Any]]:
    context = _context(request)
    listed: list[dict[str, Any]] = _run(fleet.list_agents, context.db, workspace)
    return listed


@router.delete("/workspaces/{workspace}/agents/{agent_id}", status_code=204, tags=["agents"])
def revoke_agent(request: Request, caller: Admin, workspace: str, agent_id: str) -> None:
    """Revoke an agent's credential; its session is closed (4401)."""
    context = _context(request)
    _run(fleet.revoke_agent, context.db, workspace, agent_id, actor=caller.actor)


@router.post("/workspaces/{workspace}/enrollment-tokens", status_code=201, tags=["agents"])
def create_enrollment(
    request: Request, caller: Editor, workspace: str, body: EnrollmentRequest | None = None
) -> dict[str, Any]:
    """A one-time enrollment token (shown only here)."""
    context = _context(request)
    ttl = (body or EnrollmentRequest()).ttl_s
    created: dict[str, Any] = _run(store.create_enrollment, context.db, workspace, ttl, actor=caller.actor)
    return created


@router.get("/workspaces/{workspace}/enrollment-tokens", tags=["agents"])
def list_enrollments(request: Request, caller: Editor, workspace: str) -> list[dict[str, Any]]:
    context = _context(request)
    listed: list[dict[str, Any]] = _run(store.list_enrollments, context.db, workspace)
    return listed


@router.delete("/workspaces/{workspace}/enrollment-tokens/{token_id}", status_code=204, tags=["agents"])
def revoke_enrollment(request: Request, caller: Editor, workspace: str, token_id: int) -> None:
    context = _context(request)
    _run(store.revoke_enrollment, context.db, workspace, token_id, actor=caller.actor)


@router.post("/workspaces/{workspace}/revisions", status_code=201, tags=["revisions"])
def apply_revision(
    request: Request, caller: Editor, workspace: str, body: RevisionBody | None = None
) -> dict[str, Any]:
    """Make a document the workspace's current revision; pushed to its agents at once."""
    context = _context(request)
    if body is None:
        raise HTTPException(422, 'the body must be {"document": {...}}')
    applied: dict[str, Any] = _run(
        fleet.apply_revision, context.db, workspace, body.document, actor=caller.actor
    )
    return applied


@router.get("/workspaces/{workspace}/revisions", tags=["revisions"])
def revisions(
    request: Request, caller: Viewer, workspace: str, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    context = _context(request)
    listed: list[dict[str, Any]] = _run(fleet.list_revisions, context.db, workspace, limit)
    return listed


@router.get("/workspaces/{workspace}/audit", tags=["workspaces"])
def audit(
    request: Request, caller: Viewer, workspace: str, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[dict[str, Any]]:
    context = _context(request)
    listed: list[dict[str, Any]] = _run(store.audit_log, context.db, workspace, limit)
    return listed


@router.post("/workspaces/{workspace}/members", status_code=201, tags=["workspaces"])
def set_member(
    request: Request, caller: Admin, workspace: str, body: MemberBody | None = None
) -> dict[str, Any]:
    """Give a user a role in the workspace. A new user needs a password; an existing one is added
    without (users are hub-wide: a password for an existing user is refused with 409)."""
    context = _context(request)
    if body is None:
        raise HTTPException(422, 'the body must be {"username": ..., "role": ...}')
    created = _run(
        store.add_user,
        context.db,
        body.username,
        body.password,
        actor=caller.actor,
        workspace=workspace,
        role=body.role,
        may_set_password=False,
    )
    return {"username": body.username, "role": body.role, "created": created}


@router.post("/workspaces/{workspace}/keys", status_code=201, tags=["workspaces"])
def create_key(
    request: Request, caller: Admin, workspace: str, body: KeyBody | None = None
) -> dict[str, Any]:
    """An API key for automation (shown only here; kept hashed)."""
    context = _context(request)
    if body is None:
        raise HTTPException(422, 'the body must be {"name": ..., "role": ...}')
    created: dict[str, Any] = _run(
        store.create_api_key, context.db, workspace, body.name, body.role, actor=caller.actor
    )
    return created


@router.get("/workspaces/{workspace}/keys", tags=["workspaces"])
def list_keys(request: Request, caller: Admin, workspace: str) -> list[dict[str, Any]]:
    context = _context(request)
    listed: list[dict[str, Any]] = _run(store.list_api_keys, context.db, workspace)
    return listed


@router.delete("/workspaces/{workspace}/keys/{key_id}", status_code=204, tags=["workspaces"])
def revoke_key(request: Request, caller: Admin, workspace: str, key_id: int) -> None:
    context = _context(request)
    _run(store.revoke_api_key, context.db, workspace, key_id, actor=caller.actor)
