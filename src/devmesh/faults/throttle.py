"""The bandwidth fault: a response body let through at N bytes per second.

Bytes are written in slices of a tenth of a second's worth, each at the time the rate allows; while
slices wait, reading from the service is paused, so a throttled response holds at most one read of
memory. `finish` runs once the last slice is out.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

SLICES_PER_S = 10


class Throttle:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        bytes_per_s: int,
        *,
        write: Callable[[bytes], None],
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._rate = bytes_per_s
        self._slice = max(1, bytes_per_s // SLICES_PER_S)
        self._write = write
        self._pause = pause
        self._resume = resume
        self._queue: deque[bytes] = deque()
        self._started = time.monotonic()
        self._sent = 0
        self._timer: asyncio.TimerHandle | None = None
        self._then: Callable[[], None] | None = None

    @property
    def idle(self) -> bool:
        return not self._queue

    def push(self, data: bytes) -> None:
        for start in range(0, len(data), self._slice):
            self._queue.append(data[start : start + self._slice])
        self._drain()

    def finish(self, then: Callable[[], None]) -> None:
        """Run `then` once every byte pushed so far is written."""
        if not self._queue:
            then()
        else:
            self._then = then

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._then = None

    def _drain(self) -> None:
        self._timer = None
        while self._queue:
            # A slice goes when the bytes before it have had their time at the rate.
            due = self._started + self._sent / self._rate
            wait = due - time.monotonic()
            if wait > 0:
                self._pause()
                self._timer = self._loop.call_later(wait, self._drain)
                return
            piece = self._queue.popleft()
            self._sent += len(piece)
            self._write(piece)
        self._resume()
        then, self._then = self._then, None
        if then is not None:
            then()
