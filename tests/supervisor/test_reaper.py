from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devmesh.supervisor.process import OWNER_ENV
from devmesh.supervisor.reaper import find_marked, owner_marker, project_key, reap_project
from support import pid_alive, wait_for


def test_reap_finds_marked_processes_even_outside_their_group(tmp_path: Path) -> None:
    marker = owner_marker(tmp_path, 12345)
    env = {**os.environ, OWNER_ENV: marker}
    inside = subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)
    # A daemonising grandchild: its own session, but it inherited the environment.
    outside = subprocess.Popen(["sh", "-c", "setsid sleep 600 & wait"], env=env, start_new_session=True)
    unrelated = subprocess.Popen(
        ["sleep", "600"], env={**os.environ, OWNER_ENV: owner_marker(tmp_path / "other", 1)}
    )
    try:
        wait_for(lambda: len(find_marked(project_key(tmp_path))) >= 3, what="the marked processes")
        assert reap_project(tmp_path, grace_s=1) >= 3
        assert find_marked(project_key(tmp_path)) == []
        inside.wait(5)
        outside.wait(5)
        assert pid_alive(unrelated.pid)
    finally:
        for process in (inside, outside, unrelated):
            process.kill()
            process.wait()


def test_marker_prefix_does_not_match_another_project(tmp_path: Path) -> None:
    key = project_key(tmp_path)
    assert owner_marker(tmp_path, 7) == f"{key}/7"
    assert project_key(tmp_path / "x") != key
