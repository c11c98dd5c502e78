"""Spawning a service's command in its own process group, and stopping the whole group.

Each child gets a new session (so Ctrl-C on the terminal reaches only the agent, which stops children in
dependency order) and the environment marker `DEVMESH_OWNER`, which its own children inherit: the reaper
finds every process of a project by it, even one that left the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devmesh import const

OWNER_ENV = "DEVMESH_OWNER"


class PopenProcess:
    """A child started by `subprocess.Popen` (vfork: ~1 ms), its exit awaited by a waiter thread.

    uvloop spawns with fork(), which copies the agent's page tables: 10 to 40 ms for each service, on
    the critical path of `devmesh up`. The thread sits in waitpid() for this one child (no GIL held).
    """

    def __init__(self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader) -> None:
        self._popen = popen
        self.stdout: asyncio.StreamReader | None = stdout
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        threading.Thread(target=self._wait, args=(loop,), name=f"wait-{popen.pid}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        code = self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(self._set, code)

    def _set(self, code: int) -> None:
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


@dataclass(frozen=True, slots=True)
class Spawned:
    """A running child and its process group."""

    process: PopenProcess
    pgid: int

    @property
    def pid(self) -> int:
        return self.process.pid


def build_argv(command: str | Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The argv for a command: a string runs through `sh -c` (so `$PORT`, pipes and `&&` work, as in a
    Procfile); a list runs as is, with `$NAME` / `${NAME}` items expanded from `env`."""
    if isinstance(command, str):
        if sys.platform == "win32":  # pragma: no cover - devmesh supervises on POSIX
            return shlex.split(command)
        # `exec` makes the service itself the group leader: its pid is the one `status` shows and
        # signals reach it directly rather than through a shell that may not forward them.
        return ["/bin/sh", "-c", f"exec {command}" if _is_simple_command(command) else command]
    expanded: list[str] = []
    for item in command:
        for name, value in env.items():
            item = item.replace("${" + name + "}", value).replace("$" + name, value) if "$" in item else item
        expanded.append(item)
    return expanded


_SHELL_SYNTAX = set(";&|<>()`\n") | {"$("}


def _is_simple_command(command: str) -> bool:
    """A single command without shell operators, which `exec` can replace the shell with."""
    if any(token in command for token in _SHELL_SYNTAX):
        return False
    words = command.split()
    return (
        bool(words) and "=" not in words[0] and words[0] not in {"exec", "cd", "export", "set", "source", "."}
    )


async def spawn(
    command: str | Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
) -> Spawned:
    """Start `command` in a new session with stdout and stderr merged into one pipe."""
    argv = build_argv(command, env)
    process = await _spawn_with_popen(argv, env=env, cwd=cwd)
    # With start_new_session the child is the leader of a new group whose id is its pid.
    return Spawned(process=process, pgid=process.pid)


async def _spawn_with_popen(argv: list[str], *, env: Mapping[str, str], cwd: Path) -> PopenProcess:
    # Blocking, on purpose: Popen's vfork returns in about a millisecond, far less than the fork of an
    # async spawn would block the loop for.
    popen = subprocess.Popen(  # noqa: ASYNC220
        argv,
        cwd=str(cwd),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert popen.stdout is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=const.LOG_LINE_MAX_BYTES * 2, loop=loop)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), popen.stdout)
        return PopenProcess(popen, reader)
    except OSError:
        popen.kill()
        popen.wait()
        raise


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still alive (zombies do not count).

    A grandchild orphaned by its group leader becomes a zombie of init, which may reap it late; signal 0
    still reaches a zombie, so on Linux the group is read from /proc instead.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def stop_group(spawned: Spawned, *, grace_s: float) -> int | None:
    """TERM the whole group, wait up to `grace_s` for all of it to exit, then KILL what is left.

    Returns the leader's exit code (negative for a signal), or None if it could not be collected.
    """
    signal_group(spawned.pgid, signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + grace_s
    code = await _wait_leader(spawned, deadline)
    while group_alive(spawned.pgid) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    if group_alive(spawned.pgid) or code is None:
        signal_group(spawned.pgid, signal.SIGKILL)
        if code is None:
            code = await _wait_leader(spawned, asyncio.get_running_loop().time() + const.KILL_WAIT_S)
    return code


async def _wait_leader(spawned: Spawned, deadline: float) -> int | None:
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(spawned.process.wait())
    except TimeoutError:
        return None


def reap_group_leftovers(pgid: int) -> None:
    """After a leader exits on its own, kill what it left behind in its group (no orphans)."""
    if group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
