"""An agent started for a preflight: `start_agent` (`devmesh up --detach`) for `devmesh check` and the
pytest plugin, and the `devmesh.agent` start and stop testcases of `check`, which stops what it started."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from devmesh import const
from devmesh.agent.paths import StatePaths, read_agent_record
from devmesh.preflight.report import FAILED, CheckResult, Report
from devmesh.preflight.wait import RECORD_POLL_S

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig


@dataclass
class Started:
    """What `start_agent` did: the pid of the agent it started (None: it started none), and `up`'s exit
    code and output."""

    pid: int | None
    code: int
    output: str


def devmesh_argv(config: Path, env_name: str | None, *args: str) -> list[str]:
    """`python -m devmesh -f CONFIG [--env ENV] ARGS...`, with this interpreter."""
    argv = [sys.executable, "-m", "devmesh", "-f", str(config)]
    if env_name:
        argv += ["--env", env_name]
    return argv + list(args)


def start_agent(config: Path, env_name: str | None, timeout_s: float) -> Started:
    """`devmesh up --detach` for `config`, and the agent it started, even one `up` gave up waiting for.

    `up --detach` exits 1 when the services are not healthy in time, and the agent keeps running: it may
    not even have written its record yet (its admin API starts up to 2 s after the services). The record
    is then waited for while that agent lives, so that the caller can stop what it started.
    """
    try:
        run = subprocess.run(
            devmesh_argv(config, env_name, "up", "--detach", "--timeout", f"{max(timeout_s, 1.0):.1f}"),
            cwd=config.parent,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=max(timeout_s, 1.0) + const.AGENT_START_TIMEOUT_S,
        )
        code, output = run.returncode, "\n".join(part for part in (run.stdout, run.stderr) if part).strip()
    except subprocess.TimeoutExpired:
        code, output = -1, "`devmesh up --detach` did not return"
    if "already running" in output:
        return Started(None, code, output)  # another agent won the race: not ours to stop
    paths = StatePaths(config.parent)
    kept = re.search(r"the agent keeps running \(pid (\d+)\)", output)
    pid = int(kept.group(1)) if kept else None
    deadline = time.monotonic() + const.AGENT_START_TIMEOUT_S
    while True:
        record = read_agent_record(paths)
        if record is not None:
            return Started(record.pid, code, output)
        if pid is None or not psutil.pid_exists(pid) or time.monotonic() > deadline:
            break
        time.sleep(RECORD_POLL_S)
    if pid is not None and psutil.pid_exists(pid):
        # Ours, alive, and never reachable: stop it rather than leave it behind.
        try:
            process = psutil.Process(pid)
            process.terminate()
            process.wait(const.AGENT_STOP_TIMEOUT_S)
        except psutil.Error:
            pass
    return Started(None, code, output)


def start_for_check(loaded: LoadedConfig, deadline: float, report: Report) -> int | None:
    """The `devmesh.agent start` testcase: the agent's pid when it runs (even if not every service
    became healthy), else None."""
    began = time.monotonic()
    result = report.add(CheckResult("devmesh.agent", "start"))
    started = start_agent(loaded.path, loaded.env_name, deadline - began)
    result.time_s = time.monotonic() - began
    if started.pid is None:
        result.outcome = FAILED
        result.message = (
            f"no agent was running and `devmesh up --detach` could not start one (exit {started.code})"
        )
        result.details = started.output[-3000:]
        result.hint = (
            f"run `devmesh up` in {loaded.project_dir} to see why; the agent's log is .devmesh/agent.log"
        )
        return None
    result.message = f"no agent was running: started one (pid {started.pid}); check stops it at the end"
    return started.pid


def stop_for_check(loaded: LoadedConfig, pid: int, report: Report) -> None:
    """The `devmesh.agent stop` testcase: `devmesh down` for the agent `start_for_check` started."""
    began = time.monotonic()
    result = report.add(
        CheckResult("devmesh.agent", "stop", message=f"stopped the agent check started (pid {pid})")
    )
    try:
        run = subprocess.run(
            devmesh_argv(loaded.path, loaded.env_name, "down"),
            cwd=loaded.project_dir,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=const.AGENT_STOP_TIMEOUT_S + 15,
        )
        code, output = run.returncode, (run.stderr or run.stdout).strip()
    except subprocess.TimeoutExpired:
        code, output = -1, "timed out"
    result.time_s = time.monotonic() - began
    if code != 0:
        result.outcome = FAILED
        result.message = f"`devmesh down` failed (exit {code}): {output[-500:]}"
        result.hint = f"stop it by hand: `devmesh down` in {loaded.project_dir}, or kill pid {pid}"
