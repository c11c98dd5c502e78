"""`devmesh compose up`: the agent over a compose file's services, merged with devmesh.toml if there is one.

Nothing is written: the compose services are added in memory. With a devmesh.toml (found like every
command finds it, or -f), the project is that config's folder and its services come first: a compose
service whose name or published port it already has is left out, as `compose import --write` would.
Without one, the project is the compose file's folder, named like the compose project.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devmesh.compose.engine import ComposeEngine
from devmesh.compose.mapping import ComposeProject
from devmesh.compose.services import devmesh_services
from devmesh.config import LoadedConfig
from devmesh.config.errors import ConfigError, ConfigProblem
from devmesh.config.schema import MeshConfig, ServiceSection


@dataclass(frozen=True)
class ComposeSession:
    loaded: LoadedConfig
    added: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def session_config(
    project: ComposeProject, engine: ComposeEngine, base: LoadedConfig | None
) -> ComposeSession:
    """The config `compose up` runs: `base`'s (if any) plus the compose services it does not have."""
    tables = devmesh_services(project, engine, file_argument=str(project.path), style="this-python")
    if base is None:
        try:
            config = MeshConfig.model_validate({"mesh": {"name": project.name}, "services": tables})
        except Exception as error:  # pydantic's ValidationError: the mapping made a service devmesh refuses
            raise ConfigError(
                [ConfigProblem(project.path, None, (), f"cannot run these services: {error}")]
            ) from None
        loaded = LoadedConfig(config=config, path=project.path, files=(project.path,))
        return ComposeSession(loaded, added=list(tables))

    existing = base.config.services
    ports = {spec.port: name for name, spec in existing.items() if spec.port is not None}
    added: dict[str, ServiceSection] = {}
    skipped: dict[str, str] = {}
    for name, table in tables.items():
        if name in existing:
            skipped[name] = f"{base.path.name} has a service named {name!r}; it runs that one"
            continue
        port = table.get("port")
        if port is not None and port in ports:
            skipped[name] = f"port {port} is used by {ports[port]!r} in {base.path.name}"
            continue
        added[name] = _section(project, name, table)
    known = set(existing) | set(added)
    for name, section in list(added.items()):
        missing = [dependency for dependency in section.depends_on if dependency not in known]
        if missing:
            kept = [dependency for dependency in section.depends_on if dependency in known]
            added[name] = section.model_copy(update={"depends_on": kept})
    config = base.config.model_copy(update={"services": {**existing, **added}})
    loaded = replace(base, config=config, files=(*base.files, project.path))
    return ComposeSession(loaded, added=list(added), skipped=skipped)


def _section(project: ComposeProject, name: str, table: dict[str, Any]) -> ServiceSection:
    try:
        return ServiceSection.model_validate(table)
    except Exception as error:
        raise ConfigError([ConfigProblem(project.path, None, ("services", name), str(error))]) from None


def session_loader(
    compose_path: Path, engine: ComposeEngine, config_path: Path | None, env_name: str | None
) -> Callable[[], LoadedConfig]:
    """How the agent of `compose up` reads its config again when the compose file or devmesh.toml
    changes: both read anew and mapped as at the start (a bad one raises ConfigError, and the agent
    keeps what runs)."""
    from devmesh.compose.mapping import ComposeError, read_compose
    from devmesh.config import load_config

    def load() -> LoadedConfig:
        try:
            project = read_compose(compose_path)
        except ComposeError as error:
            raise ConfigError([ConfigProblem(compose_path, None, (), str(error))]) from None
        base = load_config(config_path, env_name=env_name) if config_path is not None else None
        return session_config(project, engine, base).loaded

    return load
