from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devmesh.supervisor.guardian import Guardian
from devmesh.supervisor.process import OWNER_ENV
from devmesh.supervisor.reaper import owner_marker
from support import pid_alive, wait_for


async def test_guardian_stops_marked_processes_when_its_pipe_closes(tmp_path: Path) -> None:
    marker = owner_marker(tmp_path, os.getpid())
    guardian = await Guardian.start(marker)
    # A plain Popen is fine here: the test only needs a marked process, not a managed one.
    child = subprocess.Popen(["sleep", "600"], env={**os.environ, OWNER_ENV: marker}, start_new_session=True)  # noqa: ASYNC220
    try:
        assert pid_alive(child.pid)
        await guardian.close()  # what the kernel does for it when the agent dies
        wait_for(lambda: child.poll() is not None, timeout=5, what="the guardian to stop the child")
        assert not pid_alive(guardian.pid)
    finally:
        child.kill()
        child.wait()
