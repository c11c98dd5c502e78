"""Ready and healthy, decided from status documents and events-stream messages: no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from devmesh.preflight.readiness import ReadinessTracker, describe, served_elsewhere, service_problem


def entry(name: str = "api", **fields: Any) -> dict[str, Any]:
    """A service of `GET /api/v1/status`: a local one, running and healthy unless told otherwise."""
    document: dict[str, Any] = {
        "name": name,
        "origin": "local",
        "state": "running",
        "health": "healthy",
        "pid": 1234,
        "port": 5000,
        "detail": None,
        "remote": None,
        "endpoints": [{"address": "127.0.0.1:5000", "origin": "local", "healthy": True}],
    }
    document.update(fields)
    return document


def remote_only(*, healthy: bool) -> dict[str, Any]:
    return entry(
        state="stopped",
        health="unknown",
        pid=None,
        port=None,
        remote="https://api.staging.example",
        endpoints=[{"address": "api.staging.example:443", "origin": "remote", "healthy": healthy}],
    )


def status(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"mesh": "shop", "agent": {"listen": "127.0.0.1:7080"}, "services": list(entries)}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("fields", "healthy", "problem"),
    [
        ({}, True, None),
        ({}, False, None),
        ({"health": "unknown"}, False, None),  # running is enough without --healthy
        (
            {"health": "unhealthy", "detail": "GET /health answered 500"},
            True,
            "running, unhealthy: GET /health answered 500",
        ),
        ({"state": "starting", "health": "unknown"}, False, "starting, unknown"),
        ({"state": "crashed", "health": "unknown", "endpoints": []}, True, "crashed, unknown"),
    ],
)
def test_service_problem(fields: dict[str, Any], healthy: bool, problem: str | None) -> None:
    assert service_problem(entry(**fields), healthy=healthy) == problem


def test_a_peer_or_remote_serving_a_service_makes_it_ready() -> None:
    peer = entry(
        origin="peer",
        state="stopped",
        health="unknown",
        pid=None,
        endpoints=[{"address": "10.0.0.2:7443", "origin": "peer", "peer": "b", "healthy": True}],
    )
    assert served_elsewhere(peer) and service_problem(peer, healthy=True) is None
    assert served_elsewhere(remote_only(healthy=True))
    assert service_problem(remote_only(healthy=True), healthy=True) is None
    # Not when nothing healthy serves it, nor for a local service that merely has a remote fallback.
    assert not served_elsewhere(remote_only(healthy=False))
    assert service_problem(remote_only(healthy=False), healthy=False) == "stopped, unknown"
    crashed_with_fallback = entry(
        state="crashed",
        health="unknown",
        remote="https://api.staging.example",
        endpoints=[{"address": "api.staging.example:443", "origin": "remote", "healthy": True}],
    )
    assert not served_elsewhere(crashed_with_fallback)


def test_describe() -> None:
    assert describe(entry()) == "running, healthy"
    assert (
        describe(entry(health="unhealthy", detail="connection refused"))
        == "running, unhealthy: connection refused"
    )


def test_nothing_is_ready_before_the_first_status() -> None:
    tracker = ReadinessTracker(healthy=True, names=(), started=0.0)
    assert not tracker.ready
    assert tracker.document() is None
    tracker.apply({"type": "traffic", "requests": 3})  # ignored
    assert tracker.status is None and not tracker.ready


def test_the_tracker_follows_service_events_and_times_each_service() -> None:
    clock = Clock()
    tracker = ReadinessTracker(healthy=True, names=(), started=clock.now, clock=clock)
    clock.now += 1.0
    tracker.apply(
        {
            "type": "hello",
            "status": status(
                entry("api"),
                entry("web", state="starting", health="unknown"),
                entry("pay", origin="peer", state="stopped", health="unknown", endpoints=[]),
            ),
        }
    )
    # Only this project's services are waited for, not those only a peer offers.
    assert tracker.wanted() == ["api", "web"]
    assert not tracker.ready
    assert tracker.waiting() == {"web": "starting, unknown"}
    assert tracker.ready_after == {"api": 1.0}

    clock.now += 2.5
    tracker.apply({"type": "service", "service": entry("web", health="unknown")})
    assert tracker.waiting() == {"web": "running, unknown"}  # running, not yet healthy
    clock.now += 0.5
    tracker.apply({"type": "service", "service": entry("web")})
    assert tracker.ready
    assert tracker.ready_after == {"api": 1.0, "web": 4.0}
    document = tracker.document()
    assert document is not None and document["mesh"] == "shop"
    assert [service["name"] for service in document["services"]] == ["api", "web", "pay"]


def test_named_services_must_be_in_the_mesh() -> None:
    tracker = ReadinessTracker(healthy=False, names=["api", "late"], started=0.0, clock=lambda: 0.0)
    tracker.hello(status(entry("api")))
    assert tracker.waiting() == {"late": "not in the mesh"}
    tracker.apply({"type": "service", "service": entry("late", health="unknown")})
    assert tracker.ready
    tracker.apply({"type": "service_removed", "name": "late"})
    assert not tracker.ready and tracker.waiting() == {"late": "not in the mesh"}


def test_ready_after_keeps_the_first_time() -> None:
    clock = Clock()
    tracker = ReadinessTracker(healthy=True, names=["api"], started=clock.now, clock=clock)
    tracker.hello(status(entry("api")))
    clock.now += 5
    tracker.apply({"type": "service", "service": entry("api", health="unhealthy")})
    tracker.apply({"type": "service", "service": entry("api")})
    assert tracker.ready_after == {"api": 0.0}


def test_a_service_of_the_config_that_only_a_peer_serves_is_waited_for() -> None:
    from devmesh.preflight.readiness import ReadinessTracker, declared

    offered = {"name": "search", "origin": "peer", "state": "running", "health": "healthy", "declared": False}
    ours = {"name": "api", "origin": "peer", "state": "starting", "health": "unknown", "declared": True}
    old_agent = {"name": "web", "origin": "local", "state": "running", "health": "healthy"}
    assert not declared(offered) and declared(ours) and declared(old_agent)
    tracker = ReadinessTracker(healthy=True, names=[], started=0.0, clock=lambda: 0.0)
    tracker.hello({"mesh": "shop", "services": [offered, ours, old_agent]})
    assert tracker.wanted() == ["api", "web"] and list(tracker.waiting()) == ["api"]
