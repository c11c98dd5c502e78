from __future__ import annotations

import pytest

from devmesh.peers.versions import parse_requires, satisfies


@pytest.mark.parametrize(
    ("requires", "accepted", "refused"),
    [
        (">=1.4,<2", ["1.4.0", "1.9.9"], ["1.3.9", "2.0.0"]),
        ("^1.4", ["1.4.0", "1.99.0"], ["1.3.0", "2.0.0"]),
        ("^0.3", ["0.3.0", "0.3.9"], ["0.4.0", "0.2.9"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4"]),
        ("~1.4.2", ["1.4.2", "1.4.9"], ["1.5.0", "1.4.1"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        ("1.4.2", ["1.4.2"], ["1.4.3"]),
        ("^2.0, !=2.1.0", ["2.0.0", "2.2.0"], ["2.1.0", "3.0.0"]),
    ],
)
def test_ranges(requires: str, accepted: list[str], refused: list[str]) -> None:
    assert all(satisfies(version, requires) for version in accepted)
    assert not any(satisfies(version, requires) for version in refused)


def test_no_requirement_accepts_anything_and_no_version_satisfies_one() -> None:
    assert satisfies("0.0.1", None) and satisfies(None, None)
    assert not satisfies(None, ">=1") and not satisfies("not-a-version", ">=1")


def test_bad_ranges_say_how_to_write_one() -> None:
    with pytest.raises(ValueError, match=r'"\^1.4"'):
        parse_requires("about 1.4")
