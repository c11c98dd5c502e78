"""The hot reload's trigger: the project's config files, overlays and `.env`, polled for changes.

Polled on the agent's loop (a scandir of one folder every CONFIG_POLL_INTERVAL_S), not watched by a
watchfiles thread: that thread takes the GIL back every few milliseconds, and each time the proxy's
requests in flight wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from devmesh import const


def config_signature(project_dir: Path, also: Collection[str] = ()) -> dict[str, tuple[int, int, int]]:
    """(mtime, size, inode) of each config file, overlay and `.env` in the project folder, and of the
    files named in `also` (a compose file the config is made from): file times are coarse (a few ms),
    and an editor that saves by renaming changes the inode."""
    signature: dict[str, tuple[int, int, int]] = {}
    try:
        entries = list(os.scandir(project_dir))
    except OSError:
        return signature
    for entry in entries:
        name = entry.name
        if (
            name == ".env"
            or name in also
            or (name.startswith("devmesh.") and name.endswith((".toml", ".yaml", ".yml")))
        ):
            with contextlib.suppress(OSError):
                stat = entry.stat()
                signature[name] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return signature


async def watch_config(
    project_dir: Path, on_change: Callable[[], Awaitable[None]], *, also: Collection[str] = ()
) -> None:
    """Await `on_change()` each time the config files in `project_dir` (and those named in `also`)
    change and settle; until cancelled."""
    seen = config_signature(project_dir, also)
    while True:
        await asyncio.sleep(const.CONFIG_POLL_INTERVAL_S)
        current = config_signature(project_dir, also)
        if current == seen:
            continue
        # Wait for the editor to finish writing (several files, or a write in pieces).
        while True:
            await asyncio.sleep(const.CONFIG_POLL_INTERVAL_S)
            settled = config_signature(project_dir, also)
            if settled == current:
                break
            current = settled
        seen = current
        await on_change()
