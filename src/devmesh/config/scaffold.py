"""`devmesh init`: a commented devmesh.toml for an existing project.

Services are detected from a Procfile (commands run by devmesh), a docker-compose file (services with
published ports become services "started elsewhere": checked on their port, not spawned, since the
command inside a container is not a host command) and package.json scripts. The written file must load
with `load_config`, so every value goes through a TOML encoder rather than string formatting.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tomlkit

Source = Literal["Procfile", "docker-compose.yml", "package.json"]
COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
PACKAGE_SCRIPTS = ("dev", "start", "serve")


@dataclass(frozen=True)
class DetectedService:
    name: str
    source: Source
    command: str | None = None
    port: int | None = None
    cwd: str | None = None
    depends_on: tuple[str, ...] = field(default_factory=tuple)


def service_name(raw: str) -> str:
    """A valid service name (lower-case letters, digits, '-') from any label."""
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:63].strip("-")
    return name or "app"


def detect_services(project_dir: Path) -> list[DetectedService]:
    """Everything `init` can find, Procfile first; a later source never replaces an earlier name."""
    found: dict[str, DetectedService] = {}
    for detector in (_from_procfile, _from_compose, _from_package_json):
        for service in detector(project_dir):
            found.setdefault(service.name, service)
    return list(found.values())


def _from_procfile(project_dir: Path) -> list[DetectedService]:
    path = project_dir / "Procfile"
    if not path.is_file():
        return []
    services = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*:\s*(.+?)\s*$", raw)
        if match and not raw.lstrip().startswith("#"):
            services.append(DetectedService(service_name(match.group(1)), "Procfile", command=match.group(2)))
    return services


def _from_compose(project_dir: Path) -> list[DetectedService]:
    """Compose services with a published port, read by the same mapping as `devmesh compose import`.

    `init` writes them as started elsewhere (port only): `devmesh compose import` is the command that
    makes devmesh run them through compose."""
    from devmesh.compose.mapping import ComposeError, read_compose

    path = next((project_dir / name for name in COMPOSE_NAMES if (project_dir / name).is_file()), None)
    if path is None:
        return []
    try:
        project = read_compose(path)
    except ComposeError:
        return []  # `init` still writes a config; `devmesh compose import` says what is wrong
    published = {service.key: service.name for service in project.services if service.port is not None}
    return [
        DetectedService(
            service.name,
            "docker-compose.yml",
            port=service.port,
            # depends_on may only name services devmesh knows about.
            depends_on=tuple(published[key] for key in service.depends_on if key in published),
        )
        for service in project.services
        if service.port is not None
    ]


def _from_package_json(project_dir: Path) -> list[DetectedService]:
    path = project_dir / "package.json"
    if not path.is_file():
        return []
    try:
        package = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return []
    scripts = package.get("scripts") if isinstance(package, dict) else None
    if not isinstance(scripts, dict):
        return []
    for script in PACKAGE_SCRIPTS:
        if script in scripts:
            name = service_name(str(package.get("name") or project_dir.name).split("/")[-1])
            return [DetectedService(name, "package.json", command=f"npm run {script}")]
    return []


def render_config(project_dir: Path, services: list[DetectedService]) -> str:
    """A commented devmesh.toml for these services."""
    document = tomlkit.document()
    document.add(
        tomlkit.comment("devmesh.toml: every service of this project, started and named by devmesh.")
    )
    document.add(
        tomlkit.comment("Every key is described in docs/config.md of devmesh. Start with `devmesh up`.")
    )
    document.add(tomlkit.nl())
    mesh = tomlkit.table()
    mesh.add("name", service_name(project_dir.name))
    mesh.add(tomlkit.comment('domain = "localhost"      # services answer at <service>.localhost'))
    document.add("mesh", mesh)
    document.add(tomlkit.nl())
    document.add(tomlkit.comment("[proxy]"))
    document.add(tomlkit.comment('listen = "127.0.0.1:7080"   # HTTP entry point'))
    document.add(tomlkit.comment('admin = "127.0.0.1:7070"    # admin API (loopback only)'))
    document.add(tomlkit.nl())
    services_table = tomlkit.table(is_super_table=True)
    for service in services:
        table = tomlkit.table()
        table.add(tomlkit.comment(f"found in {service.source}"))
        if service.command is not None:
            table.add("command", service.command)
        else:
            table.add(tomlkit.comment("runs in a container: devmesh checks its port and routes to it"))
        if service.port is not None:
            table.add("port", service.port)
        if service.cwd is not None:
            table.add("cwd", service.cwd)
        if service.depends_on:
            table.add("depends_on", list(service.depends_on))
        if service.command is not None:
            table.add(tomlkit.comment('health = { http = "/health" }   # or { tcp = true }, { cmd = "..." }'))
            table.add(tomlkit.comment('restart = "on-failure"          # always | on-failure | never'))
        services_table.add(service.name, table)
    if services:
        document.add("services", services_table)
    else:
        document.add(
            tomlkit.comment("No Procfile, docker-compose.yml or package.json scripts found. A service:")
        )
        document.add(tomlkit.comment("[services.api]"))
        document.add(
            tomlkit.comment('command = "python -m http.server $PORT"   # devmesh passes a free PORT')
        )
        document.add(tomlkit.comment('health = { http = "/" }'))
    return tomlkit.dumps(document)


def write_config(project_dir: Path, *, force: bool = False) -> Path:
    """Write `devmesh.toml` atomically; refuse to replace an existing one unless `force`."""
    target = project_dir / "devmesh.toml"
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists")
    text = render_config(project_dir, detect_services(project_dir))
    from devmesh.config.writeback import atomic_write_text

    atomic_write_text(target, text)
    return target
