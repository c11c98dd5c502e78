"""`devmesh fault ...` and `devmesh chaos ...`: faults and scenarios on the running agent.

Only click at import time (main.py imports this module to register the commands).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click


def _call(ctx: click.Context, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    from devmesh.cli.main import _call as call

    return call(ctx, method, path, body)


@click.group(epilog="Example: devmesh fault add slow-pay --service payments --delay 300ms --rate 0.5")
def fault() -> None:
    """Faults on the running mesh: slow, failing or gone dependencies, without editing code.

    Responses a fault touched carry X-DevMesh-Fault: <name>; /metrics counts each fault.
    """


@fault.command("add")
@click.argument("name")
@click.option("--service", "-s", required=True, help="The service whose requests the fault touches.")
@click.option("--delay", help='Wait before forwarding: "300ms", or a range "100ms..800ms".')
@click.option("--abort", type=int, help="Answer with this status code instead of forwarding.")
@click.option("--outage", type=click.Choice(["503", "reset"]), help="Answer 503, or reset the connection.")
@click.option("--bandwidth", help='Limit the response body to this rate: "64KB/s".')
@click.option("--rate", type=float, default=1.0, show_default=True, help="The share of matching requests.")
@click.option("--path", "paths", multiple=True, help='Only these paths: "/charge*" (repeatable).')
@click.option("--method", "methods", multiple=True, help="Only these methods (repeatable).")
@click.option("--header", "headers", multiple=True, help="Only requests carrying NAME=VALUE (repeatable).")
@click.pass_context
def add(
    ctx: click.Context,
    name: str,
    service: str,
    delay: str | None,
    abort: int | None,
    outage: str | None,
    bandwidth: str | None,
    rate: float,
    paths: tuple[str, ...],
    methods: tuple[str, ...],
    headers: tuple[str, ...],
) -> None:
    """Add a fault NAME for SERVICE's requests.

    \b
    Examples:
      devmesh fault add slow-pay --service payments --delay 100ms..800ms
      devmesh fault add flaky-api --service api --abort 503 --rate 0.2 --method POST
      devmesh fault add gone --service payments --outage reset
      devmesh fault add thin --service web --bandwidth 32KB/s --header x-chaos=on
    """
    from devmesh.cli.main import EXIT_USAGE, _fail

    matched: dict[str, str] = {}
    for header in headers:
        key, sep, value = header.partition("=")
        if not sep or not key.strip():
            _fail(f"--header {header!r}: write it as NAME=VALUE, e.g. --header x-chaos=on", EXIT_USAGE)
        matched[key.strip()] = value.strip()
    body: dict[str, Any] = {"name": name, "service": service, "rate": rate}
    optional = {"delay": delay, "abort": abort, "outage": outage, "bandwidth": bandwidth}
    body.update({key: value for key, value in optional.items() if value is not None})
    if paths:
        body["paths"] = list(paths)
    if methods:
        body["methods"] = list(methods)
    if matched:
        body["headers"] = matched
    _call(ctx, "post", "/api/v1/faults", body)
    click.echo(f"fault {name} on {service}")


@fault.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_faults(ctx: click.Context, as_json: bool) -> None:
    """The faults: from the config, added at run time, and those of running scenarios.

    \b
    Examples:
      devmesh fault list
    """
    found = _call(ctx, "get", "/api/v1/faults")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no faults (add one with `devmesh fault add`, or [faults.NAME] in devmesh.toml)")
        return
    from devmesh.cli.table import print_table

    print_table(
        ["name", "service", "on", "does", "matching", "source", "injected"],
        [
            [
                entry["name"],
                entry["service"],
                "yes" if entry["enabled"] else "no",
                entry["does"],
                _matching(entry),
                entry["source"],
                str(entry["injected"]),
            ]
            for entry in found
        ],
    )


def _matching(entry: dict[str, Any]) -> str:
    parts = [*entry["methods"], *entry["paths"], *(f"{k}={v}" for k, v in entry["headers"].items())]
    return " ".join(parts) or "every request"


@fault.command("rm")
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Remove a fault added at run time; switch off a fault of the config (until the config changes).

    \b
    Examples:
      devmesh fault rm slow-pay
    """
    _call(ctx, "delete", f"/api/v1/faults/{name}")
    click.echo(f"fault {name} off")


