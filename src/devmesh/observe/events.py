"""The events stream (`GET /api/v1/events`): every change of the mesh, pushed, and traffic once a second.

Events are JSON-ready dicts with a `type` and a `time`. The agent publishes them where changes happen
(a new snapshot, a pin, a reload); the hub fans them out to each subscriber's bounded queue. A subscriber
that falls behind is dropped rather than allowed to grow memory without bound: its client reconnects and
starts again from a fresh `hello`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from devmesh import const
from devmesh.proxy.observe import DURATION_BUCKETS_S, RequestRecord, RequestStats

Event = dict[str, Any]


class Subscription:
    """One client of the stream: a queue of events, and whether the hub gave up on it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=const.EVENTS_QUEUE_MAX)
        self.overflowed = False


class EventHub:
    def __init__(self) -> None:
        self.subscribers: list[Subscription] = []
        # The last minute of traffic samples, so a dashboard opened now starts with full charts.
        self.traffic_history: deque[Event] = deque(maxlen=const.TRAFFIC_HISTORY_SAMPLES)

    def subscribe(self) -> Subscription:
        subscription = Subscription()
        self.subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self.subscribers:
            self.subscribers.remove(subscription)

    def publish(self, event: Event) -> None:
        for subscription in list(self.subscribers):
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                subscription.overflowed = True
                self.unsubscribe(subscription)
                # Wakes the sender, which sees `overflowed` and closes the connection.
                subscription.queue.get_nowait()
                subscription.queue.put_nowait({"type": "overflow"})


def service_events(
    previous: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]], now: float
) -> list[Event]:
    """`service` events for every service whose status changed, `service_removed` for those gone."""
    events: list[Event] = []
    for name, entry in current.items():
        before = previous.get(name)
        if before == entry:
            continue
        events.append(
            {
                "type": "service",
                "time": now,
                "service": dict(entry),
                "previous": None
                if before is None
                else {"state": before.get("state"), "health": before.get("health")},
            }
        )
    for name in previous.keys() - current.keys():
        events.append({"type": "service_removed", "time": now, "name": name})
    return events


class TrafficSampler:
    """Per-second traffic per service, from the proxy's counters: what changed since the last sample."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._durations: dict[tuple[str, str], list[float]] = {}
        self._last_id = 0
        self._last_time: float | None = None

    def sample(self, stats: RequestStats, recent: deque[RequestRecord], now: float) -> Event:
        interval = now - self._last_time if self._last_time is not None else 1.0
        self._last_time = now
        services: dict[str, dict[str, float]] = {}
        for key, count in stats.requests.items():
            delta = count - self._requests.get(key, 0)
            if delta:
                self._requests[key] = count
                entry = services.setdefault(key[0], {"requests": 0, "errors": 0})
                entry["requests"] += delta
                if key[2] >= 500:
                    entry["errors"] += delta
        histograms: dict[str, list[float]] = {}
        for pair, histogram in stats.durations.items():
            before = self._durations.get(pair)
            if before == histogram:
                continue
            self._durations[pair] = list(histogram)
            merged = histograms.setdefault(pair[0], [0.0] * len(histogram))
            for index, value in enumerate(histogram):
                merged[index] += value - (before[index] if before is not None else 0.0)
        for name, entry in services.items():
            entry["rps"] = round(entry["requests"] / max(interval, 1e-3), 2)
            counts = histograms.get(name)
            if counts is not None:
                entry["p50_ms"] = round(bucket_quantile(0.5, counts[:-1]) * 1000, 3)
                entry["p95_ms"] = round(bucket_quantile(0.95, counts[:-1]) * 1000, 3)
        finished: list[Event] = []
        for record in reversed(recent):
            if record.id <= self._last_id or len(finished) >= const.TRAFFIC_REQUESTS_MAX:
                break
            finished.append(record.summary())
        if finished:
            self._last_id = int(finished[0]["id"])
        finished.reverse()
        return {"type": "traffic", "time": now, "services": services, "requests": finished}


def bucket_quantile(quantile: float, counts: list[float]) -> float:
    """The quantile of durations counted in DURATION_BUCKETS_S (+Inf last), interpolated within its
    bucket the way Prometheus's histogram_quantile does; 0 without data."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = quantile * total
    running = 0.0
    for index, count in enumerate(counts):
        if running + count >= rank and count > 0:
            if index >= len(DURATION_BUCKETS_S):
                return DURATION_BUCKETS_S[-1]  # beyond the last bound: say the last bound, as Prometheus
            lower = DURATION_BUCKETS_S[index - 1] if index > 0 else 0.0
            upper = DURATION_BUCKETS_S[index]
            return lower + (upper - lower) * (rank - running) / count
        running += count
    return DURATION_BUCKETS_S[-1]
