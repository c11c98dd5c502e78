"""`devmesh from-docker`: running containers with published ports, as services; `--write` adds them to
devmesh.toml.

Only click at import time: `main.py` imports this module to register the command, and `devmesh --help`
must stay fast. The docker client is imported when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from devmesh.discovery.docker import ContainerService, DockerScan

EXIT_FAILURE = 1
EXIT_USAGE = 2


@click.command(
    "from-docker",
    epilog="""\b
Examples:
  devmesh from-docker                 (what would become services)
  devmesh from-docker --write         (add them to devmesh.toml)
  DOCKER_HOST=unix:///run/user/1000/podman/podman.sock devmesh from-docker --json""",
)
@click.option(
    "--write", is_flag=True, help="Add each container not in the config yet as a [services.NAME] table."
)
@click.option("--json", "as_json", is_flag=True, help="Print the services (and what --write did) as JSON.")
@click.pass_context
def from_docker(ctx: click.Context, write: bool, as_json: bool) -> None:
    """List running Docker containers with published ports as mesh services.

    The engine is DOCKER_HOST's (podman's socket works too), else the default socket. A container's
    service name is its `devmesh.service` label, else its compose service, else its container name; its
    port is the host port of its published TCP port with the lowest container port (label
    `devmesh.port=CONTAINER_PORT` picks another); its version is the `org.opencontainers.image.version` label, else the image tag. Containers
    labelled `devmesh.enable=false` are left out.

    --write appends `port`, `version` and a TCP health check for each new service to devmesh.toml,
    keeping everything already there byte for byte; names and ports the config already has are skipped.
    For services that follow containers as they come and go, set `[discovery] docker = true` instead.
    """
    from devmesh.discovery.docker import EngineUnavailable, connect, endpoint, list_running, scan_containers

    try:
        client = connect()
    except EngineUnavailable as error:
        _fail(str(error))
    try:
        scan = scan_containers(list_running(client))
    except Exception as error:  # the engine went away between the ping and the list
        _fail(f"listing containers at {endpoint()} failed: {error}")
    finally:
        client.close()

    document: dict[str, Any] = {
        "docker": endpoint(),
        "services": [_service_json(service) for service in scan.services],
        "skipped": [{"container": item.container, "reason": item.reason} for item in scan.skipped],
    }
    if write:
        document["write"] = _write(ctx, scan, quiet=as_json)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        write_error = document.get("write", {}).get("error")
        if write_error is not None:  # the services are shown; the failed write-back is a config problem
            _fail(str(write_error), EXIT_USAGE)
        return
    if not write:
        _print_scan(scan)


def _service_json(service: ContainerService) -> dict[str, Any]:
    return {
        "name": service.name,
        "port": service.port,
        "version": service.version,
        "container": service.container,
        "image": service.image,
        "container_port": service.container_port,
        "other_ports": list(service.other_ports),
    }


def _print_scan(scan: DockerScan) -> None:
    from devmesh.cli.table import print_table

    if scan.services:
        rows = [
            [service.name, str(service.port), service.version or "-", service.container, service.image]
            for service in scan.services
        ]
        print_table(["name", "port", "version", "container", "image"], rows)
    else:
        click.echo("no running container publishes a TCP port")
    for item in scan.skipped:
        click.echo(f"skipped container {item.container}: {item.reason}", err=True)


def _entry(service: ContainerService) -> dict[str, Any]:
    """The config entry: no `command` (the container is started elsewhere), so devmesh only routes."""
    return {"port": service.port, "version": service.version, "health": {"tcp": True}}


def _comment(service: ContainerService) -> str:
    return f"from Docker container {service.container} (image {service.image})"


def _write(ctx: click.Context, scan: DockerScan, *, quiet: bool) -> dict[str, Any]:
    """Merge the services into the project's config; what was added and skipped. When the config cannot
    be written: with `quiet` (--json) the error is in what is returned, else it is printed with the TOML
    to add by hand and the command exits 2."""
    from devmesh.config import ConfigError, find_config
    from devmesh.config.writeback import WritebackError, merge_services, services_toml

    options = ctx.obj
    try:
        path = find_config(explicit=options.config_file) if options.config_file else find_config()
    except ConfigError as error:
        _fail(
            f"--write adds to an existing devmesh.toml, and there is none ({error}); "
            "run `devmesh init` first, then `devmesh from-docker --write`",
            EXIT_USAGE,
        )
    added: list[str] = []
    skipped: dict[str, str] = {}
    try:
        # One merge per service: each table gets its own comment naming its container.
        for service in scan.services:
            result = merge_services(path, {service.name: _entry(service)}, comment=_comment(service))
            added.extend(result.added)
            skipped.update(result.skipped)
    except WritebackError as error:
        if quiet:  # --json: the document says it, then the command fails (exit 2)
            return {"config": str(path), "added": added, "not_added": skipped, "error": str(error)}
        click.echo(f"devmesh: {error}", err=True)
        pending = [service for service in scan.services if service.name not in added]
        for service in pending:
            click.echo(services_toml({service.name: _entry(service)}, comment=_comment(service)))
        raise SystemExit(EXIT_USAGE) from None
    if not quiet:
        _print_written(Path(path), scan, added, skipped)
    return {"config": str(path), "added": added, "not_added": skipped}


def _print_written(path: Path, scan: DockerScan, added: list[str], skipped: dict[str, str]) -> None:
    by_name = {service.name: service for service in scan.services}
    for name in added:
        service = by_name[name]
        click.echo(f"added {name} (port {service.port}, container {service.container}) to {path.name}")
    for name, reason in skipped.items():
        click.echo(f"not added {name}: {reason}")
    for item in scan.skipped:
        click.echo(f"skipped container {item.container}: {item.reason}")
    if not scan.services:
        click.echo("no running container publishes a TCP port: nothing to add")


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)
