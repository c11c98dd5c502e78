"""One compose service in the foreground, as devmesh supervises it: `devmesh compose serve`.

`compose up SERVICE` in the foreground does not stop its container when it gets SIGTERM (podman-compose
only handles Ctrl-C, and a remote `podman start -a` does not pass the signal on), so a supervisor's stop
would leave the container running. This wrapper runs `compose up --no-deps SERVICE` (devmesh orders the
dependencies itself) and, on SIGTERM, SIGINT or SIGHUP, runs `compose stop SERVICE` and waits for `up` to
end. The supervisor's stop_grace for these services (`stop_grace_s`) covers the longest that can take,
so its SIGKILL (which reaches the whole group, `compose stop` included) never cuts a stop short.

The stop uses the compose file as it was when the service started: when an edit removed the service
(the agent reloads and stops it), the file on disk no longer knows it, and `compose stop` would stop
nothing. The text read at start goes to a hidden file beside the original for the stop (same folder:
same project name, same relative paths) and is removed after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from devmesh.compose.engine import ComposeEngine

POLL_INTERVAL_S = 0.1
UP_EXIT_WAIT_S = 10.0  # after `compose stop`, for `up` to notice and end
STOP_OVERHEAD_S = 20.0  # `compose stop` itself: the engine's round trips on top of the stop timeout
# From a stop signal to serve's exit at worst, on top of the stop timeout: `compose stop` (its timeout
# plus STOP_OVERHEAD_S), then `up` given UP_EXIT_WAIT_S to end and UP_EXIT_WAIT_S more after SIGTERM.
STOP_WORST_CASE_EXTRA_S = STOP_OVERHEAD_S + 2 * UP_EXIT_WAIT_S
STOP_GRACE_MARGIN_S = 5.0  # on top of that: Python's start-up, the kills and waits after a timeout


def stop_grace_s(stop_timeout_s: float) -> float:
    """The supervisor's stop_grace for a service `serve` runs with this stop timeout: longer than the
    longest `serve` can take to stop its container and end."""
    return max(0.0, stop_timeout_s) + STOP_WORST_CASE_EXTRA_S + STOP_GRACE_MARGIN_S


def serve(engine: ComposeEngine, compose_file: Path, service: str, *, stop_timeout_s: float) -> int:
    """Run `service` until it ends (its exit code) or a signal stops it (0 once its container stopped)."""
    stop_requested: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        stop_requested.append(signum)

    previous = {
        signum: signal.signal(signum, record) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    started_with = compose_file.read_bytes()
    try:
        up = subprocess.Popen(
            engine.command(compose_file, "up", "--no-deps", service),
            stdin=subprocess.DEVNULL,
            cwd=compose_file.parent,
        )
        while up.poll() is None and not stop_requested:
            try:
                up.wait(POLL_INTERVAL_S)
            except subprocess.TimeoutExpired:
                continue
        if not stop_requested:
            return up.returncode
        print(f"devmesh: stopping compose service {service}", file=sys.stderr, flush=True)
        stopped = _stop(engine, compose_file, started_with, service, stop_timeout_s)
        _end(up)
        return 0 if stopped else 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(
    engine: ComposeEngine, compose_file: Path, started_with: bytes, service: str, stop_timeout_s: float
) -> bool:
    try:
        unchanged = compose_file.read_bytes() == started_with
    except OSError:
        unchanged = False
    as_started = compose_file
    if not unchanged:
        as_started = compose_file.with_name(
            f".{compose_file.name}.devmesh-stop-{os.getpid()}{compose_file.suffix}"
        )
        as_started.write_bytes(started_with)
    argv = engine.command(as_started, "stop", "-t", f"{max(0, round(stop_timeout_s)):d}", service)
    try:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, cwd=compose_file.parent, timeout=stop_timeout_s + STOP_OVERHEAD_S
        )
    except subprocess.TimeoutExpired:
        print(f"devmesh: `{' '.join(argv)}` did not finish in time", file=sys.stderr, flush=True)
        return False
    finally:
        if as_started != compose_file:
            as_started.unlink(missing_ok=True)
    return result.returncode == 0


def _end(up: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + UP_EXIT_WAIT_S
    while up.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
    if up.poll() is None:
        up.terminate()
        try:
            up.wait(UP_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
