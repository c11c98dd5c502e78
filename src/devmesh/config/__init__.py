"""The config file: schema, loading, overlays, variable expansion and located errors.

Names are imported on first use: `find_config` and `ConfigError` do not pull in pydantic, which keeps
the CLI's light commands fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devmesh.config.errors import ConfigError, ConfigProblem
from devmesh.config.finder import find_config

if TYPE_CHECKING:
    from devmesh.config.loader import LoadedConfig, load_config
    from devmesh.config.schema import HealthSection, MeshConfig, ServiceSection

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "HealthSection",
    "LoadedConfig",
    "MeshConfig",
    "ServiceSection",
    "find_config",
    "load_config",
]

_LAZY = {
    "LoadedConfig": "devmesh.config.loader",
    "load_config": "devmesh.config.loader",
    "HealthSection": "devmesh.config.schema",
    "MeshConfig": "devmesh.config.schema",
    "ServiceSection": "devmesh.config.schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'devmesh.config' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
