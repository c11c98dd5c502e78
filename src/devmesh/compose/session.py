"""`devmesh compose up`: the agent over a compose file's services, merged with devmesh.toml if there is one.

Nothing is written: the compose services are added in memory. With a devmesh.toml (found like every
command finds it, or -f), the project is that config's folder and its services come first: a compose
service whose name or published port it already has is left out, as `compose import --write` would.
Without one, the project is the compose file's folder, named like the compose project.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from devmesh.agent.runtime import Agent
from devmesh.compose.engine import ComposeEngine
from devmesh.compose.mapping import ComposeProject
from devmesh.compose.services import devmesh_services
from devmesh.config import LoadedConfig
from devmesh.config.errors import ConfigError, ConfigProblem
from devmesh.config.schema import MeshConfig, ServiceSection
from devmesh.supervisor.logs import LogSink


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


class ComposeAgent(Agent):
    """The agent of `compose up`. Its config lives in memory (the compose file mapped, plus devmesh.toml),
    so an edit of devmesh.toml is not reloaded live: reloading it alone would drop the compose services."""

    async def reload(self, logs: LogSink) -> None:
        logs.agent(
            "the config changed; `devmesh compose up` reads it when it starts: stop it and start it again "
            "to apply the change",
            component="config",
            level="warning",
            event="config_not_reloaded",
        )


def run_compose_agent(
    loaded: LoadedConfig, *, services: Sequence[str] | None = None, share: bool = False
) -> int:
    """Run the compose session's agent in the foreground (uvloop where available) until a signal stops it."""
    agent = ComposeAgent(loaded, services=services, share=share)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        runner = asyncio.Runner()
    with runner:
        return runner.run(agent.run())
