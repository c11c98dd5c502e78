"""`devmesh`: the command-line entry point and the lifecycle commands (DESIGN §4).

Exit codes: 0 ok, 1 failure, 2 usage or config error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig

app = typer.Typer(
    name="devmesh",
    help="A local-development service mesh: one command starts every service of a project.\n\n"
    "Example: devmesh up        (in a folder with a devmesh.toml)",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_FAILURE = 1
EXIT_USAGE = 2


class Options:
    """Global options, shared by every command through the context."""

    def __init__(self, config_file: Path | None, env_name: str | None) -> None:
        self.config_file = config_file
        self.env_name = env_name


def _version(value: bool) -> None:
    if value:
        from devmesh import __version__

        typer.echo(f"devmesh {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="The config file (default: devmesh.toml found walking up, or $DEVMESH_CONFIG).",
        ),
    ] = None,
    env_name: Annotated[
        str | None, typer.Option("--env", help="Overlay devmesh.<ENV>.toml (default: $DEVMESH_ENV).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """devmesh: every service of a project, started, supervised and named."""
    ctx.obj = Options(config_file, env_name)


# -- helpers -----------------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"devmesh: {message}", err=True)
    raise typer.Exit(code)


def _load(ctx: typer.Context) -> LoadedConfig:
    from devmesh.config import ConfigError, find_config, load_config

    options: Options = ctx.obj
    try:
        path = find_config(explicit=options.config_file) if options.config_file else find_config()
        return load_config(path, env_name=options.env_name)
    except ConfigError as error:
        typer.echo("devmesh: the config has errors:", err=True)
        for problem in error.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _project_dir(ctx: typer.Context) -> Path:
    """The project folder, found like the config (so `status` works from any subfolder)."""
    from devmesh.config import ConfigError, find_config

    options: Options = ctx.obj
    try:
        return find_config(explicit=options.config_file).parent
    except ConfigError as error:
        _fail(str(error), EXIT_USAGE)


def _client(ctx: typer.Context) -> Any:
    from devmesh.agent.client import AdminClient, AgentNotRunning
    from devmesh.agent.paths import StatePaths

    try:
        return AdminClient.for_project(StatePaths(_project_dir(ctx)))
    except AgentNotRunning as error:
        _fail(str(error))


def _call(ctx: typer.Context, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    from devmesh.agent.client import AdminError, AgentNotRunning

    client = _client(ctx)
    try:
        return getattr(client, method)(path, body) if body is not None else getattr(client, method)(path)
    except AgentNotRunning as error:
        _fail(str(error))
    except AdminError as error:
        _fail(str(error), EXIT_USAGE if error.status in (400, 404, 409, 422) else EXIT_FAILURE)


# -- commands ----------------------------------------------------------------------------------------


@app.command()
def up(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None, typer.Argument(help="Only these services (and what they depend on).")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background; logs go to .devmesh/.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --detach: seconds to wait for the services to be healthy.")
    ] = 60.0,
) -> None:
    """Start every service of the project and supervise it (Ctrl-C stops them all).

    Example: devmesh up            devmesh up api --detach
    """
    loaded = _load(ctx)
    if detach:
        _up_detached(ctx, loaded, services or [], timeout)
        return
    from devmesh.agent.runtime import AgentError, run_agent

    try:
        code = run_agent(loaded, services=services or None)
    except AgentError as error:
        _fail(str(error))
    raise typer.Exit(code)


def _up_detached(ctx: typer.Context, loaded: LoadedConfig, services: list[str], timeout: float) -> None:
    import subprocess

    from devmesh.agent.client import AdminClient, AgentNotRunning
    from devmesh.agent.paths import StatePaths, read_agent_record, read_token
    from devmesh.supervisor.logs import tail_lines

    paths = StatePaths(loaded.project_dir)
    paths.ensure()
    running = read_agent_record(paths)
    if running is not None:
        _fail(
            f"devmesh is already running for {loaded.project_dir} (pid {running.pid}); see `devmesh status`"
        )
    unknown = [name for name in services if name not in loaded.config.services]
    if unknown:
        _fail(
            f"no service named {', '.join(map(repr, unknown))} (services: {', '.join(loaded.config.services)})",
            2,
        )
    argv = [sys.executable, "-m", "devmesh", "-f", str(loaded.path)]
    if loaded.env_name:
        argv += ["--env", loaded.env_name]
    argv += ["up", *services]
    log_offset = paths.agent_log.stat().st_size if paths.agent_log.exists() else 0
    with paths.agent_log.open("ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=loaded.project_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    wanted = set(services) if services else set(loaded.config.services)
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with paths.agent_log.open("rb") as handle:
                handle.seek(log_offset)
                output = handle.read().decode(errors="replace").strip()
            typer.echo(output[-4000:], err=True)
            _fail(f"the agent exited with code {process.returncode}; the full log is {paths.agent_log}")
        record = read_agent_record(paths)
        if record is not None and record.pid == process.pid:
            try:
                status = AdminClient(record, read_token(paths)).get("/api/v1/status")
            except AgentNotRunning:
                status = None
            if status is not None:
                states = {entry["name"]: entry for entry in status["services"]}
                if all(states.get(name, {}).get("health") == "healthy" for name in wanted):
                    break
        time.sleep(0.05)
    else:
        if status is not None:
            _print_status(status)
        tail = "\n".join(tail_lines(paths.agent_log, 20))
        typer.echo(tail, err=True)
        _fail(
            f"not every service was healthy within {timeout:g}s; the agent keeps running (pid {process.pid})"
        )
    assert status is not None
    _print_status(status)
    typer.echo(
        f"devmesh runs in the background (pid {process.pid}); `devmesh logs -f` to follow, `devmesh down` to stop"
    )


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the agent of this project and every service it runs.

    Example: devmesh down
    """
    import signal

    import psutil

    from devmesh import const
    from devmesh.agent.paths import StatePaths, read_agent_record
    from devmesh.supervisor.reaper import reap_project

    project_dir = _project_dir(ctx)
    paths = StatePaths(project_dir)
    record = read_agent_record(paths)
    if record is None:
        leftovers = reap_project(project_dir)
        if leftovers:
            typer.echo(f"devmesh was not running; stopped {leftovers} process(es) it had left behind")
        else:
            typer.echo("devmesh is not running here")
        return
    process = psutil.Process(record.pid)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(const.AGENT_STOP_TIMEOUT_S)
    except psutil.TimeoutExpired:
        process.kill()
        reap_project(project_dir)
        _fail(
            f"the agent (pid {record.pid}) did not stop within {const.AGENT_STOP_TIMEOUT_S:g}s and was killed"
        )
    typer.echo(f"devmesh stopped (pid {record.pid})")


