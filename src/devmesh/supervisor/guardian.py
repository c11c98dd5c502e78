"""The guardian: a tiny companion process that stops an agent's children if the agent dies.

The agent starts it with a pipe on its standard input and never writes to it. When the agent exits for
any reason, SIGKILL included, the kernel closes the pipe; the guardian reads end-of-file and stops every
process carrying the agent's marker. After a clean shutdown there is nothing left for it to stop.

Run as `python -m devmesh.supervisor.guardian MARKER`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from devmesh import const


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m devmesh.supervisor.guardian MARKER", file=sys.stderr)
        return 2
    marker = argv[1]
    # The terminal's Ctrl-C is for the agent; the guardian outlives it on purpose.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            chunk = os.read(0, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
    from devmesh.supervisor.reaper import find_marked, stop_processes

    for _ in range(3):
        leftovers = find_marked(marker)
        if not leftovers:
            break
        stop_processes(leftovers, grace_s=const.KILL_WAIT_S)
    return 0


class Guardian:
    """The agent's handle on its guardian process."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    async def start(cls, marker: str) -> Guardian:
        # subprocess.Popen (vfork, ~1 ms) rather than the loop's spawn (fork: 10 ms and more in a big
        # agent), on the critical path before the first service starts.
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "devmesh.supervisor.guardian", marker],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        return cls(process)

    async def close(self) -> None:
        """Let the guardian go: it sweeps once (finding nothing after a clean stop) and exits."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.to_thread(self._process.wait, const.AGENT_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            await asyncio.to_thread(self._process.wait)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
