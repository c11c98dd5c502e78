"""Agent sessions over WebSocket (the wire contract in docs/hub.md) and the events that reach them.

Each hub process keeps its own sessions in memory (`SessionRegistry`). Changes arrive as events: from
this process after a SQLite commit, or from PostgreSQL LISTEN for every replica. The registry reads the
database (the truth shared by the replicas) once per event and workspace, and each session sends what
differs from what it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from devmesh.hub import fleet, limits
from devmesh.hub.database import Database, Event
from devmesh.hub.store import StoreError

log = logging.getLogger("devmesh.hub")

CLOSE_UNAUTHORIZED = 4401
CLOSE_BAD_MESSAGE = 4400
CLOSE_TIMEOUT = 4408
CLOSE_REPLACED = 4409
CLOSE_INTERNAL = 1011


@dataclass(frozen=True, slots=True)
class Pushed:
    """A workspace's current revision as read once for all its sessions: `fields` is the JSON of the
    message's revision and document, encoded once (a document may be up to 1 MiB)."""

    digest: str
    fields: str

    @classmethod
    def of(cls, current: tuple[str, dict[str, Any]] | None) -> Pushed | None:
        if current is None:
            return None
        digest, document = current
        return cls(digest, json.dumps({"revision": digest, "document": document})[1:-1])


@dataclass(frozen=True, slots=True)
class PeerList:
    """A workspace's online agents as read once for all its sessions, each entry encoded once: a
    session's `peers` list is every entry but its own (with 1000 agents, encoding the whole list once
    per session and change was most of the hub's CPU). `encoded` is the whole list, to tell cheaply
    that nothing changed (the sweep re-reads it every few seconds)."""

    encoded: str
    agent_ids: tuple[str, ...]
    entries: tuple[str, ...]

    @classmethod
    def of(cls, peers: list[dict[str, Any]]) -> PeerList:
        entries = tuple(json.dumps(peer) for peer in peers)
        return cls("[" + ", ".join(entries) + "]", tuple(p["agent_id"] for p in peers), entries)

    def without(self, agent_id: str) -> str:
        if agent_id not in self.agent_ids:
            return self.encoded
        kept = (entry for peer, entry in zip(self.agent_ids, self.entries, strict=True) if peer != agent_id)
        return "[" + ", ".join(kept) + "]"


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
        self._peers_seen: str | None = None  # the workspace's list when this session last looked
        self._peers: bytes | None = None  # a digest of what it sent (not the text: 1000 x 150 KB)
        self._pending: set[str] = set()

    async def send(self, kind: str, encoded: str = "", **fields: Any) -> None:
        """Send a message; `encoded` is more of its fields as JSON already (without the braces)."""
        async with self._send_lock:
            self._seq += 1
            text = json.dumps({"type": kind, "seq": self._seq, **fields})
            if encoded:
                text = f"{text[:-1]}, {encoded}}}"
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
        for key in ("name", "version", "revision"):
            if hello.get(key) is not None and not isinstance(hello[key], str):
                raise ProtocolError(f"hello.{key} must be a string")
        revision = hello.get("revision")
        self._applied = revision if isinstance(revision, str) else None
        # Registered before this: a revocation from now on reaches the session as an event; one that
        # came earlier makes hello raise AgentRevoked.
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
        await self._push_revision(Pushed.of(current), mark_pending=True)
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
        last = self.registry.take_beat(self)
        await asyncio.to_thread(fleet.closed, self.db, self.identity.agent_id, self.session_id, last)

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
                # Kept in memory and written with every other session's by the registry's flush, which
                # also tells this session if its agent was revoked or taken over meanwhile.
                revision = message.get("revision")
                revision = revision if isinstance(revision, str) else None
                fleet.check_text("heartbeat.revision", revision, limits.REVISION_MAX)
                self.registry.beat(self, revision)
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
        # Recorded in a batch with other sessions' answers; the ack goes out once it is committed.
        await self.registry.statuses.record(
            fleet.check_status(fleet.StatusReport(self.identity.agent_id, revision, status, text))
        )
        if status == "applied":
            self._applied = revision

    async def _write_loop(self) -> None:
        while True:
            kind = await self.events.get()
            self._pending.discard(kind)
            if kind == "revision":
                # Every agent of the workspace was marked pending with the revision itself.
                await self._push_revision(
                    await self.registry.workspace_revision(self.db, self.identity.workspace_id)
                )
            elif kind == "peers":
                await self._push_peers()
            elif kind == "replaced":
                await self.close(CLOSE_REPLACED, "another session of this agent took over")
                return
            elif kind == "revoke" and await asyncio.to_thread(
                fleet.is_revoked, self.db, self.identity.agent_id
            ):
                await self.close(CLOSE_UNAUTHORIZED, "this agent's credential was revoked")
                return

    async def _push_revision(self, current: Pushed | None, *, mark_pending: bool = False) -> None:
        if current is None or current.digest in (self._applied, self._pushed):
            return
        self._pushed = current.digest
        if mark_pending:
            await asyncio.to_thread(
                fleet.mark_pending,
                self.db,
                self.identity.agent_id,
                self.identity.workspace_id,
                current.digest,
            )
        await self.send("revision", current.fields)

    async def _push_peers(self) -> None:
        everyone = await self.registry.workspace_peers(self.db, self.identity.workspace_id)
        if everyone.encoded == self._peers_seen:
            return
        self._peers_seen = everyone.encoded
        found = everyone.without(self.identity.agent_id)
        digest = hashlib.blake2b(found.encode(), digest_size=16).digest()
        if digest != self._peers:
            self._peers = digest
            await self.send("peers", f'"peers": {found}')


