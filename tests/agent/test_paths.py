from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from devmesh.agent.paths import (
    AgentRecord,
    StatePaths,
    read_agent_record,
    read_or_create_token,
    remove_agent_record,
    write_agent_record,
)


def test_token_is_created_once_and_private(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    token = read_or_create_token(paths)
    assert len(token) >= 32
    assert read_or_create_token(paths) == token
    assert paths.token_file.stat().st_mode & 0o777 == 0o600
    assert (paths.root / ".gitignore").read_text().strip().endswith("*")


def test_record_of_a_live_agent_is_read_and_a_stale_one_ignored(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    me = psutil.Process()
    record = AgentRecord(
        pid=os.getpid(), create_time=me.create_time(), admin="127.0.0.1:1", listen=None, config="x"
    )
    write_agent_record(paths, record)
    assert read_agent_record(paths) == record
    assert paths.pid_file.read_text().strip() == str(os.getpid())
    # Same pid, different start time: the pid was reused by another process.
    write_agent_record(paths, AgentRecord(os.getpid(), me.create_time() - 1000, "127.0.0.1:1", None, "x"))
    assert read_agent_record(paths) is None
    paths.agent_file.write_text("{not json")
    assert read_agent_record(paths) is None


def test_remove_only_our_own_record(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    write_agent_record(paths, AgentRecord(os.getpid(), time.time(), "127.0.0.1:1", None, "x"))
    remove_agent_record(paths, os.getpid() + 1)
    assert paths.agent_file.exists()
    remove_agent_record(paths, os.getpid())
    assert not paths.agent_file.exists()
    assert not paths.pid_file.exists()