@fault.command("enable")
@click.argument("name")
@click.pass_context
def enable(ctx: click.Context, name: str) -> None:
    """Switch a fault on (one from the config with `enabled = false`, or one switched off).

    \b
    Examples:
      devmesh fault enable slow-payments
    """
    _call(ctx, "post", f"/api/v1/faults/{name}/enable", {})
    click.echo(f"fault {name} on")


@fault.command("disable")
@click.argument("name")
@click.pass_context
def disable(ctx: click.Context, name: str) -> None:
    """Switch a fault off, keeping it listed.

    \b
    Examples:
      devmesh fault disable slow-payments
    """
    _call(ctx, "post", f"/api/v1/faults/{name}/disable", {})
    click.echo(f"fault {name} off")


@fault.command("clear")
@click.pass_context
def clear(ctx: click.Context) -> None:
    """Everything off: faults added at run time removed, the config's switched off, scenarios stopped.

    \b
    Examples:
      devmesh fault clear
    """
    _call(ctx, "delete", "/api/v1/faults")
    click.echo("all faults off")


@click.group(epilog="Example: devmesh chaos run down:payments --duration 30s")
def chaos() -> None:
    """Chaos scenarios: a set of faults, outages or a partition, on for a bounded time.

    The agent owns the timer: a scenario ends on time even if the command that started it is killed.
    """


@chaos.command("run")
@click.argument("name")
@click.option("--duration", help='How long (default: the scenario\'s own, or 60s): "30s", "2m".')
@click.option("--detach", "-d", is_flag=True, help="Return at once instead of counting down.")
@click.pass_context
def run(ctx: click.Context, name: str, duration: str | None, detach: bool) -> None:
    """Run scenario NAME: one of [scenarios.NAME], or a built-in one.

    \b
    Built-in scenarios (no config needed):
      slow:SERVICE       every request waits 300 ms to 1.5 s
      flaky:SERVICE      30% of the requests get a 503
      down:SERVICE       every request gets a 503, as if the service were gone
      reset:SERVICE      every connection is reset
      partition:PEER     this agent stops reaching that peer
    \b
    Examples:
      devmesh chaos run payments-outage
      devmesh chaos run slow:payments --duration 2m
      devmesh chaos run partition:alice-3f2a1b --detach
    """
    started = _call(ctx, "post", f"/api/v1/scenarios/{name}/run", {"duration": duration} if duration else {})
    ends_at = float(started["ends_at"])
    what = ", ".join(started["faults"]) or ", ".join(started["partitioned"])
    click.echo(f"scenario {name} on ({what}) until {time.strftime('%H:%M:%S', time.localtime(ends_at))}")
    if detach:
        return
    try:
        while (left := ends_at - time.time()) > 0:
            if sys.stdout.isatty():
                click.echo(f"\r{left:5.0f}s left (Ctrl-C leaves it running)", nl=False)
            time.sleep(min(1.0, left))
    except KeyboardInterrupt:
        click.echo(f"\nscenario {name} keeps running; `devmesh chaos stop {name}` ends it now")
        return
    click.echo(("\n" if sys.stdout.isatty() else "") + f"scenario {name} over")


@chaos.command("stop")
@click.argument("name")
@click.pass_context
def stop(ctx: click.Context, name: str) -> None:
    """End a running scenario now.

    \b
    Examples:
      devmesh chaos stop payments-outage
    """
    _call(ctx, "delete", f"/api/v1/scenarios/{name}")
    click.echo(f"scenario {name} stopped")


@chaos.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_scenarios(ctx: click.Context, as_json: bool) -> None:
    """Scenarios to run, and those running with the time they have left.

    \b
    Examples:
      devmesh chaos list
    """
    available = _call(ctx, "get", "/api/v1/scenarios")
    running = {entry["name"]: entry for entry in _call(ctx, "get", "/api/v1/status")["scenarios"]}
    if as_json:
        click.echo(json.dumps({"available": available, "running": list(running.values())}, indent=2))
        return
    from devmesh.cli.table import print_table

    rows = [
        [
            entry["name"],
            entry["source"],
            entry.get("description") or ", ".join([*entry.get("faults", []), *entry.get("outage", [])]),
            f"{entry['duration_s']:g}s" if entry.get("duration_s") else "-",
        ]
        for entry in available
    ]
    print_table(["scenario", "source", "does", "duration"], rows)
    for name, entry in running.items():
        click.echo(f"running: {name}, {entry['remaining_s']:.0f}s left")
