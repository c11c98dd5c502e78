"""`devmesh`: the command-line entry point and the lifecycle commands (DESIGN §4).

Exit codes: 0 ok, 1 failure, 2 usage or config error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from devmesh.cli.chaos import chaos, fault
from devmesh.cli.ci import check, wait
from devmesh.cli.compose import compose
from devmesh.cli.docker import from_docker
from devmesh.cli.export import export
from devmesh.cli.graph import graph
from devmesh.cli.hub import hub
from devmesh.cli.k8s import k8s
from devmesh.cli.names import install, uninstall
from devmesh.cli.plugins import plugin
from devmesh.cli.trust import trust
from devmesh.cli.vscode import vscode

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig

EXIT_FAILURE = 1
EXIT_USAGE = 2


class Options:
    """Global options, shared by every command through the context."""

    def __init__(self, config_file: Path | None, env_name: str | None) -> None:
        self.config_file = config_file
        self.env_name = env_name


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from devmesh import __version__

        click.echo(f"devmesh {__version__}")
        ctx.exit()


class _Commands(click.Group):
    """Lists commands in the order they are defined (the lifecycle first), not alphabetically; a name
    that is no built-in command is looked for among the plugins (docs/plugins.md)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        from devmesh.cli.plugins import find_plugin_command

        return find_plugin_command(ctx, cmd_name, builtins=self.commands)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from devmesh.cli.plugins import format_plugins_epilog

        format_plugins_epilog(formatter, builtins=self.commands)
        super().format_epilog(ctx, formatter)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: devmesh up        (in a folder with a devmesh.toml)",
)
@click.option(
    "-f",
    "--file",
    "config_file",
    type=click.Path(path_type=Path),
    help="The config file (default: devmesh.toml found walking up, or $DEVMESH_CONFIG).",
)
@click.option("--env", "env_name", help="Overlay devmesh.<ENV>.toml (default: $DEVMESH_ENV).")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Print the version and exit.",
)
@click.pass_context
def app(ctx: click.Context, config_file: Path | None, env_name: str | None) -> None:
    """A local-development service mesh: one command starts every service of a project, supervises it,
    and gives it a stable name."""
    ctx.obj = Options(config_file, env_name)


# -- helpers -----------------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)


