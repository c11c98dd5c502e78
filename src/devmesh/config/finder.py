"""Finding the config file, without importing the schema (so `devmesh status` starts fast)."""

from __future__ import annotations

import os
from pathlib import Path

from devmesh import const
from devmesh.config.errors import ConfigError


def find_config(start: Path | None = None, explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config to use: `explicit` (`-f`), else `DEVMESH_CONFIG`, else the nearest one walking up."""
    chosen = explicit if explicit is not None else os.environ.get("DEVMESH_CONFIG") or None
    if chosen is not None:
        path = Path(chosen).expanduser()
        if path.is_dir():
            for name in const.CONFIG_NAMES:
                if (path / name).is_file():
                    return (path / name).resolve()
        if not path.is_file():
            raise ConfigError.single(
                f"config file {path} does not exist", hint="check -f / DEVMESH_CONFIG, or run `devmesh init`"
            )
        return path.resolve()
    directory = (start or Path.cwd()).resolve()
    for folder in (directory, *directory.parents):
        for name in const.CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    raise ConfigError.single(
        f"no devmesh.toml in {directory} or any folder above it",
        hint="run `devmesh init` to write one, or pass -f FILE",
    )
