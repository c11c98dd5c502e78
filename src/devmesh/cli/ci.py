"""`devmesh wait` and `devmesh check`: the CI preflight (docs/ci.md).

`wait` blocks until the running mesh is ready; `check` validates the config, the ports, health, a smoke
request per service through the proxy and version constraints, and writes JUnit XML. The work is
`devmesh.preflight`'s; this module has the commands, their options and what they print.

Only click at import time: `main.py` imports this module to register the commands, and `devmesh --help`
must stay fast, so `devmesh.preflight` is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from collections.abc import Sequence

    from devmesh.preflight.report import Report

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def parse_timeout(ctx: click.Context | None, param: click.Parameter | None, value: object) -> float:
    """`--timeout`: "60s", "2m", "1500ms" or a number of seconds (the config's duration syntax)."""
    from devmesh.config.units import parse_duration_s

    try:
        return parse_duration_s(value if isinstance(value, int | float) else str(value))
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


# -- devmesh wait ------------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)


def _project_dir(ctx: click.Context) -> Path:
    from devmesh.config import ConfigError, find_config

    try:
        return find_config(explicit=ctx.obj.config_file).parent
    except ConfigError as error:
        _fail(str(error), EXIT_USAGE)


def _unknown_services(ctx: click.Context, project_dir: Path, names: Sequence[str]) -> list[str]:
    """Names neither the config nor the running agent knows (a typo should not wait out the timeout)."""
    from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
    from devmesh.agent.paths import StatePaths
    from devmesh.config import ConfigError, find_config, load_config

    known: set[str] = set()
    try:
        known.update(
            load_config(find_config(explicit=ctx.obj.config_file), env_name=ctx.obj.env_name).config.services
        )
    except ConfigError:
        return []  # the running agent keeps its last good config: let it answer
    try:
        document = AdminClient.for_project(StatePaths(project_dir)).get("/api/v1/status")
        known.update(entry["name"] for entry in document["services"])
    except (AgentNotRunning, AdminError):
        pass
    return [name for name in names if name not in known]


@click.command(
    "wait",
    epilog="""\b
Examples:
  devmesh up --detach && devmesh wait --healthy --timeout 120s
  devmesh wait api web --healthy      (only these two)""",
)
@click.argument("services", nargs=-1)
@click.option("--healthy", is_flag=True, help="Wait until every service is healthy (default: running).")
@click.option(
    "--timeout",
    callback=parse_timeout,
    metavar="DURATION",
    default="60s",
    show_default=True,
    help='How long to wait: "60s", "2m", or seconds.',
)
@click.pass_context
def wait(ctx: click.Context, services: tuple[str, ...], healthy: bool, timeout: float) -> None:
    """Block until the mesh is ready: the agent answers and every service (or each SERVICE) runs, or
    is healthy with --healthy. An agent that is still starting is waited for.

    Exits 1 on timeout, naming what is not ready (or the agent, when none answered).
    """
    from devmesh.preflight.wait import wait_for_mesh

    project_dir = _project_dir(ctx)
    if services:
        unknown = _unknown_services(ctx, project_dir, services)
        if unknown:
            _fail(f"no service named {', '.join(map(repr, unknown))}", EXIT_USAGE)
    result = wait_for_mesh(project_dir, healthy=healthy, services=services, timeout_s=timeout)
    word = "healthy" if healthy else "running"
    if not result.agent:
        _fail(
            f"no devmesh agent answered for {project_dir} within {timeout:g}s "
            "(start it with `devmesh up --detach`; its log is .devmesh/agent.log)"
        )
    if not result.ready:
        lines = [f"not {word} after {timeout:g}s: {', '.join(result.waiting)}"]
        lines += [f"  {name}: {why}" for name, why in result.waiting.items()]
        lines.append("  (`devmesh status` for the whole mesh, `devmesh logs SERVICE` for a service's output)")
        _fail("\n".join(lines))
    assert result.status is not None
    from devmesh.preflight.readiness import declared

    names = list(services) or [entry["name"] for entry in result.status["services"] if declared(entry)]
    what = ", ".join(names) if names else "no service"
    click.echo(f"mesh {result.status['mesh']}: {what} {word} ({result.elapsed:.1f}s)")


# -- devmesh check -----------------------------------------------------------------------------------


@click.command(
    "check",
    epilog="""\b
Examples:
  devmesh check
  devmesh check --junit devmesh-junit.xml --timeout 2m
  devmesh check --json""",
)
@click.option(
    "--junit", "junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML to FILE."
)
@click.option(
    "--timeout",
    callback=parse_timeout,
    metavar="DURATION",
    default="60s",
    show_default=True,
    help='How long services may take to become healthy: "60s", "2m", or seconds.',
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--start/--no-start",
    default=True,
    show_default=True,
    help="When no agent runs: start one (and stop it at the end), or fail.",
)
@click.pass_context
def check(ctx: click.Context, junit: Path | None, timeout: float, as_json: bool, start: bool) -> None:
    """Preflight for CI: the config is valid, the ports are free (or the running agent's answer), every
    service is healthy and answers a GET through the proxy (its health path, each route), and the
    versions in use satisfy `requires`. One JUnit testcase per check.

    With no agent running, check starts one and stops it at the end (--no-start: fail instead).

    Exits 0 when every check passed, 1 when one failed, 2 when the config is invalid.
    """
    import json

    from devmesh.preflight.checks import run_checks
    from devmesh.preflight.junit import write_junit
    from devmesh.preflight.report import ERROR, FAILED, SKIPPED, Report

    report = Report()
    write_error = ""
    try:
        loaded = run_checks(
            report,
            config_file=ctx.obj.config_file,
            env_name=ctx.obj.env_name,
            timeout_s=timeout,
            may_start=start,
            progress=None if as_json else _progress,
        )
    finally:
        if junit is not None:
            try:
                write_junit(junit, report)
            except OSError as error:
                write_error = f"cannot write the JUnit XML to {junit}: {error}"
    if as_json:
        document = {
            "ok": report.ok,
            "tests": len(report.results),
            "failures": report.count(FAILED),
            "errors": report.count(ERROR),
            "skipped": report.count(SKIPPED),
            "time": round(report.elapsed(), 3),
            "junit": str(junit) if junit else None,
            "checks": [result.as_dict() for result in report.results],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _print_report(report, None if write_error else junit)
    if write_error:
        _fail(write_error, EXIT_USAGE)
    if loaded is None:
        raise SystemExit(EXIT_USAGE)
    raise SystemExit(EXIT_OK if report.ok else EXIT_FAILURE)


def _progress(line: str) -> None:
    click.echo(line, err=True)


def _print_report(report: Report, junit: Path | None) -> None:
    """A table of every check, then each failure and error with what to do, then the counts."""
    import sys

    from devmesh.cli.table import paint, print_table
    from devmesh.preflight.report import ERROR, FAILED, PASSED, SKIPPED
    from devmesh.supervisor.logs import colour_enabled

    colour = colour_enabled(sys.stdout)
    colours = {PASSED: "green", FAILED: "red", ERROR: "red", SKIPPED: "yellow"}
    rows = [
        [
            result.classname.removeprefix("devmesh."),
            result.name,
            paint(result.outcome, colours[result.outcome], colour),
            f"{result.time_s:.2f}s",
            result.message if result.outcome != PASSED else (result.note or result.message),
        ]
        for result in report.results
    ]
    print_table(["check", "name", "result", "time", "message"], rows)
    for result in report.results:
        if result.outcome in (FAILED, ERROR):
            click.echo(f"\n{result.outcome.upper()} {result.classname} {result.name}")
            for line in result.text().splitlines():
                click.echo(f"  {line}")
    summary = (
        f"\n{len(report.results)} checks: {report.count(PASSED)} passed, {report.count(FAILED)} failed, "
        f"{report.count(ERROR)} errors, {report.count(SKIPPED)} skipped ({report.elapsed():.1f}s)"
    )
    click.echo(summary + (f"; JUnit XML in {junit}" if junit else ""))
