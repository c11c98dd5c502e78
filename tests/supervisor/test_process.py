from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from devmesh.supervisor.process import build_argv, group_alive, spawn, stop_group


def test_simple_string_commands_exec_through_the_shell() -> None:
    assert build_argv("uvicorn app:app --port $PORT", {}) == [
        "/bin/sh",
        "-c",
        "exec uvicorn app:app --port $PORT",
    ]


def test_compound_commands_keep_the_shell() -> None:
    for command in ("a && b", "a | b", "FOO=1 run", "cd x; run", "run > log", "echo $(date)", "exec run"):
        assert build_argv(command, {}) == ["/bin/sh", "-c", command]


def test_list_commands_expand_variables_themselves() -> None:
    assert build_argv(["serve", "--port", "$PORT", "${PORT}x"], {"PORT": "3000"}) == [
        "serve",
        "--port",
        "3000",
        "3000x",
    ]


async def test_stop_group_terminates_the_leader_and_its_children(tmp_path: Path) -> None:
    script = "sleep 600 & sleep 600 & wait"
    spawned = await spawn(script, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    await asyncio.sleep(0.1)
    assert group_alive(spawned.pgid)
    code = await stop_group(spawned, grace_s=2)
    assert code is not None and code != 0
    assert not group_alive(spawned.pgid)


async def test_stop_group_kills_what_ignores_term(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    spawned = await spawn(f"{sys.executable} {script}", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert spawned.process.stdout is not None
    assert await asyncio.wait_for(spawned.process.stdout.readline(), 10) == b"ready\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    code = await stop_group(spawned, grace_s=0.3)
    assert code == -9
    assert 0.3 <= loop.time() - started < 3
    assert not group_alive(spawned.pgid)
