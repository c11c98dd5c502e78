"""Fault policies and the decision for one request: pure functions, unit-tested without sockets.

A policy matches requests by service, path pattern, method and headers, and touches each matching
request with probability `rate`: a delay before forwarding, an abort with a status code instead of
forwarding, an outage (503, or the connection reset), or a bandwidth limit on the response. Several
policies may touch one request: delays add up, the first abort or outage wins, the lowest bandwidth wins.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from devmesh.config.units import DurationRange, parse_duration_range, parse_rate_bytes_per_s

Outage = Literal["503", "reset"]
FAULT_HEADER = b"x-devmesh-fault"
HEADER_FAULT_NAME = "header"  # the name a fault asked for with X-DevMesh-Fault goes by


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    name: str
    service: str
    delay: DurationRange | None = None
    abort: int | None = None
    outage: Outage | None = None
    bandwidth: int | None = None  # bytes per second of the response body
    rate: float = 1.0
    paths: tuple[str, ...] = ()  # "/charge*" globs, or plain prefixes
    methods: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value) pairs that must all be present
    enabled: bool = True
    source: str = "config"  # config | runtime | scenario:NAME

    def matches(self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.paths and not any(_path_matches(pattern, path) for pattern in self.paths):
            return False
        for name, wanted in self.headers:
            encoded = name.encode("latin-1")
            if not any(
                given.lower() == encoded and value.decode("latin-1").strip() == wanted
                for given, value in headers
            ):
                return False
        return True

    def describe(self) -> str:
        """`delay 300ms, abort 503 at 20%`: what the policy does, for tables and pages."""
        parts = []
        if self.delay is not None:
            low, high = self.delay.low_s, self.delay.high_s
            parts.append(f"delay {_ms(low)}" + (f"..{_ms(high)}" if high != low else ""))
        if self.abort is not None:
            parts.append(f"abort {self.abort}")
        if self.outage is not None:
            parts.append("outage " + ("(connection reset)" if self.outage == "reset" else "503"))
        if self.bandwidth is not None:
            parts.append(f"bandwidth {self.bandwidth} B/s")
        text = ", ".join(parts)
        return text + (f" at {self.rate:.0%}" if self.rate < 1 else "")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g}ms"


def _path_matches(pattern: str, path: str) -> bool:
    path = path.split("?", 1)[0]
    if any(char in pattern for char in "*?["):
        return fnmatch.fnmatchcase(path, pattern)
    return path.startswith(pattern)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What the faults that fired do to one request."""

    names: tuple[str, ...]
    delay_s: float = 0.0
    abort: int | None = None
    reset: bool = False
    bandwidth: int | None = None

    @property
    def label(self) -> str:
        return ",".join(self.names)


@dataclass(slots=True)
class _Accumulator:
    names: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    abort: int | None = None
    reset: bool = False
    bandwidth: int | None = None


def decide(
    policies: Iterable[FaultPolicy],
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    draw: Callable[[], float] = random.random,
) -> FaultDecision | None:
    """The faults that fire for this request (each matching one with its own `rate`), or None."""
    found = _Accumulator()
    for policy in policies:
        if not policy.enabled or not policy.matches(method, path, headers):
            continue
        if policy.rate < 1.0 and draw() >= policy.rate:
            continue
        found.names.append(policy.name)
        if policy.delay is not None:
            low, high = policy.delay.low_s, policy.delay.high_s
            found.delay_s += low if high == low else low + (high - low) * draw()
        if found.abort is None and not found.reset:
            if policy.outage == "reset":
                found.reset = True
            elif policy.outage == "503":
                found.abort = 503
            elif policy.abort is not None:
                found.abort = policy.abort
        if policy.bandwidth is not None:
            found.bandwidth = min(found.bandwidth or policy.bandwidth, policy.bandwidth)
    if not found.names:
        return None
    return FaultDecision(tuple(found.names), found.delay_s, found.abort, found.reset, found.bandwidth)


class FaultHeaderError(ValueError):
    """An X-DevMesh-Fault header the proxy cannot read; the message says what it may be."""


_HEADER_HELP = (
    "X-DevMesh-Fault takes delay=200ms (or 100ms..800ms), abort=503, reset, bandwidth=10KB/s, comma-separated"
)
_STATUS_RE = re.compile(r"^[1-5]\d\d$")


def parse_fault_header(value: str, service: str) -> FaultPolicy:
    """The fault a request asks for itself (`[proxy] allow_fault_header = true`)."""
    delay: DurationRange | None = None
    abort: int | None = None
    outage: Outage | None = None
    bandwidth: int | None = None
    for part in value.split(","):
        key, _, argument = part.strip().partition("=")
        key, argument = key.strip().lower(), argument.strip()
        try:
            if key == "delay":
                delay = parse_duration_range(argument)
            elif key == "abort" and _STATUS_RE.match(argument):
                abort = int(argument)
            elif key == "reset" and not argument:
                outage = "reset"
            elif key == "bandwidth":
                bandwidth = parse_rate_bytes_per_s(argument)
            else:
                raise FaultHeaderError(f"{part.strip()!r}: {_HEADER_HELP}")
        except ValueError as error:
            if isinstance(error, FaultHeaderError):
                raise
            raise FaultHeaderError(f"{part.strip()!r}: {error}") from None
    if delay is None and abort is None and outage is None and bandwidth is None:
        raise FaultHeaderError(_HEADER_HELP)
    return FaultPolicy(
        HEADER_FAULT_NAME,
        service,
        delay=delay,
        abort=abort,
        outage=outage,
        bandwidth=bandwidth,
        source="header",
    )
