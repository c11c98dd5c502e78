"""A protocol double of the hub, for the agent's tests: the wire contract of issue 8 and nothing more.

It is not the hub (`devmesh hub serve`, src/devmesh/hub/): no database, no users, no roles. It speaks the
contract exactly (`POST /hub/v1/enroll`, the `/hub/v1/agent/session` WebSocket with its hello, welcome,
acks, revisions and peers), on a real socket, so that the agent's side is proven against real
connections. Every message an agent sends is recorded, for the tests to check.

Served by uvicorn (Starlette) on its own loop in a thread; `stop()` and `start()` take the hub away and
bring it back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from support import free_port

HEARTBEAT_S = 0.5


def revision_hash(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class AgentRecord:
    agent_id: str
    name: str
    credential: str
    workspace: str
    received: list[dict[str, Any]] = field(default_factory=list)  # every message, every connection
    sessions: int = 0
    catalog: dict[str, Any] | None = None
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # revision -> its last status
    socket: WebSocket | None = None
    seq: int = 0  # the hub's own numbering on the current connection


class HubDouble:
    def __init__(self, port: int, *, workspace: str = "team", ack: bool = True) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workspace = workspace
        self.ack = ack  # False: catalogs and statuses go unacknowledged (the agent must send them again)
        self.tokens: set[str] = set()
        self.agents: dict[str, AgentRecord] = {}
        self.revision: str | None = None
        self.document: dict[str, Any] | None = None
        self.refused: list[str] = []  # why requests were refused, in order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- control, from the test's thread ---------------------------------------------------------------

    def new_token(self) -> str:
        token = "enr_" + secrets.token_urlsafe(12)
        self.tokens.add(token)
        return token

    def start(self) -> None:
        app = Starlette(
            routes=[
                Route("/hub/v1/enroll", self._enroll, methods=["POST"]),
                WebSocketRoute("/hub/v1/agent/session", self._session),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.call_soon(started.set)
            loop.run_until_complete(self._server.serve() if self._server else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, name="hub-double", daemon=True)
        self._thread.start()
        started.wait(5)
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise AssertionError("the hub double did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """The hub goes away: open sessions are dropped, the port closes."""
        if self._server is None or self._thread is None:
            return
        self._call(self._drop_all)
        self._server.should_exit = True
        self._thread.join(10)
        for record in self.agents.values():
            record.socket = None
        self._server = None

    def push(self, document: dict[str, Any]) -> str:
        """A new revision for the workspace, sent to every connected agent; its hash."""
        self.document, self.revision = document, revision_hash(document)
        for record in list(self.agents.values()):
            if record.socket is not None:
                self._call(lambda record=record: self._send_revision(record))
        return self.revision

    def agent(self) -> AgentRecord:
        assert len(self.agents) == 1, self.agents
        return next(iter(self.agents.values()))

    def messages(self, kind: str, record: AgentRecord | None = None) -> list[dict[str, Any]]:
        record = record or self.agent()
        with self._lock:
            return [message for message in record.received if message["type"] == kind]

    def _call(self, function: Callable[[], Any]) -> None:
        """Run `function` (a coroutine function) on the hub's loop and wait for it."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(function(), self._loop)
        future.result(10)

    # -- the HTTP side ---------------------------------------------------------------------------------

    async def _enroll(self, request: Request) -> JSONResponse:
        body = await request.json()
        token = body.get("token")
        if token not in self.tokens:
            self.refused.append("enroll")
            return JSONResponse({"detail": "enrollment token unknown, used, revoked or expired"}, 401)
        self.tokens.discard(token)
        for key in ("name", "hostname", "version"):
            assert isinstance(body.get(key), str), body
        record = AgentRecord(
            agent_id="agt_" + secrets.token_hex(4),
            name=body["name"],
            credential=secrets.token_urlsafe(32),
            workspace=self.workspace,
        )
        self.agents[record.agent_id] = record
        return JSONResponse(
            {"agent_id": record.agent_id, "credential": record.credential, "workspace": record.workspace}, 201
        )

    # -- the session -----------------------------------------------------------------------------------

    async def _session(self, websocket: WebSocket) -> None:
        header = websocket.headers.get("authorization", "")
        record = next(
            (r for r in self.agents.values() if header == f"Bearer {r.credential}"),
            None,
        )
        await websocket.accept()
        if record is None:
            self.refused.append("session")
            await websocket.close(code=4401, reason="unknown or revoked credential")
            return
        record.seq, record.sessions = 0, record.sessions + 1
        expected_seq = 1
        try:
            hello = json.loads(await websocket.receive_text())
            self._record(record, hello)
            assert hello["type"] == "hello" and hello["seq"] == 1, hello
            assert hello["agent_id"] == record.agent_id, hello
            record.catalog = hello["catalog"]
            record.socket = websocket
            await self._send(
                record, "welcome", workspace=record.workspace, heartbeat_s=HEARTBEAT_S, revision=self.revision
            )
            if self.revision is not None and hello["revision"] != self.revision:
                await self._send_revision(record)
            await self._announce_peers()
            while True:
                message = json.loads(await websocket.receive_text())
                expected_seq += 1
                assert message["seq"] == expected_seq, (message, expected_seq)
                self._record(record, message)
                if message["type"] == "catalog":
                    record.catalog = message["catalog"]
                    await self._announce_peers(but=record)
                elif message["type"] == "revision_status":
                    record.statuses[message["revision"]] = message
                if message["type"] in ("catalog", "revision_status") and self.ack:
                    await self._send(record, "ack", ack=message["seq"])
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if record.socket is websocket:
                record.socket = None
                with contextlib.suppress(Exception):
                    await self._announce_peers()

    def _record(self, record: AgentRecord, message: dict[str, Any]) -> None:
        with self._lock:
            record.received.append({**message, "session": record.sessions})

    async def _send(self, record: AgentRecord, kind: str, **fields: Any) -> None:
        assert record.socket is not None
        record.seq += 1
        await record.socket.send_text(json.dumps({"type": kind, "seq": record.seq, **fields}))

    async def _send_revision(self, record: AgentRecord) -> None:
        await self._send(record, "revision", revision=self.revision, document=self.document)

    async def _announce_peers(self, but: AgentRecord | None = None) -> None:
        online = [r for r in self.agents.values() if r.socket is not None]
        for record in online:
            if record is but:
                continue
            peers = [
                {
                    "agent_id": other.agent_id,
                    "name": other.name,
                    "mesh": (other.catalog or {}).get("mesh"),
                    "catalog": other.catalog,
                }
                for other in online
                if other is not record
            ]
            with contextlib.suppress(Exception):
                await self._send(record, "peers", peers=peers)

    async def _drop_all(self) -> None:
        for record in self.agents.values():
            if record.socket is not None:
                with contextlib.suppress(Exception):
                    await record.socket.close(code=1012, reason="hub restarting")


@pytest.fixture
def hub() -> Iterator[HubDouble]:
    """A hub double on a free port, for a test's agents."""
    double = HubDouble(free_port())
    double.start()
    try:
        yield double
    finally:
        double.stop()
