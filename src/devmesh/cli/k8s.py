"""`devmesh k8s sync`: a cluster's Services as mesh services, followed by the agent from then on.

Only click at import time (`devmesh --help` must stay fast); the kubernetes client is imported when the
command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2


@click.group("k8s")
def k8s() -> None:
    """Kubernetes: import a cluster's Services, reached through port-forwards (extra: devmesh[kubernetes])."""


@k8s.command(
    "sync",
    epilog="""\b
Examples:
  devmesh k8s sync --context kind-dev
  devmesh k8s sync --context kind-dev --namespace shop --json
  devmesh k8s sync --context kind-dev --no-write     (only list; the config stays as it is)
  KUBECONFIG=~/work/kubeconfig devmesh k8s sync --context staging""",
)
@click.option("--context", help="The kubeconfig context (default: its current-context).")
@click.option("--namespace", "-n", help="The namespace (default: the context's namespace, else default).")
@click.option(
    "--write/--no-write",
    default=True,
    show_default=True,
    help="Record the context and namespace (and a kubeconfig other than ~/.kube/config) as [discovery] "
    "kubernetes in devmesh.toml.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the Services as JSON.")
@click.pass_context
def sync(ctx: click.Context, context: str | None, namespace: str | None, write: bool, as_json: bool) -> None:
    """List the Services of a namespace and record it in devmesh.toml, so that the agent follows it.

    Each TCP port of each Service becomes a mesh service (the first port takes the Service's name, the
    others `<service>-<port name>`), served on a loopback port that forwards each connection to a ready
    pod through the API server, like `kubectl port-forward`. A running agent picks the change up at once
    and adds or removes services as they come and go in the cluster. The kubeconfig is $KUBECONFIG, else
    ~/.kube/config; one other than ~/.kube/config is recorded too, so the agent reads the same one.
    """
    from devmesh.cli.main import _fail

    config_path = _config_path(ctx) if write else None
    try:
        from devmesh.discovery.kubernetes import ClusterClient, ClusterError
    except ImportError:
        _fail("the kubernetes client is not installed: pip install 'devmesh[kubernetes]'")
    try:
        cluster = ClusterClient(context=context, namespace=namespace)
    except ClusterError as error:
        _fail(str(error))
    try:
        rows, skipped = _inventory(cluster)
    except Exception as error:  # the client's errors come in many types; each means "cannot list"
        from devmesh.discovery.kubernetes import short_error

        _fail(
            f"cannot list Services in namespace {cluster.namespace!r} of {cluster.where()}: {short_error(error)}"
        )
    finally:
        cluster.close()

    settings: dict[str, str | None] = {"context": cluster.context, "namespace": cluster.namespace}
    changed = False
    write_error: str | None = None
    if config_path is not None:
        settings["kubeconfig"] = _recorded_kubeconfig(cluster.kubeconfig, config_path.parent)
        write_error, changed = _record(config_path, settings)
    # What was found is shown whatever became of the config; a failed write-back is reported after it.
    if as_json:
        import json

        document = {
            "context": cluster.context,
            "namespace": cluster.namespace,
            "server": cluster.server,
            "kubeconfig": cluster.kubeconfig,
            "services": rows,
            "skipped": skipped,
            "config": str(config_path) if config_path is not None else None,
            "config_changed": changed,
            "config_error": write_error,
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _print(rows, skipped, cluster.namespace)
    if config_path is None:
        return
    setting = f"[discovery] kubernetes = {_inline(settings)}"
    if write_error is not None:
        click.echo(f"devmesh: {write_error}", err=True)
        click.echo("add this to the config by hand:", err=True)
        click.echo(f"[discovery]\nkubernetes = {_inline(settings)}", err=True)
        raise SystemExit(EXIT_USAGE)
    state = "recorded" if changed else "already in"
    click.echo(f"{state} {config_path}: {setting}; a running agent follows it now", err=True)


def _recorded_kubeconfig(kubeconfig: str, project_dir: Path) -> str | None:
    """What `[discovery] kubernetes.kubeconfig` records for the kubeconfig the command read: None for
    the default (~/.kube/config), which the agent reads anyway; else each path absolute, or relative to
    the project when inside it (the config then works wherever the project is checked out)."""
    import os

    from devmesh.discovery.kubernetes import DEFAULT_KUBECONFIG

    entries = [os.path.abspath(os.path.expanduser(entry)) for entry in kubeconfig.split(os.pathsep) if entry]
    if entries == [os.path.abspath(os.path.expanduser(DEFAULT_KUBECONFIG))]:
        return None
    root = project_dir.resolve()
    recorded: list[str] = []
    for entry in entries:
        path = Path(entry)
        recorded.append(str(path.relative_to(root)) if path.is_relative_to(root) else entry)
    return os.pathsep.join(recorded)


def _inline(settings: dict[str, str | None]) -> str:
    """The settings as the TOML inline table they are recorded as."""
    import json

    return (
        "{ "
        + ", ".join(f"{key} = {json.dumps(value)}" for key, value in settings.items() if value is not None)
        + " }"
    )


def _config_path(ctx: click.Context) -> Path:
    from devmesh.cli.main import _fail
    from devmesh.config import ConfigError, find_config

    options = ctx.obj
    try:
        return find_config(explicit=options.config_file) if options.config_file else find_config()
    except ConfigError as error:
        _fail(f"{error} (or pass --no-write to only list the Services)", EXIT_USAGE)


def _inventory(cluster: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """What the agent would forward (one row per port) and the Services it would skip."""
    from devmesh.discovery.kubernetes import assign_mesh_names, service_from_api, skip_reason

    items, _ = cluster.list_services()
    endpoints = cluster.list_endpoints()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    services = []
    for item in sorted(items, key=lambda entry: entry["metadata"]["name"]):
        service = service_from_api(item)
        if service is None:
            skipped.append({"service": item["metadata"]["name"], "reason": skip_reason(item)})
        else:
            services.append(service)
    wanted, left_out = assign_mesh_names(services)
    for service, port, reason in left_out:
        skipped.append({"service": service.name, "reason": f"port {port.port}: {reason}"})
    for service in services:
        ready = _ready_pods(endpoints.get(service.name))
        for port in service.ports:
            if (service.name, port.port) not in wanted:
                continue
            rows.append(
                {
                    "name": port.mesh_name,
                    "service": service.name,
                    "namespace": service.namespace,
                    "port": port.port,
                    "target_port": port.target,
                    "target": service.describe_target(),
                    "ready_pods": ready,
                    "version": service.version,
                }
            )
    skipped.sort(key=lambda entry: entry["service"])
    return rows, skipped


def _ready_pods(endpoints: dict[str, Any] | None) -> int:
    pods = {
        (address.get("targetRef") or {}).get("name")
        for subset in (endpoints or {}).get("subsets") or []
        for address in subset.get("addresses") or []
        if (address.get("targetRef") or {}).get("kind") == "Pod"
    }
    return len(pods)


def _print(rows: list[dict[str, Any]], skipped: list[dict[str, str]], namespace: str) -> None:
    import sys

    from devmesh.cli.table import print_table
    from devmesh.supervisor.logs import colour_enabled

    if not rows:
        click.echo(f"no Service with a TCP port in namespace {namespace}")
    else:
        print_table(
            ["name", "namespace", "ports", "target", "ready pods", "version"],
            [
                [
                    row["name"],
                    row["namespace"],
                    f"{row['service']}:{row['port']} -> {row['target_port']}",
                    row["target"],
                    str(row["ready_pods"]),
                    row["version"] or "-",
                ]
                for row in rows
            ],
            colour=colour_enabled(sys.stdout),
        )
    for entry in skipped:
        click.echo(f"skipped {entry['service']}: {entry['reason']}", err=True)


def _record(path: Path, settings: dict[str, str | None]) -> tuple[str | None, bool]:
    """Write `settings` to [discovery] kubernetes (a None removes its key): (the error, or None; whether
    the file changed)."""
    from devmesh.config.writeback import WritebackError, set_table

    try:
        return None, set_table(path, ("discovery", "kubernetes"), settings)
    except WritebackError as error:
        return str(error), False
