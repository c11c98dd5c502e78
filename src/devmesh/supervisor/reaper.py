"""Finding and stopping every process a devmesh agent started, by the `DEVMESH_OWNER` marker.

The marker is `<project key>/<agent pid>`. Children inherit it, so grandchildren that left their process
group are found too. Two users: the guardian (when its agent dies) and `devmesh up` (processes left by an
agent that was killed together with its guardian).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import psutil

from devmesh.supervisor.process import OWNER_ENV


def project_key(project_dir: Path) -> str:
    """A short stable key for a project folder."""
    return hashlib.sha256(str(project_dir.resolve()).encode()).hexdigest()[:16]


def owner_marker(project_dir: Path, agent_pid: int) -> str:
    return f"{project_key(project_dir)}/{agent_pid}"


def find_marked(prefix: str) -> list[psutil.Process]:
    """Processes whose `DEVMESH_OWNER` starts with `prefix` (a project key, or a full marker)."""
    found: list[psutil.Process] = []
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        try:
            marker = process.environ().get(OWNER_ENV, "")
        except (psutil.Error, OSError):
            continue
        if marker == prefix or marker.startswith(prefix + "/"):
            found.append(process)
    return found


def stop_processes(processes: list[psutil.Process], *, grace_s: float) -> int:
    """TERM, wait up to `grace_s`, then KILL; returns how many were signalled."""
    signalled = 0
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
            signalled += 1
        except psutil.Error:
            continue
    _gone, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=2.0)
    return signalled


def reap_project(project_dir: Path, *, grace_s: float = 2.0) -> int:
    """Stop every process left over from an earlier agent of this project; returns how many."""
    deadline = time.monotonic() + grace_s + 3.0
    total = 0
    # A process may fork while we stop its parent: sweep until nothing is left (bounded).
    while time.monotonic() < deadline:
        leftovers = find_marked(project_key(project_dir))
        if not leftovers:
            break
        total += stop_processes(leftovers, grace_s=grace_s)
    return total