def _load(ctx: click.Context) -> LoadedConfig:
    from devmesh.config import ConfigError, find_config, load_config

    options: Options = ctx.obj
    try:
        path = find_config(explicit=options.config_file) if options.config_file else find_config()
        return load_config(path, env_name=options.env_name)
    except ConfigError as error:
        click.echo("devmesh: the config has errors:", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        raise SystemExit(EXIT_USAGE) from None


def _project_dir(ctx: click.Context) -> Path:
    """The project folder, found like the config (so `status` works from any subfolder); without a
    config, the nearest folder an agent runs for (`devmesh compose up` needs no devmesh.toml)."""
    from devmesh.agent.paths import StatePaths, read_agent_record
    from devmesh.config import ConfigError, find_config

    options: Options = ctx.obj
    try:
        return find_config(explicit=options.config_file).parent
    except ConfigError as error:
        if options.config_file is None and not os.environ.get("DEVMESH_CONFIG"):
            for folder in (Path.cwd(), *Path.cwd().parents):
                if read_agent_record(StatePaths(folder)) is not None:
                    return folder
        _fail(str(error), EXIT_USAGE)


def _client(ctx: click.Context) -> Any:
    from devmesh.agent.client import AdminClient, AgentNotRunning
    from devmesh.agent.paths import StatePaths

    try:
        return AdminClient.for_project(StatePaths(_project_dir(ctx)))
    except AgentNotRunning as error:
        _fail(str(error))


def _call(ctx: click.Context, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
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
@click.argument("services", nargs=-1)
@click.option("--detach", "-d", is_flag=True, help="Run in the background; logs go to .devmesh/.")
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="With --detach: seconds to wait for health.",
)
@click.option(
    "--share",
    is_flag=True,
    help="Offer this project's services to peers on the mesh port (as [mesh] share = true).",
)
@click.option("--hub", "hub_url", metavar="URL", help="Join this hub (as [peers] hub): revisions, peers.")
@click.option(
    "--hub-token",
    metavar="TOKEN",
    envvar="DEVMESH_HUB_TOKEN",
    help="One-time enrollment token from `devmesh hub enroll` (first start only; env DEVMESH_HUB_TOKEN).",
)
@click.option(
    "--engine",
    type=click.Choice(["builtin", "nginx"]),
    help="The data plane that serves [proxy] listen (default: [engine] kind, else builtin).",
)
@click.pass_context
def up(
    ctx: click.Context,
    services: tuple[str, ...],
    detach: bool,
    timeout: float,
    share: bool,
    hub_url: str | None,
    hub_token: str | None,
    engine: str | None,
) -> None:
    """Start every service of the project and supervise it (Ctrl-C stops them all).

    \b
    Examples:
      devmesh up
      devmesh up api --detach
      devmesh up --share          (teammates whose [peers] list this machine can call its services)
      devmesh up --hub https://hub.example:7000 --hub-token TOKEN   (once; later starts reuse the credential)
      devmesh up --engine nginx   (nginx serves the route table: tested, reloaded, confirmed, rolled back)
    """
    import gc

    # Start-up allocates hundreds of thousands of long-lived objects (config schema, FastAPI): the
    # cyclic collector would walk them again and again for nothing. The agent turns it back on, with
    # those objects frozen, once it is up.
    gc.disable()
    loaded = _load(ctx)
    hub_url = hub_url or loaded.config.peers.hub
    hub_token = hub_token or loaded.config.peers.hub_token
    if hub_url is not None and not hub_url.startswith(("http://", "https://")):
        _fail(f"--hub {hub_url!r} is not a URL; write it as https://host[:port]", EXIT_USAGE)
    if detach:
        gc.enable()
        argv = [sys.executable, "-m", "devmesh", "-f", str(loaded.path)]
        if loaded.env_name:
            argv += ["--env", loaded.env_name]
        argv += ["up", *(["--share"] if share else []), *(["--hub", hub_url] if hub_url else [])]
        argv += [*(["--engine", engine] if engine else []), *services]
        if hub_token:
            os.environ["DEVMESH_HUB_TOKEN"] = hub_token  # to the child, not on its command line (ps)
        start_detached(loaded, list(services), timeout, argv=argv)
        return
    from devmesh.agent.hub_link import HubOptions
    from devmesh.agent.runtime import AgentError, run_agent

    hub = HubOptions(hub_url, hub_token) if hub_url else None
    try:
        code = run_agent(loaded, services=services or None, share=share, hub=hub, engine=engine)
    except AgentError as error:
        _fail(str(error))
    raise SystemExit(code)


def start_detached(
    loaded: LoadedConfig,
    services: list[str],
    timeout: float,
    *,
    argv: list[str],
    stop_command: str = "devmesh down",
    ready_health: Collection[str] = ("healthy",),
) -> None:
    """`up --detach`: run `argv` (an agent in the foreground) in the background, logging to
    .devmesh/logs, and return once `services` (default: all) have a health in `ready_health`."""
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
            click.echo(output[-4000:], err=True)
            _fail(f"the agent exited with code {process.returncode}; the full log is {paths.agent_log}")
        record = read_agent_record(paths)
        if record is not None and record.pid == process.pid:
            try:
                status = AdminClient(record, read_token(paths)).get("/api/v1/status")
            except AgentNotRunning:
                status = None
            if status is not None:
                states = {entry["name"]: entry for entry in status["services"]}
                if all(states.get(name, {}).get("health") in ready_health for name in wanted):
                    break
        time.sleep(0.05)
    else:
        if status is not None:
            _print_status(status)
        tail = "\n".join(tail_lines(paths.agent_log, 20))
        click.echo(tail, err=True)
        _fail(
            f"not every service was healthy within {timeout:g}s; the agent keeps running (pid {process.pid})"
        )
    assert status is not None
    _print_status(status)
    click.echo(
        f"devmesh runs in the background (pid {process.pid}); `devmesh logs -f` to follow, "
        f"`{stop_command}` to stop"
    )


@app.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the agent of this project and every service it runs.

    \b
    Examples:
      devmesh down
    """
    import signal

    import psutil

    from devmesh import const
    from devmesh.agent.paths import StatePaths, agent_starting, read_agent_record, wait_for_agent_record
    from devmesh.supervisor.reaper import reap_project

    project_dir = _project_dir(ctx)
    paths = StatePaths(project_dir)
    record = read_agent_record(paths)
    if record is None and agent_starting(paths):
        # An agent still starting (its services not healthy yet: `up --detach` may have given up on
        # it) writes agent.json once its admin API answers: wait for it rather than miss it.
        record = wait_for_agent_record(paths, const.AGENT_START_WAIT_S)
        if record is None and agent_starting(paths):
            _fail(
                f"an agent is starting here (it holds {paths.root / 'agent.lock'}) but did not say where it "
                f"runs within {const.AGENT_START_WAIT_S:g}s; run `devmesh down` again"
            )
    if record is None:
        leftovers = reap_project(project_dir)
        if leftovers:
            click.echo(f"devmesh was not running; stopped {leftovers} process(es) it had left behind")
        else:
            click.echo("devmesh is not running here")
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
    click.echo(f"devmesh stopped (pid {record.pid})")


@app.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show each service: origin, state, health, pid, port, URL and version.

    \b
    Examples:
      devmesh status --json
    """
    from devmesh.agent.client import AdminClient, AgentNotRunning
    from devmesh.agent.paths import StatePaths

    project_dir = _project_dir(ctx)
    try:
        document = AdminClient.for_project(StatePaths(project_dir)).get("/api/v1/status")
    except AgentNotRunning as error:
        document = _offline_status(ctx)
        if not as_json:
            click.echo(str(error), err=True)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    _print_status(document)


def _offline_status(ctx: click.Context) -> dict[str, Any]:
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
    from devmesh.cli.table import paint, print_table
    from devmesh.supervisor.logs import colour_enabled

    colour = colour_enabled(sys.stdout)
    health_colours = {"healthy": "green", "unhealthy": "red", "unknown": "yellow"}
    state_colours = {"running": "green", "starting": "yellow", "stopped": "dim", "crashed": "red"}
    rows = []
    for entry in document["services"]:
        detail = f" ({entry['detail']})" if entry.get("detail") else ""
        rows.append(
            [
                entry["name"],
                entry["origin"],
                paint(entry["state"], state_colours.get(entry["state"]), colour),
                paint(entry["health"], health_colours.get(entry["health"]), colour) + detail,
                str(entry["pid"] or ""),
                str(entry["port"] or ""),
                entry["version"] or "",
                entry["url"] or "",
            ]
        )
    click.echo(f"mesh {document['mesh']}")
    print_table(["service", "origin", "state", "health", "pid", "port", "version", "url"], rows)
    peers = document.get("peers") or []
    if peers:
        click.echo("")
        print_table(
            ["peer", "address", "state", "latency", "services"],
            [
                [
                    entry["peer"] or "?",
                    entry["address"],
                    paint("alive", "green", colour) if entry["alive"] else paint("gone", "red", colour),
                    f"{entry['latency_ms']:.1f} ms" if entry["alive"] else "",
                    ", ".join(
                        f"{s['name']}@{s['version']}" if s["version"] else s["name"]
                        for s in entry["services"]
                    ),
                ]
                for entry in peers
            ],
        )
    agent = document.get("agent")
    if agent and agent.get("config_error"):
        click.echo(
            f"\nthe config on disk has errors; the agent keeps running the last good one:\n{agent['config_error']}"
        )


@app.command()
@click.argument("service", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option(
    "--tail", "-n", "lines", type=int, default=100, show_default=True, help="Earlier lines to show."
)
@click.pass_context
def logs(ctx: click.Context, service: str | None, follow: bool, lines: int) -> None:
    """Print the services' logs, merged and prefixed, from .devmesh/logs/.

    \b
    Examples:
      devmesh logs api -f
    """
    from devmesh.agent.paths import StatePaths
    from devmesh.cli.logview import show_logs

    project_dir = _project_dir(ctx)
    code = show_logs(StatePaths(project_dir).log_dir, service=service, follow=follow, lines=lines)
    raise SystemExit(code)


@app.command("run")
@click.argument("service")
@click.pass_context
def run_service(ctx: click.Context, service: str) -> None:
    """Start one service (and what it depends on) in the running mesh.

    \b
    Examples:
      devmesh run api
    """
    result = _call(ctx, "post", f"/api/v1/services/{service}/start", {})
    click.echo(f"started {', '.join(result['started'])}")


@app.command()
@click.argument("service")
@click.pass_context
def stop(ctx: click.Context, service: str) -> None:
    """Stop one service; the rest of the mesh keeps running.

    \b
    Examples:
      devmesh stop payments
    """
    _call(ctx, "post", f"/api/v1/services/{service}/stop", {})
    click.echo(f"stopped {service}")


@app.command()
@click.argument("service")
@click.pass_context
def restart(ctx: click.Context, service: str) -> None:
    """Restart one service.

    \b
    Examples:
      devmesh restart api
    """
    _call(ctx, "post", f"/api/v1/services/{service}/restart", {})
    click.echo(f"restarting {service}")


@app.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def peers(ctx: click.Context, as_json: bool) -> None:
    """Show the peers this agent follows: address, whether alive, latency, the services they offer.

    \b
    Examples:
      devmesh peers
      devmesh peers --json
    """
    found = _call(ctx, "get", "/api/v1/peers")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    from devmesh.cli.table import paint, print_table
    from devmesh.supervisor.logs import colour_enabled

    colour = colour_enabled(sys.stdout)
    rows = [
        [
            entry["peer"] or "?",
            entry["address"],
            paint("alive", "green", colour) if entry["alive"] else paint("gone", "red", colour),
            f"{entry['latency_ms']:.1f} ms" if entry["alive"] else "",
            ", ".join(
                f"{s['name']}@{s['version']}" if s["version"] else s["name"] for s in entry["services"]
            ),
            entry["error"] or "",
        ]
        for entry in found
    ]
    if not rows:
        click.echo("no peers: set [peers] static, or a [mesh] secret for mDNS discovery on the LAN")
        return
    print_table(["peer", "address", "state", "latency", "services", "last error"], rows)


@app.command()
@click.argument("service")
@click.option("--peer", "peer", metavar="ID", help="Send every request for SERVICE to this peer.")
@click.option("--local", "local", is_flag=True, help="Only this machine's endpoints.")
@click.option("--remote", "remote", is_flag=True, help="Only the remote fallback.")
@click.option("--clear", "clear", is_flag=True, help="Back to the usual order (local, peers, remote).")
@click.pass_context
def route(ctx: click.Context, service: str, peer: str | None, local: bool, remote: bool, clear: bool) -> None:
    """Pin where requests for SERVICE go, whatever else is up (one request: header X-DevMesh-Route).

    \b
    Examples:
      devmesh route api --peer alice-3f2a1b
      devmesh route api --local
      devmesh route api --clear
    """
    chosen = [
        name
        for name, given in (("--peer", peer), ("--local", local), ("--remote", remote), ("--clear", clear))
        if given
    ]
    if len(chosen) != 1:
        _fail("give exactly one of --peer ID, --local, --remote, --clear", EXIT_USAGE)
    if clear:
        _call(ctx, "delete", f"/api/v1/routes/{service}")
        click.echo(f"{service}: back to the usual order")
        return
    pin = f"peer={peer}" if peer else ("local" if local else "remote")
    _call(ctx, "post", f"/api/v1/routes/{service}", {"pin": pin})
    click.echo(f"{service}: pinned to {pin}")


@app.command()
@click.option("--service", "-s", help="Only requests for this service.")
@click.option("--status", "status_filter", help="A code (502) or a class (5xx).")
@click.option("--trace", "trace_id", help="Only requests of this trace id.")
@click.option("--limit", "-n", default=20, show_default=True, help="How many, newest last.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the request headers).")
@click.pass_context
def requests(
    ctx: click.Context,
    service: str | None,
    status_filter: str | None,
    trace_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The recent requests the proxy served (headers and sizes, not bodies), for `devmesh replay ID`.

    \b
    Examples:
      devmesh requests --service api --status 5xx
      devmesh replay 42
    """
    from urllib.parse import urlencode

    query = {"service": service, "status": status_filter, "trace_id": trace_id, "limit": str(max(limit, 1))}
    found = _call(ctx, "get", "/api/v1/requests?" + urlencode({k: v for k, v in query.items() if v}))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no request yet (the agent keeps the last [observe] requests_kept)")
        return
    from devmesh.cli.table import print_table

    print_table(
        ["ID", "TIME", "METHOD", "HOST", "PATH", "STATUS", "SERVICE", "ORIGIN", "MS", "TRACE"],
        [
            [
                str(entry["id"]),
                time.strftime("%H:%M:%S", time.localtime(entry["time"])),
                entry["method"],
                entry["host"],
                entry["path"][:60],
                str(entry["status"]),
                entry["service"],
                entry["origin"],
                f"{entry['duration_ms']:.1f}",
                entry["trace_id"][:16],
            ]
            for entry in found
        ],
    )


@app.command()
@click.argument("request_id", type=int, metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def replay(ctx: click.Context, request_id: int, as_json: bool) -> None:
    """Send a recent request again through the proxy, with its original headers (IDs: `devmesh requests`).

    \b
    Examples:
      devmesh replay 42
    """
    result = _call(ctx, "post", f"/api/v1/requests/{request_id}/replay", {})
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"replayed {request_id} as {result['id']}: {result['status']} in {result['duration_ms']:.1f} ms"
        + (f" from {result['served_by']}" if result.get("served_by") else "")
        + (f" (trace {result['trace_id']})" if result.get("trace_id") else "")
    )
    if result["status"] >= 500:
        raise SystemExit(EXIT_FAILURE)


@app.command()
@click.option("--no-open", is_flag=True, help="Print the URL instead of opening a browser.")
@click.pass_context
def dashboard(ctx: click.Context, no_open: bool) -> None:
    """Open the live dashboard of the running mesh in a browser (with the project's token, so its
    buttons work).

    \b
    Examples:
      devmesh dashboard
      devmesh dashboard --no-open      # on a machine without a browser: print the URL
    """
    client = _client(ctx)
    url = f"http://{client.record.admin}/#token={client.token}"
    if no_open:
        click.echo(url)
        return
    import webbrowser

    if not webbrowser.open(url):
        click.echo(f"no browser found; open {url}")
        return
    click.echo(f"opened the dashboard at http://{client.record.admin}/")


@app.command()
@click.option("--force", is_flag=True, help="Overwrite an existing devmesh.toml.")
def init(force: bool) -> None:
    """Write a commented devmesh.toml, detecting a Procfile, docker-compose.yml or package.json scripts.

    \b
    Examples:
      devmesh init
    """
    from devmesh.config.scaffold import detect_services, write_config

    project_dir = Path(os.getcwd())
    detected = detect_services(project_dir)
    try:
        path = write_config(project_dir, force=force)
    except FileExistsError as error:
        _fail(f"{error} (use --force to overwrite)")
    for service in detected:
        click.echo(f"  found {service.name} in {service.source}")
    click.echo(f"wrote {path}; start it with `devmesh up`")


# Commands that live in their own module (their module imports only click at the top).
app.add_command(trust)
app.add_command(graph)
app.add_command(wait)
app.add_command(check)
app.add_command(fault)
app.add_command(chaos)
app.add_command(from_docker)
app.add_command(compose)
app.add_command(k8s)
app.add_command(install)
app.add_command(uninstall)
app.add_command(export)
app.add_command(vscode)
app.add_command(plugin)
app.add_command(hub)


def run() -> None:
    """Console-script entry point."""
    app(prog_name="devmesh")
