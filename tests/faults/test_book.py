"""The agent's fault book: config faults switched at run time, run-time faults, scenarios on a timer."""

from __future__ import annotations

import asyncio

import pytest

from devmesh.config.schema import MeshConfig
from devmesh.faults.book import FaultBook, FaultError
from devmesh.faults.policy import FaultPolicy

CONFIG = MeshConfig.model_validate(
    {
        "mesh": {"name": "shop"},
        "services": {"api": {"port": 3000}, "payments": {"port": 3001}},
        "faults": {
            "slow-payments": {"service": "payments", "delay": "300ms", "rate": 0.5},
            "dormant": {"service": "api", "abort": 500, "enabled": False},
        },
        "scenarios": {"outage": {"faults": ["dormant"], "outage": ["payments"], "duration": "5s"}},
    }
)


def book() -> tuple[FaultBook, list[str]]:
    changes: list[str] = []
    faults = FaultBook(on_change=lambda event, details: changes.append(event))
    faults.load(CONFIG)
    return faults, changes


def test_config_faults_are_listed_and_only_enabled_ones_reach_the_proxy() -> None:
    faults, _ = book()
    assert {(p.name, p.enabled, p.source) for p in faults.policies()} == {
        ("slow-payments", True, "config"),
        ("dormant", False, "config"),
    }
    assert [p.name for p in faults.by_service()["payments"]] == ["slow-payments"]
    assert "api" not in faults.by_service()


def test_run_time_changes_and_their_errors() -> None:
    faults, changes = book()
    faults.add(FaultPolicy("boom", "api", abort=502))
    faults.set_enabled("dormant", True)
    assert [p.name for p in faults.by_service()["api"]] == ["dormant", "boom"]
    faults.remove("slow-payments")  # a config fault: switched off, still listed
    assert "payments" not in faults.by_service()
    assert any(p.name == "slow-payments" and not p.enabled for p in faults.policies())
    with pytest.raises(FaultError, match="fault of the config") as taken:
        faults.add(FaultPolicy("dormant", "api", abort=500))
    assert taken.value.status == 409
    with pytest.raises(FaultError, match="no fault named 'nope'") as missing:
        faults.remove("nope")
    assert missing.value.status == 404
    faults.load(CONFIG)  # a reload keeps what was switched at run time
    assert "payments" not in faults.by_service()
    faults.clear()
    assert faults.by_service() == {} and changes == ["added", "enabled", "removed", "cleared"]


async def test_scenarios_turn_faults_on_and_their_timer_off() -> None:
    faults, changes = book()
    loop = asyncio.get_running_loop()
    run = faults.run("outage", duration_s=0.2, loop=loop, services={"api", "payments"}, peers=set())
    assert run.ends_at - run.started_at == pytest.approx(0.2)
    by_service = faults.by_service()
    assert [p.name for p in by_service["api"]] == ["dormant"]  # switched on for the scenario only
    assert {p.name for p in by_service["payments"]} == {"slow-payments", "outage:down:payments"}
    assert faults.scenarios()[0]["name"] == "outage"
    await asyncio.sleep(0.3)
    assert faults.scenarios() == [] and "api" not in faults.by_service()
    assert changes == ["scenario_started", "scenario_ended"]


async def test_builtin_scenarios_and_partitions() -> None:
    faults, _ = book()
    loop = asyncio.get_running_loop()
    faults.run("flaky:api", duration_s=5, loop=loop, services={"api"}, peers=set())
    [flaky] = faults.by_service()["api"]
    assert flaky.abort == 503 and flaky.rate == 0.3
    faults.run("partition:bob-1", duration_s=5, loop=loop, services=set(), peers={"bob-1"})
    assert faults.partitioned() == {"bob-1"}
    with pytest.raises(FaultError, match="no service 'ghost'"):
        faults.run("down:ghost", duration_s=5, loop=loop, services={"api"}, peers=set())
    with pytest.raises(FaultError, match="no scenario named 'meteor'"):
        faults.run("meteor", duration_s=5, loop=loop, services={"api"}, peers=set())
    faults.stop("partition:bob-1")
    assert faults.partitioned() == frozenset()
    faults.close()
    assert faults.scenarios() == []
