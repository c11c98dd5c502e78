"""Helpers for tests that run devmesh for real: projects in temp folders and agents as child processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmesh.agent.client import AdminClient
from devmesh.agent.paths import StatePaths, read_agent_record, read_token
from devmesh.supervisor.reaper import find_marked, project_key

TINY_SERVICE = Path(__file__).parent / "fixtures" / "tiny_service.py"
TINY_COMMAND = f"{sys.executable} {TINY_SERVICE}"
BULK_SERVICE = Path(__file__).parent / "fixtures" / "bulk_service.py"


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def free_port() -> int:
    """A port nothing listens on right now (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    port: int,
    host: str,
    target: str = "/",
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes = b"",
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:`port` over a plain socket, as `Host: host`; (status, headers, body).

    Bodies come back as sent on the wire: a chunked one is decoded.
    """
    import socket

    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if parsed.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return int(lines[0].split()[1]), parsed, payload


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def devmesh(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "devmesh", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Project:
    """A devmesh project in a temp folder."""

    root: Path

    def write(self, toml: str, name: str = "devmesh.toml") -> Path:
        path = self.root / name
        temporary = path.with_suffix(".tmp")
        temporary.write_text(toml, encoding="utf-8")
        os.replace(temporary, path)
        return path

    @property
    def paths(self) -> StatePaths:
        return StatePaths(self.root)

    @property
    def events_file(self) -> Path:
        return self.root / "events.txt"

    def events(self) -> list[tuple[str, str, int]]:
        """(event, service, pid) lines written by tiny_service."""
        if not self.events_file.exists():
            return []
        rows = []
        for line in self.events_file.read_text(encoding="utf-8").splitlines():
            event, name, pid, *_ = line.split()
            rows.append((event, name, int(pid)))
        return rows

    def leftovers(self) -> list[int]:
        return [process.pid for process in find_marked(project_key(self.root))]


@dataclass
class AgentProcess:
    """`devmesh up` running as a real child process."""

    project: Project
    process: subprocess.Popen[bytes]
    output: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> AdminClient:
        record = wait_for(lambda: read_agent_record(self.project.paths), what="the agent record")
        return AdminClient(record, read_token(self.project.paths))

    def status(self) -> dict[str, Any]:
        return dict(self.client.get("/api/v1/status"))

    def service(self, name: str) -> dict[str, Any]:
        for entry in self.status()["services"]:
            if entry["name"] == name:
                return dict(entry)
        raise KeyError(name)

    def wait_healthy(self, *names: str, timeout: float = 15.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            document = self.status()
            states = {entry["name"]: entry for entry in document["services"]}
            wanted = names or tuple(states)
            return document if all(states.get(n, {}).get("health") == "healthy" for n in wanted) else None

        return dict(wait_for(ready, timeout=timeout, what=f"{names or 'all services'} healthy"))

    def log(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)


@contextlib.contextmanager
def running_agent(
    project: Project, *args: str, env: dict[str, str] | None = None, expect_clean: bool = True
) -> Iterator[AgentProcess]:
    """Start `devmesh up ARGS` in the project; on exit stop it and check that it left no process behind."""
    output = project.root / "agent-output.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "devmesh", "up", *args],
            cwd=project.root,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agent = AgentProcess(project, process, output)
    try:
        wait_for(
            lambda: read_agent_record(project.paths) is not None or process.poll() is not None,
            timeout=20,
            what="the agent to start",
        )
        if process.poll() is not None:
            raise AssertionError(f"the agent exited with {process.returncode}:\n{agent.log()}")
        yield agent
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                # Well inside pytest's 60 s per test: a kill here must still happen if a stop hangs.
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if expect_clean:
            wait_for(lambda: not project.leftovers(), timeout=10, what="no process left behind by the agent")


def load_json(text: str) -> Any:
    return json.loads(text)


def next_event(
    stream: Any, wanted: str | Callable[[dict[str, Any]], bool], timeout: float = 3.0
) -> dict[str, Any]:
    """The next message of an events stream (websockets' sync client) of type `wanted`, or for which
    `wanted` is true, skipping the others; AssertionError after `timeout` seconds."""
    matches = (lambda event: event["type"] == wanted) if isinstance(wanted, str) else wanted
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = json.loads(stream.recv(timeout=left))
        except TimeoutError:
            break
        if matches(event):
            return dict(event)
    raise AssertionError(f"no {wanted if isinstance(wanted, str) else 'such'} event within {timeout} s")


def bulk_project(project: Project, *, proxy: str = "", service: str = "", extra: str = "") -> int:
    """A project with one service, `bulk` (tests/fixtures/bulk_service.py), behind a proxy on a free
    port (returned); `proxy` and `service` are lines added to those tables, `extra` whole tables."""
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "bulk"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
{proxy}
[services.bulk]
command = "{sys.executable} {BULK_SERVICE}"
health = {{ tcp = true }}
{service}
{extra}
"""
    )
    return listen


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[int]:
    """Run a stdlib `server` (an HTTP backend of a test) in a thread; yields its port, then shuts it
    down and closes it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])  # type: ignore[index]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
