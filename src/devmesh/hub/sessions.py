"""Agent sessions over WebSocket (the wire contract in docs/hub.md) and the events that reach them.

Each hub process keeps its own sessions in memory (`SessionRegistry`). Changes arrive as events: from
this process after a SQLite commit, or from PostgreSQL LISTEN for every replica. A session reacts by
reading the database (the truth shared by the replicas) and sending what differs from what it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from devmesh.hub import fleet, limits
from devmesh.hub.database import Database, Event

log = logging.getLogger("devmesh.hub")

CLOSE_UNAUTHORIZED = 4401
CLOSE_BAD_MESSAGE = 4400
CLOSE_TIMEOUT = 4408
CLOSE_REPLACED = 4409


class ProtocolError(Exception):
    """The agent sent something the contract does not allow; the session closes with its text."""


class AgentSession:
    """One agent's connection: answers its messages and pushes revisions and peers to it."""

    def __init__(
        self, websocket: WebSocket, db: Database, identity: fleet.AgentIdentity, registry: SessionRegistry
    ) -> None:
        self.websocket = websocket
        self.db = db
        self.registry = registry
        self.identity = identity
        self.session_id = uuid.uuid4().hex
        self.events: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._applied: str | None = None
        self._pushed: str | None = None
        self._peers: list[dict[str, Any]] | None = None
        self._pending: set[str] = set()

    async def send(self, kind: str, **fields: Any) -> None:
        async with self._send_lock:
            self._seq += 1
            text = json.dumps({"type": kind, "seq": self._seq, **fields})
            await asyncio.wait_for(self.websocket.send_text(text), limits.SEND_TIMEOUT_S)

    def notify(self, kind: str) -> None:
        """Queue a reaction to an event; one of each kind waiting is enough (it re-reads everything)."""
        if kind in self._pending:
            return
        self._pending.add(kind)
        with contextlib.suppress(asyncio.QueueFull):
            self.events.put_nowait(kind)

    async def run(self) -> None:
        hello = await self._receive(limits.HELLO_TIMEOUT_S)
        if hello.get("type") != "hello":
            raise ProtocolError(f"the first message must be hello, not {hello.get('type')!r}")
        if hello.get("agent_id") not in (None, self.identity.agent_id):
            raise ProtocolError("hello.agent_id is not the agent this credential belongs to")
        revision = hello.get("revision")
        self._applied = revision if isinstance(revision, str) else None
        await asyncio.to_thread(
            fleet.hello,
            self.db,
            self.identity.agent_id,
            self.session_id,
            name=str(hello.get("name") or ""),
            version=str(hello.get("version") or ""),
            revision=self._applied,
            catalog=hello.get("catalog"),
        )
        current = await asyncio.to_thread(fleet.current_revision, self.db, self.identity.workspace_id)
        await self.send(
            "welcome",
            ack=hello["seq"],
            workspace=self.identity.workspace,
            heartbeat_s=limits.HEARTBEAT_S,
            revision=current[0] if current else None,
        )
        await self._push_revision(current)
        await self._push_peers()
        reader = asyncio.create_task(self._read_loop())
        writer = asyncio.create_task(self._write_loop())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    async def close(self, code: int, reason: str = "") -> None:
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code, reason[:120])

    async def finish(self) -> None:
        await asyncio.to_thread(fleet.closed, self.db, self.identity.agent_id, self.session_id)

    async def _receive(self, wait_s: float) -> dict[str, Any]:
        try:
            text = await asyncio.wait_for(self.websocket.receive_text(), wait_s)
        except TimeoutError:
            raise ProtocolError(f"nothing received for {wait_s:g}s") from None
        if len(text) > limits.MESSAGE_MAX_BYTES:
            raise ProtocolError(f"a message is larger than {limits.MESSAGE_MAX_BYTES} bytes")
        try:
            message = json.loads(text)
        except ValueError:
            raise ProtocolError("a message is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("seq"), int):
            raise ProtocolError('a message must be an object with "type" and an integer "seq"')
        return message

    async def _read_loop(self) -> None:
        while True:
            message = await self._receive(limits.OFFLINE_AFTER_S)
            kind = message.get("type")
            if kind == "heartbeat":
                revision = message.get("revision")
                still_ours = await asyncio.to_thread(
                    fleet.heartbeat,
                    self.db,
                    self.identity.agent_id,
                    self.session_id,
                    revision if isinstance(revision, str) else None,
                )
                if not still_ours:
                    await self.close(CLOSE_REPLACED, "another session of this agent took over")
                    return
            elif kind == "catalog":
                await asyncio.to_thread(
                    fleet.set_catalog, self.db, self.identity.agent_id, message.get("catalog")
                )
                await self.send("ack", ack=message["seq"])
            elif kind == "revision_status":
                await self._on_status(message)
                await self.send("ack", ack=message["seq"])
            elif kind == "ack":
                continue
            else:
                # Unknown types are acknowledged and ignored: a newer agent may say more than we know.
                await self.send("ack", ack=message["seq"])

    async def _on_status(self, message: dict[str, Any]) -> None:
        revision, status, details = message.get("revision"), message.get("status"), message.get("details")
        if not isinstance(revision, str) or status not in fleet.STATUSES:
            raise ProtocolError('revision_status needs "revision" and "status": "applied" or "rejected"')
        text = details if isinstance(details, str) else None if details is None else json.dumps(details)
        await asyncio.to_thread(fleet.record_status, self.db, self.identity.agent_id, revision, status, text)
        if status == "applied":
            self._applied = revision

    async def _write_loop(self) -> None:
        while True:
            kind = await self.events.get()
            self._pending.discard(kind)
            if kind == "revision":
                await self._push_revision(
                    await asyncio.to_thread(fleet.current_revision, self.db, self.identity.workspace_id)
                )
            elif kind == "peers":
                await self._push_peers()
            elif kind == "revoke" and await asyncio.to_thread(
                fleet.is_revoked, self.db, self.identity.agent_id
            ):
                await self.close(CLOSE_UNAUTHORIZED, "this agent's credential was revoked")
                return

    async def _push_revision(self, current: tuple[str, dict[str, Any]] | None) -> None:
        if current is None:
            return
        digest, document = current
        if digest in (self._applied, self._pushed):
            return
        self._pushed = digest
        await asyncio.to_thread(
            fleet.mark_pending, self.db, self.identity.agent_id, self.identity.workspace_id, digest
        )
        await self.send("revision", revision=digest, document=document)

    async def _push_peers(self) -> None:
        everyone = await self.registry.workspace_peers(self.db, self.identity.workspace_id)
        found = [peer for peer in everyone if peer["agent_id"] != self.identity.agent_id]
        if found != self._peers:
            self._peers = found
            await self.send("peers", peers=found)


class SessionRegistry:
    """This process's sessions by workspace, and the way events reach them from any thread."""

    def __init__(self) -> None:
        self._by_workspace: dict[int, set[AgentSession]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The online agents of a workspace, read once per change for all its sessions (not once each).
        self._peer_versions: dict[int, int] = {}
        self._peer_cache: dict[int, tuple[int, list[dict[str, Any]]]] = {}
        self._peer_locks: dict[int, asyncio.Lock] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add(self, session: AgentSession) -> None:
        self._by_workspace.setdefault(session.identity.workspace_id, set()).add(session)

    def remove(self, session: AgentSession) -> None:
        sessions = self._by_workspace.get(session.identity.workspace_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_workspace[session.identity.workspace_id]
                for table in (self._peer_versions, self._peer_cache, self._peer_locks):
                    table.pop(session.identity.workspace_id, None)

    def count(self) -> int:
        return sum(len(sessions) for sessions in self._by_workspace.values())

    def workspaces(self) -> list[int]:
        return list(self._by_workspace)

    async def workspace_peers(self, db: Database, workspace_id: int) -> list[dict[str, Any]]:
        """Every online agent of the workspace, re-read only after a "peers" event."""
        lock = self._peer_locks.setdefault(workspace_id, asyncio.Lock())
        async with lock:
            version = self._peer_versions.get(workspace_id, 0)
            cached = self._peer_cache.get(workspace_id)
            if cached is not None and cached[0] == version:
                return cached[1]
            found = await asyncio.to_thread(fleet.peers, db, workspace_id, exclude="")
            self._peer_cache[workspace_id] = (version, found)
            return found

    def publish(self, event: Event) -> None:
        """Thread-safe: called after a commit (SQLite) or by the LISTEN task (PostgreSQL)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(event)
        else:
            loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: Event) -> None:
        if event.kind == "peers":
            self._peer_versions[event.workspace_id] = self._peer_versions.get(event.workspace_id, 0) + 1
        for session in list(self._by_workspace.get(event.workspace_id, ())):
            session.notify(event.kind)


async def serve_session(websocket: WebSocket, db: Database, registry: SessionRegistry) -> None:
    """The `/hub/v1/agent/session` endpoint: authenticate, then run the session until either side ends."""
    scheme, _, credential = (websocket.headers.get("authorization") or "").partition(" ")
    identity = None
    if scheme.lower() == "bearer" and credential.strip():
        identity = await asyncio.to_thread(fleet.identify, db, credential.strip())
    await websocket.accept()
    if identity is None:
        await websocket.close(CLOSE_UNAUTHORIZED, "a valid agent credential is required (Bearer)")
        return
    session = AgentSession(websocket, db, identity, registry)
    registry.add(session)
    try:
        await session.run()
    except ProtocolError as error:
        log.warning("agent %s: %s", identity.agent_id, error)
        await session.close(
            CLOSE_BAD_MESSAGE if "nothing received" not in str(error) else CLOSE_TIMEOUT, str(error)
        )
    except (WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
        pass
    finally:
        registry.remove(session)
        await session.finish()
        await session.close(1000)
