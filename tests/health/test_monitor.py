from __future__ import annotations

import asyncio

import pytest

from devmesh import const
from devmesh.health.monitor import HealthMonitor


@pytest.fixture(autouse=True)
def fast_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(const, "HEALTH_STARTING_INTERVAL_S", 0.001)


async def test_startup_failures_do_not_count_and_threshold_applies() -> None:
    results = iter(["booting", "booting", None, None, "bad", None, "bad", "bad", "bad", None])
    transitions: list[tuple[bool, str | None]] = []
    done = asyncio.Event()

    async def probe() -> str | None:
        try:
            return next(results)
        except StopIteration:
            done.set()
            return None

    def on_change(healthy: bool, reason: str | None) -> None:
        transitions.append((healthy, reason))

    monitor = HealthMonitor(probe, interval_s=0.001, unhealthy_after=2, on_change=on_change)
    task = asyncio.create_task(monitor.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    # Healthy after start-up; one failure alone is ignored; two in a row make it unhealthy; then healthy again.
    assert transitions == [(True, None), (False, "bad"), (True, None)]