class StatusBatcher:
    """Records the `revision_status` answers of every session of this process together: a batch is
    written in one transaction (each answer with its audit row) after STATUS_BATCH_WAIT_S or as soon as
    STATUS_BATCH_MAX wait, and `record` returns once its answer is committed (then the session acks:
    an agent resends until acked, so nothing acked is lost). Batches are written one at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: list[tuple[fleet.StatusReport, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(self, report: fleet.StatusReport) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((report, future))
        if len(self._waiting) >= limits.STATUS_BATCH_MAX:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(limits.STATUS_BATCH_WAIT_S, self._flush)
        # A session that ends meanwhile does not cancel the write, only its wait for it.
        await asyncio.shield(future)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        if batch:
            task = asyncio.create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[fleet.StatusReport, asyncio.Future[None]]]) -> None:
        async with self._writing:
            try:
                await asyncio.to_thread(fleet.record_statuses, self.db, [report for report, _ in batch])
            except Exception:
                # One answer the database refuses (an agent deleted meanwhile) must not fail the others:
                # each one again on its own, its error to its own session.
                for report, future in batch:
                    try:
                        await asyncio.to_thread(fleet.record_statuses, self.db, [report])
                    except Exception as error:
                        if not future.done():
                            future.set_exception(error)
                    else:
                        if not future.done():
                            future.set_result(None)
                return
        for _, future in batch:
            if not future.done():
                future.set_result(None)


class SessionRegistry:
    """This process's sessions by workspace, and the way events reach them from any thread; the
    heartbeats of its sessions until they are flushed, and the batches of their revision answers."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.statuses = StatusBatcher(db)
        self._beats: dict[AgentSession, fleet.Beat] = {}
        self._by_workspace: dict[int, set[AgentSession]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # What a workspace's sessions all need (its online agents, its current revision), read once
        # per change for all of them (not once each): (kind, workspace) -> version, cached value, lock.
        self._versions: dict[tuple[str, int], int] = {}
        self._cache: dict[tuple[str, int], tuple[int, Any]] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

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
                for kind in ("peers", "revision"):
                    for table in (self._versions, self._cache, self._locks):
                        table.pop((kind, session.identity.workspace_id), None)

    def beat(self, session: AgentSession, revision: str | None) -> None:
        """A heartbeat: kept until the next flush (a newer one of the same session replaces it)."""
        if revision is None and (earlier := self._beats.get(session)) is not None:
            revision = earlier.revision
        self._beats[session] = fleet.Beat(
            session.identity.agent_id, session.session_id, time.time(), revision
        )

    def take_beat(self, session: AgentSession) -> fleet.Beat | None:
        """The session's heartbeat not flushed yet (its session ends: written with its close)."""
        return self._beats.pop(session, None)

    async def flush_heartbeats(self) -> None:
        """Write every heartbeat gathered since the last flush (transactions of HEARTBEAT_BATCH_MAX),
        and close the sessions whose agent was revoked or taken over meanwhile."""
        gathered, self._beats = self._beats, {}
        items = list(gathered.items())
        for start in range(0, len(items), limits.HEARTBEAT_BATCH_MAX):
            chunk = items[start : start + limits.HEARTBEAT_BATCH_MAX]
            try:
                outcome = await asyncio.to_thread(
                    fleet.flush_heartbeats, self.db, [beat for _, beat in chunk]
                )
            except SQLAlchemyError as error:
                log.error("cannot record %d heartbeats (retried at the next flush): %s", len(chunk), error)
                for session, beat in chunk:
                    self._beats.setdefault(session, beat)
                continue
            for session, beat in chunk:
                verdict = outcome.get(beat.agent_id)
                if verdict == "revoked":
                    session.notify("revoke")
                elif verdict == "replaced":
                    session.notify("replaced")

    async def run_heartbeat_flush(self) -> None:
        """Flush every HEARTBEAT_FLUSH_S for as long as the hub runs."""
        while True:
            await asyncio.sleep(limits.HEARTBEAT_FLUSH_S)
            await self.flush_heartbeats()

    def count(self) -> int:
        return sum(len(sessions) for sessions in self._by_workspace.values())

    def workspaces(self) -> list[int]:
        return list(self._by_workspace)

    async def workspace_peers(self, db: Database, workspace_id: int) -> PeerList:
        """Every online agent of the workspace, re-read only after a "peers" event."""

        async def read() -> PeerList:
            return PeerList.of(await asyncio.to_thread(fleet.peers, db, workspace_id, exclude=""))

        found: PeerList = await self._read_once("peers", workspace_id, read)
        return found

    async def workspace_revision(self, db: Database, workspace_id: int) -> Pushed | None:
        """The workspace's current revision, re-read only after a "revision" event."""

        async def read() -> Pushed | None:
            return Pushed.of(await asyncio.to_thread(fleet.current_revision, db, workspace_id))

        found: Pushed | None = await self._read_once("revision", workspace_id, read)
        return found

    async def _read_once(self, kind: str, workspace_id: int, read: Callable[[], Awaitable[Any]]) -> Any:
        key = (kind, workspace_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            version = self._versions.get(key, 0)
            cached = self._cache.get(key)
            if cached is not None and cached[0] == version:
                return cached[1]
            found = await read()
            self._cache[key] = (version, found)
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
        if event.kind in ("peers", "revision"):
            key = (event.kind, event.workspace_id)
            self._versions[key] = self._versions.get(key, 0) + 1
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
    except fleet.AgentRevoked:
        await session.close(CLOSE_UNAUTHORIZED, "this agent's credential was revoked")
    except StoreError as error:  # a value out of bounds (422), the agent gone (404)
        log.warning("agent %s: %s", identity.agent_id, error)
        await session.close(
            CLOSE_UNAUTHORIZED if error.status in (401, 404) else CLOSE_BAD_MESSAGE, str(error)
        )
    except DataError as error:  # a value the database refuses that no check foresaw
        log.warning("agent %s: the database refused a value: %s", identity.agent_id, error.orig)
        await session.close(CLOSE_BAD_MESSAGE, "a message holds a value the hub cannot store")
    except SQLAlchemyError as error:
        log.error("agent %s: database error: %s", identity.agent_id, error)
        await session.close(CLOSE_INTERNAL, "the hub cannot reach its database; reconnect later")
    except (WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
        pass
    finally:
        registry.remove(session)
        try:
            await session.finish()
        except SQLAlchemyError as error:  # offline anyway once last_seen is stale
            log.error("agent %s: cannot record the end of its session: %s", identity.agent_id, error)
        await session.close(1000)
