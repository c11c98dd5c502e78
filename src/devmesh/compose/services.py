"""A mapped compose project as devmesh `[services.NAME]` tables (plain dicts, for the config or TOML)."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Literal

from devmesh.compose.engine import ComposeEngine
from devmesh.compose.mapping import (
    DEFAULT_STOP_TIMEOUT_S,
    STOP_GRACE_MARGIN_S,
    ComposeProject,
    ComposeService,
)

CommandStyle = Literal["portable", "this-python"]


def devmesh_services(
    project: ComposeProject, engine: ComposeEngine, *, file_argument: str, style: CommandStyle
) -> dict[str, dict[str, Any]]:
    """Each compose service as a devmesh service whose command runs it through compose.

    `file_argument` is how commands name the compose file (relative to the config for a written config,
    absolute in memory). `portable` commands start with `devmesh` (for a config file); `this-python` ones
    with this interpreter (for `compose up`, which may run from a venv that is not on PATH).
    """
    names = {service.key: service.name for service in project.services}
    tables: dict[str, dict[str, Any]] = {}
    for service in project.services:
        table: dict[str, Any] = {"command": _serve_command(service, file_argument, style)}
        if service.port is not None:
            table["port"] = service.port
        else:
            table["hosts"] = []  # published on no host port: nothing here can reach it by name
        if service.depends_on:
            table["depends_on"] = [names[key] for key in service.depends_on]
        if service.environment:
            table["env"] = dict(service.environment)
        if service.restart is not None:
            table["restart"] = service.restart
        health = _health(service, engine, file_argument)
        if health is not None:
            table["health"] = health
        table["stop_grace"] = _duration_text(service.stop_timeout_s + STOP_GRACE_MARGIN_S)
        tables[service.name] = table
    return tables


def _serve_command(service: ComposeService, file_argument: str, style: CommandStyle) -> str | list[str]:
    options = ["-f", file_argument]
    if service.stop_timeout_s != DEFAULT_STOP_TIMEOUT_S:
        options += ["--stop-timeout", f"{service.stop_timeout_s:g}"]
    if style == "portable":
        return shlex.join(["devmesh", "compose", "serve", *options, service.key])
    return [sys.executable, "-m", "devmesh", "compose", "serve", *options, service.key]


def _health(service: ComposeService, engine: ComposeEngine, file_argument: str) -> dict[str, Any] | None:
    if service.health_disabled:
        return None
    check = service.health
    if check is None:
        # No healthcheck: a published port that accepts connections is the best sign of life there is.
        return {"tcp": True} if service.port is not None else None
    health: dict[str, Any]
    if check.http_path is not None:
        health = {"http": check.http_path}
    else:
        exec_argv = [*engine.argv, "-f", file_argument, "exec", "-T", service.key, *check.test_argv]
        health = {"cmd": shlex.join(exec_argv)}
    if check.interval_s is not None and check.interval_s > 0:
        health["interval"] = _duration_text(check.interval_s)
    if check.timeout_s is not None and check.timeout_s > 0:
        health["timeout"] = _duration_text(check.timeout_s)
    if check.retries is not None:
        health["unhealthy_after"] = check.retries
    return health


def _duration_text(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000):d}ms"
    return f"{seconds:g}s"
