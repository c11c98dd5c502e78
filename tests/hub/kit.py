"""Helpers for hub tests: a hub as a child process, the REST API, and a minimal agent that speaks the
session protocol (docs/hub.md) over a real WebSocket. Import as `from hub.kit import ...`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from support import free_port, wait_for

ADMIN, ADMIN_PASSWORD, WORKSPACE = "admin", "admin-password-1", "team"


def cli(
    *args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devmesh", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def api(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")


@dataclass
class HubProcess:
    """`devmesh hub serve` on a free port (or a given one, to restart on the same address)."""

    db_url: str
    cwd: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/hub/v1/agent/session"

    def start(self) -> HubProcess:
        log = (self.cwd / f"hub-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devmesh",
                "hub",
                "serve",
                "--db",
                self.db_url,
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the hub exited: {self.log()}")
            try:
                return api(self.base, "GET", "/hub/openapi.json")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout=30, what="the hub to answer")
        return self

    def log(self) -> str:
        path = self.cwd / f"hub-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def bootstrap(db_url: str, cwd: Path) -> None:
    """An admin user in workspace `team`, created directly on the database as an operator does."""
    done = cli(
        "hub", "user", "add", ADMIN, "--workspace", WORKSPACE, "--role", "admin", "--password-stdin",
        "--db", db_url, cwd=cwd, stdin=ADMIN_PASSWORD + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def running_hub(folder: Path) -> Iterator[HubProcess]:
    """A hub on SQLite in `folder`, with the admin of `bootstrap`, stopped at the end."""
    url = f"sqlite:///{folder / 'hub.db'}"
    bootstrap(url, folder)
    process = HubProcess(url, folder).start()
    try:
        yield process
    finally:
        process.stop()


def login(base: str, username: str = ADMIN, password: str = ADMIN_PASSWORD) -> str:
    code, answer = api(base, "POST", "/hub/v1/login", {"username": username, "password": password})
    assert code == 200, answer
    return str(answer["token"])


def enrollment_token(base: str, token: str, workspace: str = WORKSPACE) -> str:
    code, answer = api(
        base, "POST", f"/hub/v1/workspaces/{workspace}/enrollment-tokens", {"ttl_s": 600}, token
    )
    assert code == 201, answer
    return str(answer["token"])


def enroll(base: str, token: str, name: str) -> dict[str, str]:
    code, answer = api(
        base, "POST", "/hub/v1/enroll", {"token": token, "name": name, "hostname": "h", "version": "1.0"}
    )
    assert code == 201, answer
    return dict(answer)


Decider = Callable[[str, dict[str, Any]], tuple[str, str | None]]


def accept_all(_revision: str, _document: dict[str, Any]) -> tuple[str, str | None]:
    return "applied", None


@dataclass
class ProtoAgent:
    """A minimal agent: says hello, answers revisions through `decide`, records what the hub sends."""

    url: str
    agent_id: str
    credential: str
    name: str
    catalog: dict[str, Any] = field(default_factory=lambda: {"services": [], "mesh": None})
    decide: Decider = accept_all
    revision: str | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    connection: ClientConnection | None = None
    _seq: int = 0
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self) -> dict[str, Any]:
        """Open the session and say hello; returns the welcome (what an earlier session got is forgotten)."""
        self._seq = 0
        self.received = []
        self.connection = await connect(
            self.url, additional_headers={"Authorization": f"Bearer {self.credential}"}, open_timeout=10
        )
        try:
            await self.send(
                "hello",
                agent_id=self.agent_id,
                name=self.name,
                version="1.0",
                revision=self.revision,
                catalog=self.catalog,
            )
        except ConnectionClosed:
            pass  # refused: the reader sees the close and wait_for reports it
        self._reader = asyncio.create_task(self._read())
        return await self.wait_for("welcome")

    async def send(self, kind: str, **fields: Any) -> int:
        assert self.connection is not None
        self._seq += 1
        await self.connection.send(json.dumps({"type": kind, "seq": self._seq, **fields}))
        return self._seq

    async def _read(self) -> None:
        assert self.connection is not None
        try:
            with contextlib.suppress(ConnectionClosed):
                await self._read_messages()
        finally:
            self._changed.set()  # wakes wait_for, which reports the end of the session

    async def _read_messages(self) -> None:
        assert self.connection is not None
        async for text in self.connection:
            message = json.loads(text)
            self.received.append(message)
            if message["type"] == "revision":
                status, details = self.decide(message["revision"], message["document"])
                if status == "applied":
                    self.revision = message["revision"]
                await self.send(
                    "revision_status", revision=message["revision"], status=status, details=details
                )
            self._changed.set()

    async def wait_for(
        self, kind: str, *, where: Callable[[dict[str, Any]], bool] = lambda m: True, within_s: float = 15
    ) -> dict[str, Any]:
        """The first message of `kind` (matching `where`) received so far or within `within_s`."""
        async with asyncio.timeout(within_s):
            while True:
                for message in self.received:
                    if message["type"] == kind and where(message):
                        return message
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"{self.name}: session ended ({self.close_code()}) before a {kind}")
                self._changed.clear()
                await self._changed.wait()

    def close_code(self) -> int | None:
        return None if self.connection is None else self.connection.close_code

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def new_agent(hub: HubProcess, admin_token: str, name: str, **options: Any) -> ProtoAgent:
    enrolled = enroll(hub.base, enrollment_token(hub.base, admin_token), name)
    return ProtoAgent(hub.ws_url, enrolled["agent_id"], enrolled["credential"], name, **options)
