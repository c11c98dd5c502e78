"""Fault matching and the decision for one request, with a fixed draw instead of chance."""

from __future__ import annotations

import pytest

from devmesh.config.units import DurationRange
from devmesh.faults.policy import FaultHeaderError, FaultPolicy, decide, parse_fault_header

HEADERS = [(b"Host", b"api.localhost"), (b"X-Chaos", b"on")]


def test_matching_by_path_method_and_headers() -> None:
    policy = FaultPolicy("f", "api", abort=503, paths=("/charge*",), methods=frozenset({"POST"}))
    assert policy.matches("POST", "/charge/42?x=1", HEADERS)
    assert not policy.matches("GET", "/charge/42", HEADERS)
    assert not policy.matches("POST", "/refund", HEADERS)
    prefix = FaultPolicy("f", "api", abort=503, paths=("/api/",))
    assert prefix.matches("GET", "/api/orders", []) and not prefix.matches("GET", "/apix", [])
    chaos = FaultPolicy("f", "api", abort=503, headers=(("x-chaos", "on"),))
    assert chaos.matches("GET", "/", HEADERS)
    assert not chaos.matches("GET", "/", [(b"x-chaos", b"off")]) and not chaos.matches("GET", "/", [])


def test_decide_adds_delays_first_abort_wins_lowest_bandwidth_wins() -> None:
    policies = [
        FaultPolicy("slow", "api", delay=DurationRange(0.1, 0.1)),
        FaultPolicy("slower", "api", delay=DurationRange(0.2, 0.4)),
        FaultPolicy("boom", "api", abort=502),
        FaultPolicy("down", "api", outage="503"),
        FaultPolicy("thin", "api", bandwidth=1000),
        FaultPolicy("thinner", "api", bandwidth=500),
        FaultPolicy("off", "api", abort=500, enabled=False),
    ]
    decision = decide(policies, "GET", "/", [], draw=lambda: 0.5)
    assert decision is not None
    assert decision.names == ("slow", "slower", "boom", "down", "thin", "thinner")
    assert decision.delay_s == pytest.approx(0.1 + 0.3)  # uniform in 0.2..0.4 at draw 0.5
    assert decision.abort == 502 and not decision.reset and decision.bandwidth == 500
    assert decision.label == "slow,slower,boom,down,thin,thinner"


def test_rate_is_drawn_per_policy_and_reset_beats_a_later_abort() -> None:
    flaky = FaultPolicy("flaky", "api", abort=503, rate=0.25)
    assert decide([flaky], "GET", "/", [], draw=lambda: 0.24) is not None
    assert decide([flaky], "GET", "/", [], draw=lambda: 0.25) is None
    both = [FaultPolicy("gone", "api", outage="reset"), FaultPolicy("boom", "api", abort=500)]
    decision = decide(both, "GET", "/", [])
    assert decision is not None and decision.reset and decision.abort is None
    assert decide([], "GET", "/", []) is None


def test_the_fault_header_a_request_asks_for() -> None:
    asked = parse_fault_header("delay=200ms, abort=503", "api")
    assert asked.delay == DurationRange(0.2, 0.2) and asked.abort == 503 and asked.name == "header"
    assert parse_fault_header("reset", "api").outage == "reset"
    assert parse_fault_header("bandwidth=10KB/s", "api").bandwidth == 10_000
    assert parse_fault_header("delay=100ms..300ms", "api").delay == DurationRange(0.1, 0.3)
    for bad in ("", "abort=99", "abort=xyz", "delay=soon", "explode", "reset=1"):
        with pytest.raises(FaultHeaderError, match=r"X-DevMesh-Fault|duration|abort"):
            parse_fault_header(bad, "api")


def test_describe_says_what_a_fault_does() -> None:
    policy = FaultPolicy("f", "api", delay=DurationRange(0.1, 0.8), abort=503, rate=0.2)
    assert policy.describe() == "delay 100ms..800ms, abort 503 at 20%"
    assert FaultPolicy("f", "api", outage="reset").describe() == "outage (connection reset)"
