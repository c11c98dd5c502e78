"""A check's result as the terminal, the JSON and the JUnit report take it."""

from __future__ import annotations

from devmesh.preflight.report import ERROR, FAILED, PASSED, SKIPPED, CheckResult, Report


def test_text_joins_message_details_and_hint() -> None:
    result = CheckResult("devmesh.smoke", "api", FAILED, message="500", details="boom", hint="look")
    assert result.text() == "500\nboom\nWhat to do: look"
    assert CheckResult("devmesh.health", "api", message="running, healthy").text() == "running, healthy"


def test_as_dict() -> None:
    result = CheckResult("devmesh.ports", "listen 127.0.0.1:7080", message="free", time_s=0.12345)
    assert result.as_dict() == {
        "check": "devmesh.ports",
        "name": "listen 127.0.0.1:7080",
        "result": PASSED,
        "message": "free",
        "hint": "",
        "details": "",
        "note": "",
        "time": 0.123,
    }


def test_a_report_is_ok_without_failures_or_errors() -> None:
    report = Report()
    assert report.ok and report.count(PASSED) == 0
    added = report.add(CheckResult("devmesh.config", "devmesh.toml"))
    assert report.results == [added]
    report.add(CheckResult("devmesh.smoke", "web", SKIPPED))
    assert report.ok and report.count(SKIPPED) == 1
    report.add(CheckResult("devmesh.check", "internal", ERROR))
    assert not report.ok
    report.results.pop()
    report.add(CheckResult("devmesh.health", "api", FAILED))
    assert not report.ok and report.count(FAILED) == 1
    assert report.elapsed() >= 0
