"""The files an agent keeps in the project's `.devmesh/` folder, and how the CLI finds a running agent."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devmesh import const


@dataclass(frozen=True)
class StatePaths:
    """`.devmesh/` of one project."""

    project_dir: Path

    @property
    def root(self) -> Path:
        return self.project_dir / const.STATE_DIR_NAME

    @property
    def pid_file(self) -> Path:
        return self.root / "agent.pid"

    @property
    def agent_file(self) -> Path:
        """Where a running agent says how to reach it (its admin address may be port 0 in the config)."""
        return self.root / "agent.json"

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# devmesh's runtime state: never commit it\n*\n", encoding="utf-8")


def read_or_create_token(paths: StatePaths) -> str:
    """The project's admin token, created with mode 0600 on first use."""
    paths.ensure()
    with contextlib.suppress(FileNotFoundError):
        token = paths.token_file.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    descriptor = os.open(paths.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def read_token(paths: StatePaths) -> str | None:
    try:
        return paths.token_file.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class AgentRecord:
    """What `agent.json` says about a running agent."""

    pid: int
    create_time: float
    admin: str
    listen: str | None
    config: str

    def alive(self) -> bool:
        """Whether the recorded process still runs (and is the same process, not a reused pid)."""
        try:
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.create_time) < 1.0
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def write_agent_record(paths: StatePaths, record: AgentRecord) -> None:
    paths.ensure()
    temporary = paths.agent_file.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record.__dict__, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, paths.agent_file)
    paths.pid_file.write_text(f"{record.pid}\n", encoding="utf-8")


def read_agent_record(paths: StatePaths) -> AgentRecord | None:
    """The running agent of this project, or None (a stale record is ignored)."""
    try:
        data: dict[str, Any] = json.loads(paths.agent_file.read_text(encoding="utf-8"))
        record = AgentRecord(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            admin=str(data["admin"]),
            listen=data.get("listen"),
            config=str(data["config"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.alive() else None


def agent_starting(paths: StatePaths) -> bool:
    """Whether an agent holds `.devmesh/agent.lock` (it takes the lock first thing; `agent.json` comes
    once its admin API answers, seconds later)."""
    try:
        handle = (paths.root / "agent.lock").open("rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def wait_for_agent_record(paths: StatePaths, timeout_s: float) -> AgentRecord | None:
    """The record of the agent that is starting, once it is written (None: no agent after all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = read_agent_record(paths)
        if record is not None or not agent_starting(paths):
            return record
        time.sleep(0.05)
    return read_agent_record(paths)


def remove_agent_record(paths: StatePaths, pid: int) -> None:
    """Remove the record if it is still ours (a newer agent may have replaced it)."""
    try:
        data = json.loads(paths.agent_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if data.get("pid") == pid:
        for path in (paths.agent_file, paths.pid_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
