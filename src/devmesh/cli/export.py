"""`devmesh export nginx|caddy|envoy`: the route table as another proxy's config.

Only click at import time: `main.py` imports this module to register the command, and `devmesh --help`
must stay fast. The model and the renderers are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig
    from devmesh.export.model import RouteModel

EXIT_FAILURE = 1
EXIT_USAGE = 2


@click.command(
    "export",
    epilog="""\b
Examples:
  devmesh export nginx > nginx.conf
  devmesh export nginx --prefix /tmp/edge -o /tmp/edge/nginx.conf && nginx -t -p /tmp/edge -c /tmp/edge/nginx.conf
  devmesh export nginx --snippet -o /etc/nginx/conf.d/devmesh.conf
  devmesh export caddy --listen 127.0.0.1:8080 -o Caddyfile
  devmesh export envoy --offline -o envoy.yaml""",
)
@click.argument("target", type=click.Choice(["nginx", "caddy", "envoy"]))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to FILE (atomically) instead of printing.",
)
@click.option("--listen", metavar="ADDR", help="Where the proxy listens (default: [proxy] listen).")
@click.option(
    "--full/--snippet",
    default=True,
    show_default=True,
    help="nginx: a whole nginx.conf, or an http{}-level snippet to include.",
)
@click.option(
    "--prefix",
    type=click.Path(path_type=Path, file_okay=False),
    help="nginx --full: keep pid, logs and temp folders here (created), so nginx runs unprivileged.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Use the config alone, even when an agent runs (no run-time ports, no peers).",
)
@click.option(
    "--trusted-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CA bundle that verifies remotes' certificates (default: the system's, where found).",
)
@click.pass_context
def export(
    ctx: click.Context,
    target: str,
    output: Path | None,
    listen: str | None,
    full: bool,
    prefix: Path | None,
    offline: bool,
    trusted_ca: Path | None,
) -> None:
    """Render the route table for nginx, Caddy or Envoy: host names, root-host paths, upstreams, load
    balancing, timeouts, retries, WebSocket upgrades and a 404 for unknown hosts.

    While the agent runs, the upstreams are the endpoints it routes to now (local, registered, Docker,
    Kubernetes, and the remote fallback; peers take only devmesh's signed requests and are left out).
    Without it, only fixed `port`s and `remote`s are known: a service whose port devmesh picks at run
    time answers 503, and the output and stderr say so.
    """
    from devmesh.cli.main import _fail, _load
    from devmesh.export.model import ExportError, parse_listen

    if target != "nginx" and (not full or prefix is not None):
        _fail("--snippet and --prefix are nginx options", EXIT_USAGE)
    if prefix is not None and not full:
        _fail(
            "--prefix applies to a whole config (--full); a snippet uses the including config's", EXIT_USAGE
        )
    loaded = _load(ctx)
    try:
        address = (
            parse_listen(listen)
            if listen
            else (loaded.config.proxy.listen.host, loaded.config.proxy.listen.port)
        )
        model = _model(ctx, loaded, offline=offline)
        ca = str(trusted_ca.resolve()) if trusted_ca is not None else _system_ca()
        text = _render(target, model, address, full=full, prefix=prefix, trusted_ca=ca)
    except ExportError as error:
        _fail(str(error), EXIT_USAGE)
    for note in model.notes:
        click.echo(f"devmesh: note: {note}", err=True)
    if prefix is not None:
        from devmesh.export.nginx import prepare_prefix

        prepare_prefix(prefix.resolve())
    if output is None:
        click.echo(text, nl=False)
        return
    from devmesh.config.writeback import atomic_write_text

    try:
        atomic_write_text(output, text)
    except OSError as error:
        _fail(f"cannot write {output}: {error.strerror or error}")
    click.echo(
        f"wrote {output} ({target}, {len(model.services)} services, from the {model.source})", err=True
    )


def _model(ctx: click.Context, loaded: LoadedConfig, *, offline: bool) -> RouteModel:
    """From the running agent's services, or from the config when no agent runs (or --offline)."""
    from devmesh.export.model import from_config, from_status

    if not offline:
        services = _live_services(ctx)
        if services is not None:
            return from_status(services, loaded.config, mesh_name=loaded.mesh_name)
    return from_config(loaded.config, mesh_name=loaded.mesh_name)


def _live_services(ctx: click.Context) -> list[dict[str, Any]] | None:
    from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
    from devmesh.agent.paths import StatePaths
    from devmesh.cli.main import _fail, _project_dir

    try:
        found = AdminClient.for_project(StatePaths(_project_dir(ctx))).get("/api/v1/services")
    except AgentNotRunning as error:
        click.echo(f"devmesh: {error}; exporting from the config alone", err=True)
        return None
    except AdminError as error:
        _fail(f"the agent did not give its services: {error}")
    if not isinstance(found, list):
        _fail("the agent's /api/v1/services answer is not a list; is the agent the same devmesh version?")
    return found


def _system_ca() -> str | None:
    """The system's CA bundle file, for verifying remotes (nginx and Envoy need a file)."""
    import ssl

    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _render(
    target: str,
    model: RouteModel,
    listen: tuple[str, int],
    *,
    full: bool,
    prefix: Path | None,
    trusted_ca: str | None,
) -> str:
    if target == "nginx":
        from devmesh.export.nginx import NginxOptions, render_nginx

        options = NginxOptions(
            full=full, prefix=str(prefix.resolve()) if prefix is not None else None, trusted_ca=trusted_ca
        )
        return render_nginx(model, listen, options)
    if target == "caddy":
        from devmesh.export.caddy import render_caddy

        return render_caddy(model, listen)
    from devmesh.export.envoy import EnvoyOptions, render_envoy

    return render_envoy(model, listen, EnvoyOptions(trusted_ca=trusted_ca))
