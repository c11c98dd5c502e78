"""Background tasks of a component, stopped together at its close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable


async def stop_tasks(
    tasks: Iterable[asyncio.Task[None]], on_failure: Callable[[BaseException], None]
) -> None:
    """Cancel `tasks` and wait for each; a task that had died of an error is reported to `on_failure`,
    never raised (a shutdown goes on after it)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as error:
            on_failure(error)
