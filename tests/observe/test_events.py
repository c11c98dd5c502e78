"""The events stream's parts without sockets: status diffs, traffic samples, quantiles, back-pressure."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from devmesh.observe.events import EventHub, TrafficSampler, bucket_quantile, service_events
from devmesh.proxy.observe import DURATION_BUCKETS_S, RequestRecord, RequestStats


def test_service_events_name_what_changed_and_what_it_was() -> None:
    before = {"api": {"name": "api", "state": "running", "health": "healthy"}, "old": {"name": "old"}}
    after = {
        "api": {"name": "api", "state": "crashed", "health": "unknown"},
        "new": {"name": "new", "state": "starting", "health": "unknown"},
    }
    events = service_events(before, after, 5.0)
    by_type = {(event["type"], event.get("name") or event["service"]["name"]): event for event in events}
    crashed = by_type[("service", "api")]
    assert crashed["service"]["state"] == "crashed" and crashed["previous"] == {
        "state": "running",
        "health": "healthy",
    }
    assert by_type[("service", "new")]["previous"] is None
    assert by_type[("service_removed", "old")]["time"] == 5.0
    assert service_events(after, after, 6.0) == []


def record(request_id: int, service: str = "api", status: int = 200) -> RequestRecord:
    return RequestRecord(
        0.0, "GET", "api.localhost", "/", status, service, "local", 0.001, "t", "e", request_id
    )


def test_traffic_samples_are_deltas_per_second_with_the_new_requests() -> None:
    stats = RequestStats()
    recent: deque[RequestRecord] = deque(maxlen=100)
    sampler = TrafficSampler()
    assert sampler.sample(stats, recent, 100.0)["services"] == {}
    for index in range(1, 11):
        stats.count("api", "local", 500 if index == 10 else 200, 0.002)
        recent.append(record(index, status=500 if index == 10 else 200))
    stats.count("web", "peer", 200, 0.3)
    recent.append(record(11, service="web"))
    sample = sampler.sample(stats, recent, 102.0)  # two seconds later: a rate per second
    assert sample["services"]["api"]["requests"] == 10 and sample["services"]["api"]["errors"] == 1
    assert sample["services"]["api"]["rps"] == 5.0
    assert 1.0 <= sample["services"]["api"]["p50_ms"] <= 2.5  # in the 1-2.5 ms bucket
    assert 250 <= sample["services"]["web"]["p95_ms"] <= 500
    assert [entry["id"] for entry in sample["requests"]] == list(range(1, 12))
    quiet = sampler.sample(stats, recent, 103.0)
    assert quiet["services"] == {} and quiet["requests"] == []


def test_a_busy_second_carries_at_most_the_newest_requests() -> None:
    stats = RequestStats()
    recent: deque[RequestRecord] = deque(record(index) for index in range(1, 501))
    sample = TrafficSampler().sample(stats, recent, 1.0)
    ids = [entry["id"] for entry in sample["requests"]]
    assert ids == list(range(451, 501))  # the newest 50, oldest first


def test_bucket_quantile_interpolates_like_prometheus() -> None:
    counts = [0.0] * (len(DURATION_BUCKETS_S) + 1)
    assert bucket_quantile(0.5, counts) == 0.0
    counts[DURATION_BUCKETS_S.index(0.01)] = 4  # all four in (0.005, 0.01]
    assert bucket_quantile(0.5, counts) == pytest.approx(0.0075)
    counts[-1] = 100  # beyond the last bound
    assert bucket_quantile(0.99, counts) == DURATION_BUCKETS_S[-1]


async def test_a_subscriber_that_falls_behind_is_dropped_not_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("devmesh.const.EVENTS_QUEUE_MAX", 3)
    hub = EventHub()
    slow, fast = hub.subscribe(), hub.subscribe()
    for index in range(3):
        hub.publish({"type": "n", "time": index})
        await fast.queue.get()
    hub.publish({"type": "n", "time": 3})  # the slow one's queue was full
    assert slow.overflowed and slow not in hub.subscribers and fast in hub.subscribers
    assert (await asyncio.wait_for(slow.queue.get(), 1))["type"] == "n"  # it still wakes up...
    assert slow.queue.qsize() <= 3  # ...and never holds more than the limit
    assert (await fast.queue.get())["time"] == 3
