"""Parsing of the human units used in config files: durations, byte rates and addresses."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?)?[bB](?:/s|ps)?\s*$")
_RATE_FACTORS = {
    None: 1,
    "k": 1000,
    "K": 1000,
    "ki": 1024,
    "Ki": 1024,
    "m": 1000**2,
    "M": 1000**2,
    "mi": 1024**2,
    "Mi": 1024**2,
    "g": 1000**3,
    "G": 1000**3,
    "gi": 1024**3,
    "Gi": 1024**3,
}


def parse_duration_s(value: object) -> float:
    """Seconds from "300ms", "2s", "1.5m", "1h" or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "2s" or "300ms"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration such as "2s" or "300ms"')
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(f'{value!r} is not a duration; write it as "2s", "300ms", "1m" or "1h"')
    return float(match.group(1)) * _DURATION_FACTORS_S[match.group(2)]


@dataclass(frozen=True, slots=True)
class DurationRange:
    """A uniform range of durations ("100ms..800ms"); a single duration has low == high."""

    low_s: float
    high_s: float


def parse_duration_range(value: object) -> DurationRange:
    """A `DurationRange` from "300ms" or "100ms..800ms"."""
    if isinstance(value, str) and ".." in value:
        low_text, _, high_text = value.partition("..")
        low, high = parse_duration_s(low_text), parse_duration_s(high_text)
        if high < low:
            raise ValueError(f"{value!r}: the upper bound is below the lower one")
        return DurationRange(low, high)
    single = parse_duration_s(value)
    return DurationRange(single, single)


def parse_rate_bytes_per_s(value: object) -> int:
    """Bytes per second from "64KB/s", "1MiB/s", "500B/s" or a bare number of bytes per second."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = _RATE_RE.match(value)
        if match is not None:
            rate = int(float(match.group(1)) * _RATE_FACTORS[match.group(2)])
            if rate > 0:
                return rate
    raise ValueError(f'{value!r} is not a bandwidth; write it as "64KB/s" or "1MiB/s"')


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port to listen on or connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: object) -> Address:
    """An `Address` from "127.0.0.1:7080", "[::1]:7080", "localhost:7080" or ":7080" (loopback)."""
    if not isinstance(value, str):
        raise ValueError('expected an address such as "127.0.0.1:7080"')
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f'{value!r} is not an address; write it as "127.0.0.1:7080"')
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is outside 0..65535")
    return Address(host or "127.0.0.1", port)