@app.command()
def status(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Show each service: origin, state, health, pid, port, URL and version.

    Example: devmesh status --json
    """
    from devmesh.agent.client import AdminClient, AgentNotRunning
    from devmesh.agent.paths import StatePaths

    project_dir = _project_dir(ctx)
    try:
        document = AdminClient.for_project(StatePaths(project_dir)).get("/api/v1/status")
    except AgentNotRunning as error:
        document = _offline_status(ctx)
        if not as_json:
            typer.echo(str(error), err=True)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    _print_status(document)


def _offline_status(ctx: typer.Context) -> dict[str, Any]:
    loaded = _load(ctx)
    return {
        "mesh": loaded.mesh_name,
        "agent": None,
        "services": [
            {
                "name": name,
                "origin": "local",
                "state": "stopped",
                "health": "unknown",
                "pid": None,
                "port": spec.port,
                "url": None,
                "version": spec.version,
                "hosts": spec.hosts or [name],
                "restarts": 0,
                "detail": None,
            }
            for name, spec in loaded.config.services.items()
        ],
        "peers": [],
    }


def _print_status(document: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"healthy": "green", "unhealthy": "red", "unknown": "yellow"}
    states = {"running": "green", "starting": "yellow", "stopped": "dim", "crashed": "red"}
    table = Table(title=f"mesh {document['mesh']}", title_justify="left")
    for column in ("service", "origin", "state", "health", "pid", "port", "version", "url"):
        table.add_column(column)
    for entry in document["services"]:
        health = entry["health"]
        detail = f" ({entry['detail']})" if entry.get("detail") else ""
        table.add_row(
            entry["name"],
            entry["origin"],
            f"[{states.get(entry['state'], 'white')}]{entry['state']}[/]",
            f"[{colours.get(health, 'white')}]{health}[/]{detail}",
            str(entry["pid"] or ""),
            str(entry["port"] or ""),
            entry["version"] or "",
            entry["url"] or "",
        )
    Console().print(table)
    agent = document.get("agent")
    if agent and agent.get("config_error"):
        typer.echo(
            f"\nthe config on disk has errors; the agent keeps running the last good one:\n{agent['config_error']}"
        )


@app.command()
def logs(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="One service (default: all, merged).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--tail", "-n", help="How many earlier lines to show.")] = 100,
) -> None:
    """Print the services' logs, merged and prefixed, from .devmesh/logs/.

    Example: devmesh logs api -f
    """
    from devmesh.agent.paths import StatePaths
    from devmesh.cli.logview import show_logs

    project_dir = _project_dir(ctx)
    code = show_logs(StatePaths(project_dir).log_dir, service=service, follow=follow, lines=lines)
    raise typer.Exit(code)


@app.command("run")
def run_service(
    ctx: typer.Context, service: Annotated[str, typer.Argument(help="The service to start.")]
) -> None:
    """Start one service (and what it depends on) in the running mesh.

    Example: devmesh run api
    """
    result = _call(ctx, "post", f"/api/v1/services/{service}/start", {})
    typer.echo(f"started {', '.join(result['started'])}")


@app.command()
def stop(ctx: typer.Context, service: Annotated[str, typer.Argument(help="The service to stop.")]) -> None:
    """Stop one service; the rest of the mesh keeps running.

    Example: devmesh stop payments
    """
    _call(ctx, "post", f"/api/v1/services/{service}/stop", {})
    typer.echo(f"stopped {service}")


@app.command()
def restart(
    ctx: typer.Context, service: Annotated[str, typer.Argument(help="The service to restart.")]
) -> None:
    """Restart one service.

    Example: devmesh restart api
    """
    _call(ctx, "post", f"/api/v1/services/{service}/restart", {})
    typer.echo(f"restarting {service}")


@app.command()
def init(
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing devmesh.toml.")] = False,
) -> None:
    """Write a commented devmesh.toml, detecting a Procfile, docker-compose.yml or package.json scripts.

    Example: devmesh init
    """
    from devmesh.config.scaffold import detect_services, write_config

    project_dir = Path(os.getcwd())
    detected = detect_services(project_dir)
    try:
        path = write_config(project_dir, force=force)
    except FileExistsError as error:
        _fail(f"{error} (use --force to overwrite)")
    for service in detected:
        typer.echo(f"  found {service.name} in {service.source}")
    typer.echo(f"wrote {path}; start it with `devmesh up`")


def run() -> None:
    """Console-script entry point."""
    app()
