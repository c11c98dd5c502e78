"""Keeping a data plane in step with the agent: apply on change (debounced), check for drift, report.

The agent calls `changed()` on every snapshot it publishes; a burst of them (services starting, health
flapping) becomes one apply of the route table as it is once the burst is over. Every outcome that is not
"unchanged" goes to `on_result` (the agent logs it and forwards a rejection to the hub link).

Drift policy, as a reconciler's: every `drift_interval_s` the engine compares what runs with what it
wrote. "repair" (the default) reports the drift and writes the last good config back; "report" only
reports it, leaving a hand edit in place until the next apply replaces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

from devmesh.dataplane.results import ApplyResult, DriftReport, EngineError
from devmesh.export.model import RouteModel
from devmesh.tasks import stop_tasks

__all__ = ["DRIFT_POLICIES", "DataplaneSync", "Engine"]

DEBOUNCE_S = 0.25  # changes closer together than this are applied once
DRIFT_INTERVAL_S = 5.0
DRIFT_POLICIES = ("repair", "report")
DriftPolicy = Literal["repair", "report"]


class Engine(Protocol):
    """What the agent needs of a data plane (NginxEngine is one)."""

    async def apply(self, model: RouteModel, revision_id: str) -> ApplyResult: ...
    async def check_drift(self) -> DriftReport: ...
    async def repair(self) -> ApplyResult: ...
    async def close(self) -> None: ...


class DataplaneSync:
    """Drives an `Engine` from the agent's snapshots. `start()` applies the first config and starts the
    loops; `close()` stops them and the engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        build: Callable[[], tuple[RouteModel, str]],
        log: Callable[[str], None],
        on_result: Callable[[ApplyResult], None] | None = None,
        on_drift: Callable[[DriftReport], None] | None = None,
        drift_policy: DriftPolicy = "repair",
        debounce_s: float = DEBOUNCE_S,
        drift_interval_s: float = DRIFT_INTERVAL_S,
    ) -> None:
        if drift_policy not in DRIFT_POLICIES:
            raise ValueError(f"drift policy {drift_policy!r}: use one of {', '.join(DRIFT_POLICIES)}")
        self.engine = engine
        self._build = build
        self._log = log
        self._on_result = on_result
        self._on_drift = on_drift
        self.drift_policy = drift_policy
        self.debounce_s = debounce_s
        self.drift_interval_s = drift_interval_s
        self.last: ApplyResult | None = None  # the latest apply or repair that was not "unchanged"
        self.last_drift: DriftReport | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> ApplyResult:
        """Apply the route table as it is now and start following changes; the first result, whatever it
        is (the agent decides whether a rejected first config stops it)."""
        result = await self.apply_now()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow_changes()), loop.create_task(self._watch_drift())]
        return result

    def changed(self) -> None:
        """The agent published a snapshot: apply the route table once the burst is over."""
        self._wake.set()

    async def close(self) -> None:
        """Stop the loops, then the engine (nginx) whatever happened to them; never raises."""
        await stop_tasks(
            self._tasks, lambda error: self._log(f"nginx: a data plane task had failed: {error!r}")
        )
        self._tasks = []
        try:
            await self.engine.close()
        except Exception as error:
            self._log(f"nginx: stopping the data plane failed: {error!r}")

    # -- the loops -------------------------------------------------------------------------------------

    async def _follow_changes(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.debounce_s)  # the rest of the burst joins this apply
            self._wake.clear()
            try:
                await self.apply_now()
            except EngineError as error:
                self._log(f"nginx: {error}")
            except Exception as error:  # whatever it was, the next change is applied again
                self._log(f"nginx: applying the route table failed: {error!r}")

    async def _watch_drift(self) -> None:
        while True:
            await asyncio.sleep(self.drift_interval_s)
            try:
                await self.check_once()
            except EngineError as error:
                self._log(f"nginx: drift check failed: {error}")
            except Exception as error:  # the next check runs all the same
                self._log(f"nginx: drift check failed: {error!r}")

    async def check_once(self) -> DriftReport:
        """One drift check, reported, and repaired under the "repair" policy."""
        report = await self.engine.check_drift()
        self.last_drift = report
        if not report.drifted:
            return report
        action = "repairing" if self.drift_policy == "repair" else "left as is ([engine] drift = report)"
        self._log(f"nginx: drift: {report.describe()}; {action}")
        if self._on_drift is not None:
            try:
                self._on_drift(report)
            except Exception as error:  # a failing hook must not stop the repair
                self._log(f"nginx: the on_drift hook failed: {error!r}")
        if self.drift_policy == "repair":
            self._record(await self.engine.repair())
        return report

    async def apply_now(self) -> ApplyResult:
        """Apply the route table as it is now (the agent's hub link waits on this for a revision)."""
        try:
            model, revision_id = self._build()
        except ValueError as error:  # an ExportError, or a value the model could not read
            raise EngineError(f"the route table cannot be built: {error}") from None
        result = await self.engine.apply(model, revision_id)
        self._record(result)
        return result

    def _record(self, result: ApplyResult) -> None:
        if result.status == "unchanged":
            return
        self.last = result
        self._log(result.summary())
        if result.status == "rejected" and result.details:
            for line in result.details.splitlines()[1:]:
                self._log(f"nginx:   {line}")
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception as error:  # a failing hook must not stop the data plane
                self._log(f"nginx: the on_result hook failed: {error!r}")
