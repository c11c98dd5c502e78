"""`requires`: which versions of a service this project accepts from peers and the remote.

PEP 440 specifiers (`>=1.4,<2`, `==1.4.2`) and the npm/semver shorthands teams use (`^1.4`, `~1.4.2`,
a bare `1.4.2` for exactly that version).
"""

from __future__ import annotations

import re
from functools import lru_cache

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

_SHORTHAND = re.compile(r"^\s*([\^~])\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*$")
_BARE = re.compile(r"^\s*\d+(\.\d+)*\s*$")


def _expand(part: str) -> str:
    found = _SHORTHAND.match(part)
    if found is None:
        return f"=={part.strip()}" if _BARE.match(part) else part
    kind, major_text, minor_text, patch_text = found.groups()
    major, minor, patch = int(major_text), int(minor_text or 0), int(patch_text or 0)
    low = f">={major}.{minor}.{patch}"
    if kind == "^":  # compatible: the left-most non-zero part stays
        if major > 0 or minor_text is None:
            high = f"<{major + 1}"
        elif minor > 0 or patch_text is None:
            high = f"<0.{minor + 1}"
        else:
            high = f"<0.0.{patch + 1}"
    else:  # ~: patch updates (or minor, when only the major is given)
        high = f"<{major}.{minor + 1}" if minor_text is not None else f"<{major + 1}"
    return f"{low},{high}"


@lru_cache(maxsize=256)
def parse_requires(text: str) -> SpecifierSet:
    """The specifier set for `requires`; ValueError with a hint on anything else."""
    try:
        return SpecifierSet(",".join(_expand(part) for part in text.split(",")))
    except InvalidSpecifier:
        raise ValueError(
            f'{text!r} is not a version range; write it as ">=1.4,<2", "^1.4" or "~1.4.2"'
        ) from None


def satisfies(version: str | None, requires: str | None) -> bool:
    """Whether `version` is accepted by `requires` (no requirement accepts anything; no version, nothing)."""
    if requires is None:
        return True
    if version is None:
        return False
    try:
        return parse_requires(requires).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False
