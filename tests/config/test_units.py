from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devmesh.config.units import (
    Address,
    parse_address,
    parse_duration_range,
    parse_duration_s,
    parse_rate_bytes_per_s,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300ms", 0.3), ("2s", 2.0), ("1.5m", 90.0), ("1h", 3600.0), ("5", 5.0), (0.25, 0.25), (" 10 s ", 10.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "-1s", "1d", "", True, None, -3, "1 2s"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(bad)


def test_duration_range() -> None:
    assert parse_duration_range("100ms..800ms").high_s == pytest.approx(0.8)
    assert parse_duration_range("300ms").low_s == parse_duration_range("300ms").high_s
    with pytest.raises(ValueError, match="upper bound"):
        parse_duration_range("2s..1s")


def test_rates() -> None:
    assert parse_rate_bytes_per_s("64KB/s") == 64_000
    assert parse_rate_bytes_per_s("1MiB/s") == 1024 * 1024
    assert parse_rate_bytes_per_s(500) == 500
    with pytest.raises(ValueError, match="bandwidth"):
        parse_rate_bytes_per_s("fast")


def test_addresses() -> None:
    assert parse_address("127.0.0.1:7080") == Address("127.0.0.1", 7080)
    assert parse_address("[::1]:7080") == Address("::1", 7080)
    assert str(Address("::1", 1)) == "[::1]:1"
    assert parse_address(":7080") == Address("127.0.0.1", 7080)
    for bad in ("7080", "host:port", "h:70000", 7080):
        with pytest.raises(ValueError, match=r"address|port"):
            parse_address(bad)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_round_trip(value: float, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration_s(f"{value:.3f}{unit}") == pytest.approx(float(f"{value:.3f}") * factor)
