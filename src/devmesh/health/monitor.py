"""The health monitor: runs a probe on a schedule and reports transitions.

Until the first success the probe runs often (a startup probe: failures then do not count): every
`HEALTH_STARTING_INTERVAL_S` for the first seconds, so that dependents start as soon as a service is ready
instead of a whole interval later, then every `HEALTH_STARTING_INTERVAL_MAX_S` at most. After that, it runs
every `interval` and reports unhealthy after `unhealthy_after` consecutive failures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from devmesh import const
from devmesh.health.probes import Probe

HealthListener = Callable[[bool, str | None], None]


class HealthMonitor:
    """Probes one service until cancelled, calling `on_change(healthy, reason)` on every transition."""

    def __init__(
        self,
        probe: Probe,
        *,
        interval_s: float,
        unhealthy_after: int,
        on_change: HealthListener,
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._unhealthy_after = unhealthy_after
        self._on_change = on_change
        self.healthy: bool | None = None
        self.last_reason: str | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        fast_until = loop.time() + const.HEALTH_STARTING_FAST_FOR_S
        while True:
            reason = await self._probe()
            self.last_reason = reason
            if reason is None:
                break
            # Most services are ready within a second or two: poll fast then, slower after.
            fast = loop.time() < fast_until
            await asyncio.sleep(
                const.HEALTH_STARTING_INTERVAL_S
                if fast
                else min(const.HEALTH_STARTING_INTERVAL_MAX_S, self._interval_s)
            )
        self._set(True, None)
        failures = 0
        while True:
            await asyncio.sleep(self._interval_s)
            reason = await self._probe()
            self.last_reason = reason
            if reason is None:
                failures = 0
                self._set(True, None)
                continue
            failures += 1
            if failures >= self._unhealthy_after:
                self._set(False, reason)

    def _set(self, healthy: bool, reason: str | None) -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            self._on_change(healthy, reason)
