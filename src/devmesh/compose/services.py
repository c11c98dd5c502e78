"""A mapped compose project as devmesh `[services.NAME]` tables (plain dicts, for the config or TOML)."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Literal

from devmesh.compose.engine import ComposeEngine
from devmesh.compose.mapping import (
    DEFAULT_HEALTH_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    ComposeProject,
    ComposeService,
)
from devmesh.compose.serve import stop_grace_s

CommandStyle = Literal["portable", "this-python"]


def devmesh_services(
    project: ComposeProject, engine: ComposeEngine, *, file_argument: str, style: CommandStyle
) -> dict[str, dict[str, Any]]:
    """Each compose service as a devmesh service whose command runs it through compose.

    `file_argument` is how commands name the compose file (relative to the config for a written config,
    absolute in memory).

    `portable` is for a config file the team shares: commands start with `devmesh` (`compose serve`, and
    `compose exec` for a health command, which find the compose implementation where they run, never a
    path of this machine), and every `$` is written `$$`, as devmesh's loader reads a literal `$` (the
    values are compose's, already expanded: nothing in them is for the loader to expand again).
    `this-python` is for `compose up`, whose tables never go through the loader: commands start with this
    interpreter (which may be a venv's, not on PATH) and health commands with `engine`, found here.
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
        health = _health(service, engine, file_argument, style)
        if health is not None:
            table["health"] = health
        # `compose serve` may take this long to stop the container: no SIGKILL before that.
        table["stop_grace"] = _duration_text(stop_grace_s(service.stop_timeout_s))
        tables[service.name] = _escape_dollars(table) if style == "portable" else table
    return tables


def _escape_dollars(value: Any) -> Any:
    """`value` with every `$` in its strings written `$$`: devmesh's loader reads that back as `$`."""
    if isinstance(value, dict):
        return {key: _escape_dollars(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escape_dollars(item) for item in value]
    if isinstance(value, str):
        return value.replace("$", "$$")
    return value


def _serve_command(service: ComposeService, file_argument: str, style: CommandStyle) -> str | list[str]:
    options = ["-f", file_argument]
    if service.stop_timeout_s != DEFAULT_STOP_TIMEOUT_S:
        options += ["--stop-timeout", f"{service.stop_timeout_s:g}"]
    if style == "portable":
        return shlex.join(["devmesh", "compose", "serve", *options, service.key])
    return [sys.executable, "-m", "devmesh", "compose", "serve", *options, service.key]


def _health(
    service: ComposeService, engine: ComposeEngine, file_argument: str, style: CommandStyle
) -> dict[str, Any] | None:
    if service.health_disabled:
        return None
    check = service.health
    if check is None:
        # No healthcheck: a published port that accepts connections is the best sign of life there is.
        return {"tcp": True} if service.port is not None else None
    health: dict[str, Any]
    if check.http_path is not None:
        health = {"http": check.http_path}
    elif style == "portable":
        # Not `engine`: its path is this machine's, and the engine `compose serve` finds may be another.
        exec_argv = ["devmesh", "compose", "exec", "-f", file_argument, service.key, "--", *check.test_argv]
        health = {"cmd": shlex.join(exec_argv)}
    else:
        exec_argv = [*engine.argv, "-f", file_argument, "exec", "-T", service.key, *check.test_argv]
        health = {"cmd": shlex.join(exec_argv)}
    if check.interval_s is not None and check.interval_s > 0:
        health["interval"] = _duration_text(check.interval_s)
    if check.timeout_s is not None and check.timeout_s > 0:
        health["timeout"] = _duration_text(check.timeout_s)
    elif "cmd" in health:
        # Compose's default, not devmesh's 1 s: `compose exec` alone may take longer than that.
        health["timeout"] = _duration_text(DEFAULT_HEALTH_TIMEOUT_S)
    if check.retries is not None:
        health["unhealthy_after"] = check.retries
    return health


def _duration_text(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000):d}ms"
    return f"{seconds:g}s"
