"""`devmesh compose import|up|serve|down`: docker compose projects under devmesh.

Only click at import time: the mapping (PyYAML), the config and the agent are imported when a command runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from devmesh.compose.engine import ComposeEngine
    from devmesh.compose.mapping import ComposeProject
    from devmesh.config import LoadedConfig

EXIT_FAILURE = 1
EXIT_USAGE = 2
IMPORT_COMMENT = "imported from {file} by `devmesh compose import`"
_FILE_HELP = "The compose file (default: $COMPOSE_FILE, or compose.yaml / docker-compose.yml walking up)."


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)


@click.group(
    "compose",
    epilog="""\b
Examples:
  devmesh compose up                      (every compose service at http://NAME.localhost:7080)
  devmesh compose import --write          (add them to devmesh.toml)
  devmesh compose import -f deploy/compose.yml --json""",
)
def compose() -> None:
    """Run a docker compose project's services under devmesh, or import them into devmesh.toml.

    The compose implementation is the first of `docker compose`, docker-compose, `podman compose` and
    podman-compose that works here; DEVMESH_COMPOSE="podman-compose" (any command) chooses one.
    """


def _project(compose_file: Path | None) -> ComposeProject:
    from devmesh.compose.mapping import ComposeError, find_compose_file, read_compose

    try:
        return read_compose(find_compose_file(Path.cwd(), compose_file))
    except ComposeError as error:
        _fail(str(error), EXIT_USAGE)


def _engine() -> ComposeEngine:
    from devmesh.compose.engine import ComposeNotFound, detect_engine

    try:
        return detect_engine()
    except ComposeNotFound as error:
        _fail(str(error))


def _config_path(ctx: click.Context, near: Path) -> Path | None:
    """The devmesh config this command works with: -f / DEVMESH_CONFIG, else found walking up from `near`.

    Raises:
        ConfigError: -f or DEVMESH_CONFIG names no config.
    """
    from devmesh.config import ConfigError, find_config

    explicit = ctx.obj.config_file if ctx.obj is not None else None
    try:
        return find_config(start=near, explicit=explicit)
    except ConfigError:
        if explicit is not None or os.environ.get("DEVMESH_CONFIG"):
            raise
        return None


def _config_path_or_fail(ctx: click.Context, near: Path) -> Path | None:
    """`_config_path`, or exit 2 with `devmesh: ...` when -f / DEVMESH_CONFIG names no config."""
    from devmesh.config import ConfigError

    try:
        return _config_path(ctx, near)
    except ConfigError as error:
        _fail(str(error), EXIT_USAGE)


@compose.command("import")
@click.option("-f", "--file", "compose_file", type=click.Path(path_type=Path), help=_FILE_HELP)
@click.option(
    "--write/--print",
    "write",
    default=False,
    help="Merge the services into devmesh.toml (created beside the compose file if there is none), or "
    "print them as TOML (the default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was found and done as JSON.")
@click.pass_context
def import_services(ctx: click.Context, compose_file: Path | None, write: bool, as_json: bool) -> None:
    """Turn a compose file's services into devmesh services.

    Each runs through compose (`devmesh compose serve`, which stops its container when devmesh stops
    it), on its published port, with its healthcheck, depends_on and environment. Services already in
    devmesh.toml, by name or by port, are skipped and said so; nothing is ever duplicated.

    \b
    Examples:
      devmesh compose import
      devmesh compose import --write
      devmesh compose import -f docker-compose.dev.yml --json
    """
    from devmesh.compose.services import devmesh_services
    from devmesh.config.writeback import WritebackError, merge_services, services_toml

    project = _project(compose_file)
    engine = _engine()
    config_path = _config_path_or_fail(ctx, project.path.parent)
    target = config_path if config_path is not None else project.path.parent / "devmesh.toml"
    file_argument = os.path.relpath(project.path, target.parent)
    tables = devmesh_services(project, engine, file_argument=file_argument, style="portable")
    comment = IMPORT_COMMENT.format(file=file_argument)
    for warning in project.warnings:
        click.echo(f"devmesh: warning: {warning}", err=True)
    report: dict[str, Any] = {
        "compose_file": str(project.path),
        "engine": engine.label,
        "config": str(target) if write else None,
        "services": tables,
        "added": [],
        "skipped": {},
        "warnings": project.warnings,
    }
    if not write:
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            click.echo(services_toml(tables, comment=comment), nl=False)
        return
    try:
        result = merge_services(target, tables, comment=comment)
    except WritebackError as error:  # a YAML config, one that does not parse or would not load: exit 2
        click.echo(f"devmesh: {error}", err=True)
        click.echo(services_toml(tables, comment=comment), nl=False)
        raise SystemExit(EXIT_USAGE) from None
    report["added"], report["skipped"] = result.added, result.skipped
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name in result.added:
        port = tables[name].get("port")
        click.echo(f"  added   {name}" + (f" (port {port})" if port is not None else " (no published port)"))
    for name, reason in result.skipped.items():
        click.echo(f"  skipped {name}: {reason}")
    click.echo(f"{target}: {len(result.added)} service(s) added; start them with `devmesh up`")


@compose.command("up")
@click.option("-f", "--file", "compose_file", type=click.Path(path_type=Path), help=_FILE_HELP)
@click.argument("services", nargs=-1)
@click.option("--detach", "-d", is_flag=True, help="Run in the background; logs go to .devmesh/.")
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="With --detach: seconds to wait for health.",
)
@click.option("--share", is_flag=True, help="Offer the services to peers (as [mesh] share = true).")
@click.pass_context
def up(
    ctx: click.Context,
    compose_file: Path | None,
    services: tuple[str, ...],
    detach: bool,
    timeout: float,
    share: bool,
) -> None:
    """Run the compose file's services under devmesh: supervised, health-checked, and named.

    Each service with a published port answers at http://NAME.localhost:7080. Nothing is written: with
    a devmesh.toml its services run too (and win over a compose service of the same name or port).
    Stop with Ctrl-C, or `devmesh compose down` (plain `devmesh down` too when there is a devmesh.toml).

    \b
    Examples:
      devmesh compose up
      devmesh compose up web --detach
      DEVMESH_COMPOSE=podman-compose devmesh compose up
    """
    project = _project(compose_file)
    engine = _engine()
    loaded = _session(ctx, project, engine)
    unknown = [name for name in services if name not in loaded.config.services]
    if unknown:
        known = ", ".join(loaded.config.services)
        _fail(f"no service named {', '.join(map(repr, unknown))} (services: {known})", EXIT_USAGE)
    if detach:
        from devmesh.cli.main import start_detached

        argv = [sys.executable, "-m", "devmesh"]
        if loaded.path != project.path:
            argv += ["-f", str(loaded.path)]
        if ctx.obj.env_name:
            argv += ["--env", ctx.obj.env_name]
        argv += ["compose", "up", "-f", str(project.path), *(["--share"] if share else []), *services]
        stop = "devmesh down" if loaded.path != project.path else "devmesh compose down"
        # A compose service with no published port and no healthcheck has no health to wait for.
        start_detached(
            loaded, list(services), timeout, argv=argv, stop_command=stop, ready_health=("healthy", "unknown")
        )
        return
    from devmesh.agent.runtime import AgentError, run_agent
    from devmesh.compose.engine import ENV_OVERRIDE
    from devmesh.compose.session import session_loader

    os.environ[ENV_OVERRIDE] = engine.label  # every `compose serve` child uses the engine chosen here
    config_path = loaded.path if loaded.path != project.path else None
    reload_config = session_loader(project.path, engine, config_path, ctx.obj.env_name)
    try:
        code = run_agent(loaded, services=services or None, share=share, reload_config=reload_config)
    except AgentError as error:
        _fail(str(error))
    raise SystemExit(code)


def _session(ctx: click.Context, project: ComposeProject, engine: ComposeEngine) -> LoadedConfig:
    from devmesh.compose.session import session_config
    from devmesh.config import ConfigError, load_config

    try:
        config_path = _config_path(ctx, project.path.parent)
        base = load_config(config_path, env_name=ctx.obj.env_name) if config_path is not None else None
        session = session_config(project, engine, base)
    except ConfigError as error:
        click.echo("devmesh: the config has errors:", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    for warning in project.warnings:
        click.echo(f"devmesh: warning: {warning}", err=True)
    for name, reason in session.skipped.items():
        click.echo(f"devmesh: compose service {name} left out: {reason}", err=True)
    return session.loaded


@compose.command("down")
@click.option("-f", "--file", "compose_file", type=click.Path(path_type=Path), help=_FILE_HELP)
@click.pass_context
def down(ctx: click.Context, compose_file: Path | None) -> None:
    """Stop the agent `devmesh compose up` started, and with it every service and container it runs.

    \b
    Examples:
      devmesh compose down
    """
    from devmesh.cli.main import down as devmesh_down

    project = _project(compose_file)
    config_path = _config_path_or_fail(ctx, project.path.parent)
    ctx.obj.config_file = config_path if config_path is not None else project.path
    ctx.invoke(devmesh_down)


@compose.command("serve")
@click.option(
    "-f", "--file", "compose_file", type=click.Path(path_type=Path), required=True, help="The compose file."
)
@click.option(
    "--stop-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds the container gets to stop (compose stop -t) when devmesh stops the service.",
)
@click.argument("service")
def serve(compose_file: Path, stop_timeout: float, service: str) -> None:
    """Run one compose service in the foreground; stop its container on SIGTERM.

    This is the command of each service `devmesh compose import` writes: devmesh supervises it like
    any other, and stopping it stops the container (compose's own `up` would leave it running).

    \b
    Examples:
      devmesh compose serve -f docker-compose.yml web
    """
    from devmesh.compose.serve import serve as serve_service

    path = compose_file if compose_file.is_absolute() else Path.cwd() / compose_file
    if not path.is_file():
        _fail(f"{path}: no such compose file", EXIT_USAGE)
    raise SystemExit(serve_service(_engine(), path, service, stop_timeout_s=stop_timeout))


@compose.command("exec", context_settings={"ignore_unknown_options": True})
@click.option(
    "-f", "--file", "compose_file", type=click.Path(path_type=Path), required=True, help="The compose file."
)
@click.argument("service")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(compose_file: Path, service: str, command: tuple[str, ...]) -> None:
    """Run a command in a compose service's container (`<compose> -f FILE exec -T SERVICE COMMAND...`),
    with the compose implementation found here; exit with its code.

    This is the health command `devmesh compose import` writes for a healthcheck that runs inside the
    container: the config names no compose implementation, so it works on every machine it is shared to.

    \b
    Examples:
      devmesh compose exec -f docker-compose.yml db -- pg_isready -U postgres
    """
    import subprocess

    path = compose_file if compose_file.is_absolute() else Path.cwd() / compose_file
    if not path.is_file():
        _fail(f"{path}: no such compose file", EXIT_USAGE)
    argv = _engine().command(path, "exec", "-T", service, *command)
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, cwd=path.parent, check=False)
    except OSError as error:
        _fail(f"cannot run {argv[0]}: {error.strerror}")
    raise SystemExit(result.returncode)
