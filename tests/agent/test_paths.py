from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from devmesh.agent.paths import (
    AgentRecord,
    StatePaths,
    agent_starting,
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


# An agent as `devmesh down` sees it while it starts: the lock taken at once, agent.json a while later.
_STARTING_AGENT = """
import fcntl, json, os, signal, sys, time
import psutil
root = sys.argv[1]
lock = open(os.path.join(root, "agent.lock"), "a+b")
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(1.0)
record = {"pid": os.getpid(), "create_time": psutil.Process().create_time(), "admin": "127.0.0.1:1",
          "listen": None, "config": os.path.join(root, "..", "devmesh.toml")}
with open(os.path.join(root, "agent.json.tmp"), "w") as handle:
    json.dump(record, handle)
os.replace(os.path.join(root, "agent.json.tmp"), os.path.join(root, "agent.json"))
time.sleep(30)
"""


def test_down_waits_for_an_agent_that_is_still_starting(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading

    from support import devmesh

    (tmp_path / "devmesh.toml").write_text('[mesh]\nname = "starting"\n', encoding="utf-8")
    state = tmp_path / ".devmesh"
    state.mkdir()
    agent = subprocess.Popen(
        [sys.executable, "-c", _STARTING_AGENT, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "locked"
        assert agent_starting(StatePaths(tmp_path)) and read_agent_record(StatePaths(tmp_path)) is None
        # Reaped as soon as it exits (as init reaps a detached agent): `down` waits for the pid to go.
        reaper = threading.Thread(target=agent.wait, daemon=True)
        reaper.start()
        stopped = devmesh("down", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == f"devmesh stopped (pid {agent.pid})"
        reaper.join(10)
        assert agent.returncode == 0  # it got the SIGTERM
        assert not agent_starting(StatePaths(tmp_path))
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        if agent.stdout is not None:
            agent.stdout.close()
