"""`wait_for_mesh`: block until a project's mesh is ready, following its agent's events stream.

What the pytest plugin (`devmesh.testing`), `devmesh wait` and `devmesh check` wait with. What "ready"
means is `readiness`'s; this module only feeds it, from the stream or one last status request.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
from devmesh.agent.paths import AgentRecord, StatePaths, read_agent_record, read_token
from devmesh.preflight.readiness import ReadinessTracker, WaitResult

# The agent writes .devmesh/agent.json once its admin API listens: until then there is nothing to
# subscribe to, so `wait` looks for that file (and retries a refused connection) every 100 ms. Reading a
# small file ten times a second costs nothing, works on every OS without a file-watching dependency, and
# bounds the delay at 0.1 s. Once the agent answers, `wait` follows its events stream: no polling.
RECORD_POLL_S = 0.1


def wait_for_mesh(
    project_dir: Path, *, healthy: bool, services: Sequence[str] = (), timeout_s: float
) -> WaitResult:
    """Block until the project's agent answers and `services` (default: all of this project's) are
    running (healthy, with `healthy`), or `timeout_s` passes. An agent that is not there yet (`devmesh up
    --detach` just started) or restarts is waited for, within the same time."""
    paths = StatePaths(project_dir)
    started = time.monotonic()
    deadline = started + timeout_s
    tracker = ReadinessTracker(healthy=healthy, names=services, started=started)
    while True:
        record = read_agent_record(paths)
        if record is not None and _follow_events(record, tracker, deadline) is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(RECORD_POLL_S, remaining))
    if not tracker.ready:
        # One fresh look at the end: the stream may have been refused, or the last event still in flight.
        record = read_agent_record(paths)
        if record is not None:
            try:
                tracker.hello(AdminClient(record, read_token(paths)).get("/api/v1/status"))
            except (AgentNotRunning, AdminError):
                pass
    return WaitResult(
        ready=tracker.ready,
        agent=tracker.status is not None,
        status=tracker.document(),
        waiting=tracker.waiting() if tracker.status is not None else {},
        ready_after=dict(tracker.ready_after),
        elapsed=time.monotonic() - started,
    )


def _admin_socket_address(record: AgentRecord) -> tuple[str, int]:
    host, _, port = record.admin.rpartition(":")
    return host.strip("[]"), int(port)


def _follow_events(record: AgentRecord, tracker: ReadinessTracker, deadline: float) -> bool | None:
    """Follow one agent's events stream: True once ready, False at the deadline, None if it went away."""
    remaining = deadline - time.monotonic()
    try:
        # Our own socket: no HTTP proxy from the environment gets between us and loopback.
        sock = socket.create_connection(_admin_socket_address(record), timeout=max(remaining, 0.5))
    except OSError:
        return None
    try:
        stream = connect(
            f"ws://{record.admin}/api/v1/events",
            sock=sock,
            open_timeout=max(remaining, 1.0),
            close_timeout=1.0,
            max_size=None,
            ping_interval=None,
            compression=None,
        )
    except (OSError, TimeoutError, WebSocketException):
        sock.close()
        return None
    with stream:
        while True:
            if tracker.ready:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                text = stream.recv(timeout=remaining)
            except TimeoutError:
                return False
            except (ConnectionClosed, OSError):
                return None
            try:
                message = json.loads(text)
            except ValueError:
                continue
            if isinstance(message, dict):
                tracker.apply(message)
