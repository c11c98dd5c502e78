"""DataplaneSync with a scripted engine: debounced applies, results and drift reported, the policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devmesh.dataplane.results import ApplyResult, DriftReport
from devmesh.dataplane.sync import DataplaneSync
from devmesh.export.model import RouteModel


def _model() -> RouteModel:
    return RouteModel("m", "localhost", (), (), ("localhost",), 30.0, 5.0, 1, "agent")


class ScriptedEngine:
    def __init__(self) -> None:
        self.applied: list[str] = []
        self.repairs = 0
        self.drift = DriftReport()
        self.reject_next = False
        self.closed = False

    async def apply(self, model: RouteModel, revision_id: str) -> ApplyResult:
        self.applied.append(revision_id)
        if self.reject_next:
            self.reject_next = False
            return ApplyResult("rejected", revision_id, "h", stage="test", details="emerg: no\nline 2")
        return ApplyResult("applied", revision_id, "h", live_revision_id=revision_id)

    async def check_drift(self) -> DriftReport:
        return self.drift

    async def repair(self) -> ApplyResult:
        self.repairs += 1
        self.drift = DriftReport()
        return ApplyResult("applied", "r", "h", live_revision_id="r")

    async def close(self) -> None:
        self.closed = True


async def _until(condition: object, what: str) -> None:
    for _ in range(200):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_burst_of_changes_is_one_apply() -> None:
    engine = ScriptedEngine()
    revision = iter(range(100))
    sync = DataplaneSync(
        engine, build=lambda: (_model(), f"r{next(revision)}"), log=lambda _: None, debounce_s=0.05
    )
    assert (await sync.start()).status == "applied"
    for _ in range(20):
        sync.changed()
        await asyncio.sleep(0.001)
    await _until(lambda: len(engine.applied) == 2, "the debounced apply")
    await asyncio.sleep(0.15)
    assert engine.applied == ["r0", "r1"]
    await sync.close()
    assert engine.closed


async def test_a_rejection_is_logged_and_handed_to_the_hook() -> None:
    engine = ScriptedEngine()
    lines: list[str] = []
    results: list[ApplyResult] = []
    sync = DataplaneSync(
        engine, build=lambda: (_model(), "r1"), log=lines.append, on_result=results.append, debounce_s=0.01
    )
    await sync.start()
    engine.reject_next = True
    sync.changed()
    await _until(lambda: len(results) == 2, "the rejection")
    assert results[1].status == "rejected" and sync.last is results[1]
    assert any("rejected revision r1 at test: emerg: no" in line for line in lines), lines
    assert "nginx:   line 2" in lines
    await sync.close()


async def test_a_failing_hook_does_not_stop_the_sync() -> None:
    engine = ScriptedEngine()
    lines: list[str] = []

    def broken(_: ApplyResult) -> None:
        raise RuntimeError("hub link down")

    sync = DataplaneSync(engine, build=lambda: (_model(), "r1"), log=lines.append, on_result=broken)
    assert (await sync.start()).ok
    assert any("on_result hook failed" in line for line in lines)
    await sync.close()


@pytest.mark.parametrize(("policy", "repairs"), [("repair", 1), ("report", 0)])
async def test_drift_is_reported_and_repaired_by_policy(policy: str, repairs: int) -> None:
    engine = ScriptedEngine()
    lines: list[str] = []
    drifts: list[DriftReport] = []
    sync = DataplaneSync(
        engine,
        build=lambda: (_model(), "r1"),
        log=lines.append,
        on_drift=drifts.append,
        drift_policy=policy,  # type: ignore[arg-type]
    )
    await sync.start()
    engine.drift = DriftReport(files=((str(Path("/p/nginx.conf")), "changed"),))
    report = await sync.check_once()
    assert report.drifted and drifts == [report]
    assert engine.repairs == repairs
    assert any("/p/nginx.conf changed behind devmesh's back" in line for line in lines), lines
    assert (await sync.check_once()).drifted is (policy == "report")
    await sync.close()


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="drift policy 'fix': use one of repair, report"):
        DataplaneSync(ScriptedEngine(), build=lambda: (_model(), "r"), log=print, drift_policy="fix")  # type: ignore[arg-type]


class FailingEngine(ScriptedEngine):
    """Raises what engine.py's OS calls could: once per kind, then works again."""

    def __init__(self) -> None:
        super().__init__()
        self.apply_errors: list[Exception] = []
        self.drift_errors: list[Exception] = []
        self.close_error: Exception | None = None

    async def apply(self, model: RouteModel, revision_id: str) -> ApplyResult:
        if self.apply_errors:
            raise self.apply_errors.pop(0)
        return await super().apply(model, revision_id)

    async def check_drift(self) -> DriftReport:
        if self.drift_errors:
            raise self.drift_errors.pop(0)
        return await super().check_drift()

    async def close(self) -> None:
        await super().close()
        if self.close_error is not None:
            raise self.close_error


async def test_the_loops_live_through_any_error_and_say_it() -> None:
    engine = FailingEngine()
    lines: list[str] = []
    revision = iter(range(100))
    sync = DataplaneSync(
        engine,
        build=lambda: (_model(), f"r{next(revision)}"),
        log=lines.append,
        debounce_s=0.01,
        drift_interval_s=0.02,
    )
    await sync.start()
    engine.apply_errors = [ProcessLookupError(3, "No such process"), OSError(28, "No space left on device")]
    engine.drift_errors = [PermissionError(13, "Permission denied"), RuntimeError("psutil")]
    for _ in range(3):
        sync.changed()
        await _until(lambda: not sync._wake.is_set(), "the debounced apply")
        await asyncio.sleep(0.03)
    await _until(lambda: len(engine.applied) == 2, "an apply after the failures")
    await _until(lambda: not engine.drift_errors, "the drift checks")
    await asyncio.sleep(0.05)
    assert all(not task.done() for task in sync._tasks), "a loop ended"
    text = "\n".join(lines)
    assert "applying the route table failed: ProcessLookupError" in text
    assert "applying the route table failed: OSError(28" in text
    assert "drift check failed: PermissionError" in text and "drift check failed: RuntimeError" in text
    await sync.close()


async def test_close_stops_the_engine_and_never_raises() -> None:
    engine = FailingEngine()
    lines: list[str] = []
    sync = DataplaneSync(engine, build=lambda: (_model(), "r1"), log=lines.append)
    await sync.start()

    async def died() -> None:
        raise OSError("a loop that died")

    sync._tasks.append(asyncio.get_running_loop().create_task(died()))
    await asyncio.sleep(0)
    engine.close_error = ProcessLookupError(3, "No such process")
    await sync.close()
    assert engine.closed
    assert any("a data plane task had failed" in line for line in lines), lines
    assert any("stopping the data plane failed: ProcessLookupError" in line for line in lines), lines
