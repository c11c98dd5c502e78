"""What "ready" means for a service of the status document, and the mesh as the events stream tells it.

Pure: a status document (`GET /api/v1/status`) or an events-stream message in, a decision out. Ready is
running, or healthy when the caller asks for healthy; a service with no local process counts when a
peer or its remote serves it. The socket work that feeds `ReadinessTracker` lives in `wait`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def served_elsewhere(entry: Mapping[str, Any]) -> bool:
    """A service with no local process whose requests go to a healthy peer or remote endpoint."""
    endpoints = entry.get("endpoints") or []
    if not any(endpoint.get("healthy") for endpoint in endpoints):
        return False
    if entry.get("origin") == "peer":
        return True
    # Remote-only (no command, no port): "stopped" with no local endpoint, by design.
    return (
        entry.get("state") == "stopped"
        and entry.get("pid") is None
        and entry.get("port") is None
        and bool(entry.get("remote"))
        and all(endpoint.get("origin") in ("peer", "remote") for endpoint in endpoints)
    )


def describe(entry: Mapping[str, Any]) -> str:
    """`running, unhealthy: HTTP 500 from /health`: a service's state for a message."""
    text = f"{entry.get('state')}, {entry.get('health')}"
    if entry.get("detail"):
        text += f": {entry['detail']}"
    return text


def service_problem(entry: Mapping[str, Any], *, healthy: bool) -> str | None:
    """Why a service of `/api/v1/status` is not ready yet, or None when it is.

    Ready means healthy with `healthy`, else running; a service with no local process counts when a
    peer or its remote serves it.
    """
    if served_elsewhere(entry):
        return None
    if healthy and entry.get("health") == "healthy":
        return None
    if not healthy and entry.get("state") == "running":
        return None
    return describe(entry)


@dataclass
class WaitResult:
    """What `wait_for_mesh` saw: the last status document and, per service, when it became ready."""

    ready: bool
    agent: bool  # an agent answered at some point
    status: dict[str, Any] | None
    waiting: dict[str, str]  # service -> why it is not ready (empty when ready)
    ready_after: dict[str, float]  # service -> seconds from the start until it was first ready
    elapsed: float


def declared(entry: Mapping[str, Any]) -> bool:
    """Whether a status entry is a service of this project: in its config, or registered here (an
    older agent without the field: anything not offered by a peer)."""
    return bool(entry.get("declared", entry.get("origin") != "peer"))


class ReadinessTracker:
    """The mesh as the events stream tells it: a `hello` with the status, then `service` events.

    `started` is a reading of `clock`: `ready_after` counts from it.
    """

    def __init__(
        self,
        *,
        healthy: bool,
        names: Sequence[str],
        started: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.healthy = healthy
        self.names = list(names)
        self.started = started
        self.clock = clock
        self.status: dict[str, Any] | None = None
        self.services: dict[str, dict[str, Any]] = {}
        self.ready_after: dict[str, float] = {}

    def apply(self, message: Mapping[str, Any]) -> None:
        """Take one events-stream message; kinds other than the status and services are ignored."""
        kind = message.get("type")
        if kind == "hello":
            self.hello(message["status"])
        elif kind == "service":
            entry = dict(message["service"])
            self.services[entry["name"]] = entry
        elif kind == "service_removed":
            self.services.pop(str(message.get("name")), None)
        else:
            return
        self._mark()

    def hello(self, status: Mapping[str, Any]) -> None:
        """Start over from a whole status document (the stream's `hello`, or a fresh GET)."""
        self.status = dict(status)
        self.services = {entry["name"]: dict(entry) for entry in status.get("services", [])}
        self._mark()

    def wanted(self) -> list[str]:
        """The names asked for, else every service of this project (not those only a peer offers)."""
        if self.names:
            return self.names
        return [name for name, entry in self.services.items() if declared(entry)]

    def waiting(self) -> dict[str, str]:
        """Each wanted service that is not ready, and why."""
        found: dict[str, str] = {}
        for name in self.wanted():
            entry = self.services.get(name)
            problem = "not in the mesh" if entry is None else service_problem(entry, healthy=self.healthy)
            if problem is not None:
                found[name] = problem
        return found

    @property
    def ready(self) -> bool:
        return self.status is not None and not self.waiting()

    def _mark(self) -> None:
        now = self.clock() - self.started
        for name in self.wanted():
            entry = self.services.get(name)
            if (
                name not in self.ready_after
                and entry is not None
                and service_problem(entry, healthy=self.healthy) is None
            ):
                self.ready_after[name] = now

    def document(self) -> dict[str, Any] | None:
        """The status document as last seen, with the services as the events left them."""
        if self.status is None:
            return None
        return {**self.status, "services": list(self.services.values())}
