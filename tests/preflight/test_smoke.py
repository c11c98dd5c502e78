"""What a smoke request's answer means, judged without sockets (`get=`); the targets of a service."""

from __future__ import annotations

from typing import Any

import pytest

from devmesh.config import LoadedConfig, load_config
from devmesh.preflight.ports import loopback_address
from devmesh.preflight.report import FAILED, PASSED, SKIPPED, CheckResult, Report
from devmesh.preflight.smoke import SmokeAnswer, check_smoke, devmesh_page, smoke_targets
from support import Project

LISTEN = "127.0.0.1:7080"


@pytest.fixture
def loaded(project: Project) -> LoadedConfig:
    return load_config(
        project.write(
            """
[services.api]
command = "x"
routes = ["/api/*", "/v2"]
health = { http = "/health" }
[services.web]
command = "x"
[services.hidden]
command = "x"
hosts = ["*.hidden"]
"""
        )
    )


def entries(*names: str) -> dict[str, dict[str, Any]]:
    urls = {
        "api": "http://api.localhost:7080",
        "web": "http://web.localhost:7080",
        "hidden": None,
        "routed": "http://localhost:7080/routed/",
    }
    return {name: {"name": name, "url": urls[name]} for name in names}


def run(
    loaded: LoadedConfig,
    answers: dict[str, SmokeAnswer],
    *names: str,
    unhealthy: frozenset[str] = frozenset(),
    listen: str | None = LISTEN,
) -> list[CheckResult]:
    """check_smoke over `names`, with `answers` by "host/path" in place of the proxy."""
    asked: list[tuple[str, str, str]] = []

    def get(listen: str, host: str, path: str) -> SmokeAnswer:
        asked.append((listen, host, path))
        return answers[f"{host}{path}"]

    report = Report()
    check_smoke(loaded, entries(*names), set(unhealthy), listen, report, get=get)
    assert [f"{host}{path}" for _, host, path in asked] == [
        case.name.split("http://")[1] for case in report.results if case.outcome != SKIPPED
    ]
    return report.results


def test_targets_are_the_health_path_on_its_host_and_each_route(loaded: LoadedConfig) -> None:
    assert smoke_targets(loaded, "api", entries("api")["api"], 7080) == [
        ("api.localhost:7080", "/health"),
        ("localhost:7080", "/api/"),
        ("localhost:7080", "/v2"),
    ]
    assert smoke_targets(loaded, "web", entries("web")["web"], 7080) == [("web.localhost:7080", "/")]
    assert smoke_targets(loaded, "api", entries("api")["api"], 80)[1] == ("localhost", "/api/")
    assert smoke_targets(loaded, "hidden", entries("hidden")["hidden"], 7080) == []
    # A URL with a path is a route, not a host of its own; a service not in the config has no routes.
    assert smoke_targets(loaded, "routed", entries("routed")["routed"], 7080) == []


def test_a_2xx_and_a_4xx_from_the_service_pass(loaded: LoadedConfig) -> None:
    ok, teapot = run(
        loaded,
        {
            "web.localhost:7080/": SmokeAnswer(200, "local/web"),
            "api.localhost:7080/health": SmokeAnswer(418, "local/api@1.0", "short and stout"),
            "localhost:7080/api/": SmokeAnswer(200, "local/api@1.0"),
            "localhost:7080/v2": SmokeAnswer(200, "local/api@1.0"),
        },
        "web",
        "api",
    )[:2]
    assert (ok.outcome, ok.message, ok.note) == (PASSED, "200 from local/web", "")
    assert ok.name == "web GET http://web.localhost:7080/"
    assert teapot.outcome == PASSED
    assert (
        teapot.note == "418 from local/api@1.0: the mesh reaches api, which has nothing to serve at /health"
    )


def test_a_4xx_from_devmesh_itself_fails_nothing_routes_there(loaded: LoadedConfig) -> None:
    page = '{"status": 404, "error": "Not Found", "message": "no service answers at web.localhost"}'
    (case,) = run(loaded, {"web.localhost:7080/": SmokeAnswer(404, "", page)}, "web")
    assert case.outcome == FAILED
    assert (
        case.message
        == "GET http://web.localhost:7080/ answered 404 from devmesh itself: nothing routes there"
    )
    assert case.details == "no service answers at web.localhost"
    assert "[services.web]" in case.hint and "devmesh.toml" in case.hint


def test_a_5xx_fails_with_who_answered(loaded: LoadedConfig) -> None:
    page = '{"status": 503, "message": "web is not running", "hint": "`devmesh run web`"}'
    (from_devmesh,) = run(loaded, {"web.localhost:7080/": SmokeAnswer(503, "", page)}, "web")
    assert from_devmesh.outcome == FAILED
    assert (
        from_devmesh.message
        == "GET http://web.localhost:7080/ answered 503 from devmesh (no endpoint answered)"
    )
    assert from_devmesh.details == "web is not running devmesh says: `devmesh run web`"
    (from_service,) = run(loaded, {"web.localhost:7080/": SmokeAnswer(500, "local/web", "x" * 1500)}, "web")
    assert from_service.message == "GET http://web.localhost:7080/ answered 500 from local/web"
    assert from_service.details == "x" * 1000
    assert "devmesh requests -s web" in from_service.hint


def test_a_failed_request_fails(loaded: LoadedConfig) -> None:
    answer = SmokeAnswer(None, error="ConnectionRefusedError: [Errno 111] Connection refused")
    (case,) = run(loaded, {"web.localhost:7080/": answer}, "web")
    assert case.outcome == FAILED
    assert case.message == (
        f"GET http://web.localhost:7080/ through the proxy at {LISTEN} failed: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_what_is_not_requested_is_skipped(loaded: LoadedConfig) -> None:
    hidden, *api = run(loaded, {}, "hidden", "api", unhealthy=frozenset({"api"}))
    assert (hidden.name, hidden.outcome) == ("hidden", SKIPPED)
    assert hidden.message == "no host name or route to request (only wildcard hosts)"
    assert [case.outcome for case in api] == [SKIPPED] * 3
    assert api[0].message == "not checked: api is not healthy (see devmesh.health)"
    (no_listen,) = run(loaded, {}, "web", listen=None)
    assert no_listen.outcome == SKIPPED
    assert no_listen.message == "not checked: the agent has no proxy listen address"


@pytest.mark.parametrize(
    ("excerpt", "shown"),
    [
        ('{"message": "no route", "hint": "add one"}', "no route devmesh says: add one"),
        ('{"error": "Bad Gateway"}', "Bad Gateway"),
        ("<html>" + "x" * 400, ("<html>" + "x" * 400)[:300]),
        ('["not", "a", "page"]', '["not", "a", "page"]'),
    ],
)
def test_devmesh_page(excerpt: str, shown: str) -> None:
    assert devmesh_page(excerpt) == shown


# `ports.loopback_address`, which the smoke requests dial with, is tested here: a tests/preflight/test_ports.py
# would clash with tests/supervisor/test_ports.py (the test folders are not packages).
@pytest.mark.parametrize(
    ("address", "dialled"),
    [
        ("127.0.0.1:7080", ("127.0.0.1", 7080)),
        ("0.0.0.0:7080", ("127.0.0.1", 7080)),
        ("[::]:7080", ("::1", 7080)),
        ("[::1]:7443", ("::1", 7443)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_wildcard_addresses_are_dialled_on_loopback(address: str, dialled: tuple[str, int]) -> None:
    assert loopback_address(address) == dialled
