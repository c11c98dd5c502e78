"""Running a `devmesh-NAME` program as `devmesh NAME ARGS...`, the way git runs `git-NAME`.

The program replaces the devmesh process (exec), so its exit code, its signals and its terminal are the
user's directly. It learns where the project is from its environment:

- `DEVMESH_CONFIG`: the config file devmesh would use (`-f`, `$DEVMESH_CONFIG`, or found walking up),
  so a `devmesh ...` it runs itself acts on the same project;
- `DEVMESH_PROJECT_DIR`: the folder of that config;
- `DEVMESH_ENV`: the overlay chosen with `--env`, when one was;
- `DEVMESH_ADMIN`: the admin API's URL (`http://127.0.0.1:7070`) when an agent runs for the project.
  Writes need the token in `$DEVMESH_PROJECT_DIR/.devmesh/token` (header `Authorization: Bearer ...`).

Without a config (a plugin that does not need one) the project variables are left unset.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn


def plugin_environment(
    base: Mapping[str, str], *, config_file: Path | None, env_name: str | None
) -> dict[str, str]:
    """`base` plus the project's whereabouts (module docstring); `config_file` is the `-f` option."""
    from devmesh.agent.paths import StatePaths, read_agent_record
    from devmesh.config.errors import ConfigError
    from devmesh.config.finder import find_config

    env = dict(base)
    try:
        found = find_config(explicit=config_file)
    except ConfigError:
        return env
    env["DEVMESH_CONFIG"] = str(found)
    env["DEVMESH_PROJECT_DIR"] = str(found.parent)
    if env_name:
        env["DEVMESH_ENV"] = env_name
    record = read_agent_record(StatePaths(found.parent))
    if record is not None:
        env["DEVMESH_ADMIN"] = f"http://{record.admin}"
    else:
        env.pop("DEVMESH_ADMIN", None)  # one inherited from an outer devmesh would name another project
    return env


def exec_program(path: Path, args: Sequence[str], env: Mapping[str, str]) -> NoReturn:
    """Replace this process with `path ARGS...`; raises OSError if it cannot be started."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(path, [str(path), *args], dict(env))
