"""The config, health and versions checks: a config file or a status document in, testcases out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from devmesh.preflight.checks import check_config, check_health, check_versions, skip_service_checks
from devmesh.preflight.readiness import WaitResult
from devmesh.preflight.report import FAILED, PASSED, SKIPPED, CheckResult, Report
from support import Project


def entry(name: str, *, requires: str | None = None, **fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "origin": "local",
        "state": "running",
        "health": "healthy",
        "pid": 1,
        "port": 5000,
        "detail": None,
        "requires": requires,
        "endpoints": [],
    }
    document.update(fields)
    return document


def endpoint(origin: str, *, version: str | None, healthy: bool = True, **fields: Any) -> dict[str, Any]:
    return {"address": "127.0.0.1:5000", "origin": origin, "version": version, "healthy": healthy, **fields}


# -- config --------------------------------------------------------------------------------------


def test_a_valid_config_passes_naming_its_files(project: Project) -> None:
    path = project.write('[mesh]\nname = "x"\n[services.api]\ncommand = "run"\n')
    report = Report()
    loaded = check_config(path, None, report)
    assert loaded is not None and list(loaded.config.services) == ["api"]
    (result,) = report.results
    assert (result.classname, result.name, result.outcome) == ("devmesh.config", "devmesh.toml", PASSED)
    assert result.message == "valid: devmesh.toml; 1 service(s)"


def test_an_invalid_config_fails_with_every_problem(project: Project) -> None:
    path = project.write('[mesh]\nname = "x"\n[services.api]\ncommand = "run"\nhelth = 1\nport = "x"\n')
    report = Report()
    assert check_config(path, None, report) is None
    (result,) = report.results
    assert result.outcome == FAILED
    assert result.message.startswith("the config has 2 error(s): ")
    assert "services.api.helth" in result.details and "services.api.port" in result.details
    assert "file:line: key" in result.hint


def test_a_missing_config_fails_under_the_name_given(project: Project) -> None:
    report = Report()
    assert check_config(project.root / "nope.toml", None, report) is None
    assert report.results[0].name == str(project.root / "nope.toml")
    assert report.results[0].outcome == FAILED


# -- health --------------------------------------------------------------------------------------


def waited(*entries: dict[str, Any], waiting: dict[str, str], ready_after: dict[str, float]) -> WaitResult:
    return WaitResult(
        ready=not waiting,
        agent=True,
        status={"mesh": "m", "agent": {}, "services": list(entries)},
        waiting=waiting,
        ready_after=ready_after,
        elapsed=0.0,
    )


def test_health_passes_ready_services_and_fails_the_others_with_what_to_do() -> None:
    result = waited(
        entry("api"),
        entry("sick", state="starting", health="unknown", detail="GET /health answered 500"),
        entry("pay", origin="peer", endpoints=[endpoint("peer", version="1.0.0", peer="b")]),
        entry(
            "search",
            state="stopped",
            health="unknown",
            pid=None,
            port=None,
            remote="https://search.example",
            endpoints=[endpoint("remote", version=None)],
        ),
        waiting={"sick": "starting, unknown: GET /health answered 500"},
        ready_after={"api": 0.5, "search": 0.0},
    )
    report = Report()
    entries = check_health(result, 2.0, report)
    assert list(entries) == ["api", "sick", "search"]  # not the peer's service
    cases = {case.name: case for case in report.results}
    assert list(cases) == ["api", "sick", "search"]
    assert cases["api"].outcome == PASSED and cases["api"].message == "running, healthy"
    assert cases["api"].time_s >= 0.5
    assert cases["search"].message == "served by a peer or its remote"
    assert cases["sick"].outcome == FAILED
    assert (
        cases["sick"].message == "sick is not healthy after 2s: starting, unknown: GET /health answered 500"
    )
    assert "devmesh logs sick" in cases["sick"].hint


def test_skipped_service_checks() -> None:
    report = Report()
    skip_service_checks(["api", "web"], "no agent runs", report)
    assert [(case.name, case.outcome, case.message) for case in report.results] == [
        ("api", SKIPPED, "not checked: no agent runs"),
        ("web", SKIPPED, "not checked: no agent runs"),
    ]


# -- versions ------------------------------------------------------------------------------------


def versions(entries: list[dict[str, Any]], unhealthy: Iterable[str] = ()) -> dict[str, CheckResult]:
    report = Report()
    check_versions({item["name"]: item for item in entries}, set(unhealthy), report)
    return {case.name: case for case in report.results}


def test_versions_inside_and_outside_the_range() -> None:
    cases = versions(
        [
            entry("api", requires="^2", endpoints=[endpoint("local", version="2.1.0")]),
            entry("old", requires="^3", endpoints=[endpoint("local", version="2.1.0")]),
            entry("free", endpoints=[endpoint("local", version="0.1.0")]),  # no requires: no check
        ]
    )
    assert list(cases) == ["api", "old"]
    assert cases["api"].outcome == PASSED
    assert cases["api"].message == "local 127.0.0.1:5000 has 2.1.0, inside '^2'"
    assert cases["old"].outcome == FAILED
    assert (
        cases["old"].message
        == "old is served by local 127.0.0.1:5000 at version 2.1.0, outside requires '^3'"
    )
    assert "devmesh route old --peer ID" in cases["old"].hint


def test_versions_check_the_endpoint_requests_go_to() -> None:
    # The first healthy endpoint, in the order the proxy tries them: here a peer's.
    cases = versions(
        [
            entry(
                "api",
                requires=">=2",
                endpoints=[
                    endpoint("local", version="1.0.0", healthy=False),
                    endpoint("peer", version="2.5.0", peer="laptop-b"),
                ],
            )
        ]
    )
    assert cases["api"].outcome == PASSED
    assert cases["api"].message == "peer laptop-b has 2.5.0, inside '>=2'"


def test_versions_skip_what_cannot_be_checked() -> None:
    cases = versions(
        [
            entry("quiet", requires="^1", endpoints=[endpoint("local", version=None)]),
            entry("far", requires="^1", endpoints=[endpoint("remote", version=None)]),
            entry("sick", requires="^1", endpoints=[endpoint("local", version="1.0.0", healthy=False)]),
        ],
        unhealthy={"sick"},
    )
    assert {name: case.outcome for name, case in cases.items()} == {
        "quiet": SKIPPED,
        "far": SKIPPED,
        "sick": SKIPPED,
    }
    assert cases["quiet"].message.endswith('(set version = "..." in the config)')
    assert not cases["far"].message.endswith("in the config)")  # a remote's version is not ours to set
    assert cases["sick"].message == "not checked: sick is not healthy (see devmesh.health)"


def test_versions_fail_when_no_endpoint_is_usable() -> None:
    cases = versions(
        [
            entry(
                "api",
                requires="^2",
                detail="no endpoint satisfies ^2",
                endpoints=[endpoint("peer", version="1.0.0", healthy=False, peer="b")],
            )
        ]
    )
    assert cases["api"].outcome == FAILED
    assert cases["api"].message == "no endpoint of api is usable with requires '^2'"
    assert cases["api"].details == "no endpoint satisfies ^2"
