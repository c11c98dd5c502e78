"""`watch`: restart a service when files matching its globs change."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Callable
from pathlib import Path

from devmesh import const

_IGNORED_DIRS = {".git", ".devmesh", "__pycache__", "node_modules", ".venv", ".mypy_cache", ".ruff_cache"}


def matches(path: Path, root: Path, patterns: list[str]) -> bool:
    """Whether `path` (under `root`) matches one of the globs; `**` spans folders."""
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    if any(part in _IGNORED_DIRS for part in relative.parts):
        return False
    text = relative.as_posix()
    for pattern in patterns:
        if fnmatch.fnmatch(text, pattern) or relative.match(pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatch(text, pattern[3:]):
            return True
    return False


async def watch_files(root: Path, patterns: list[str], on_change: Callable[[list[Path]], None]) -> None:
    """Call `on_change` with the changed paths each time matching files change, until cancelled."""
    from watchfiles import awatch

    async for changes in awatch(
        root,
        debounce=const.WATCH_DEBOUNCE_MS,
        step=50,
        watch_filter=lambda _change, path: matches(Path(path), root, patterns),
        recursive=True,
    ):
        changed = sorted({Path(path) for _change, path in changes})
        if changed:
            on_change(changed)


def start_watch(
    root: Path, patterns: list[str], on_change: Callable[[list[Path]], None]
) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(
        watch_files(root, patterns, on_change), name="devmesh-watch"
    )
