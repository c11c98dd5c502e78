"""Which compose implementation runs the services: `docker compose`, `docker-compose`, `podman compose`
or `podman-compose`, the first that works, unless DEVMESH_COMPOSE names one."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_OVERRIDE = "DEVMESH_COMPOSE"
PROBE_TIMEOUT_S = 10.0


class ComposeNotFound(RuntimeError):
    """No compose implementation works here; the message says what to install or set."""


@dataclass(frozen=True)
class ComposeEngine:
    argv: tuple[str, ...]  # the command that takes compose's arguments, e.g. ("docker", "compose")

    @property
    def label(self) -> str:
        return shlex.join(self.argv)

    def command(self, compose_file: Path, *args: str) -> list[str]:
        return [*self.argv, "-f", str(compose_file), *args]


def detect_engine(environ: Mapping[str, str] | None = None) -> ComposeEngine:
    """DEVMESH_COMPOSE if set, else the first of docker compose, docker-compose, podman compose,
    podman-compose that answers (podman-compose is also looked for beside this Python, in its venv)."""
    environ = os.environ if environ is None else environ
    override = environ.get(ENV_OVERRIDE, "").strip()
    if override:
        argv = tuple(shlex.split(override))
        if shutil.which(argv[0], path=_search_path(environ)) is None:
            raise ComposeNotFound(f"{ENV_OVERRIDE}={override!r}: {argv[0]!r} is not an executable on PATH")
        return ComposeEngine(argv)
    search = _search_path(environ)
    for candidate in (("docker", "compose"), ("docker-compose",), ("podman", "compose"), ("podman-compose",)):
        executable = shutil.which(candidate[0], path=search)
        if executable is None:
            continue
        if len(candidate) == 1:
            return ComposeEngine((executable,))
        if _answers([executable, *candidate[1:], "version"], environ):
            return ComposeEngine((executable, *candidate[1:]))
    raise ComposeNotFound(
        "no compose implementation found: install Docker Compose (`docker compose`), docker-compose or "
        f"podman-compose (`pip install podman-compose`), or set {ENV_OVERRIDE} to the command to use"
    )


def _search_path(environ: Mapping[str, str]) -> str:
    return os.pathsep.join([environ.get("PATH", os.defpath), str(Path(sys.executable).parent)])


def _answers(argv: list[str], environ: Mapping[str, str]) -> bool:
    try:
        result = subprocess.run(
            argv,
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0
