"""`devmesh install` and `devmesh uninstall`: make a custom domain's names resolve to this machine.

Only click (and the standard library) at import time: `main.py` imports this module to register the
commands, and `devmesh --help` must stay fast. The planning code is imported when a command runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from devmesh.names.changes import Applied, Change, NamesPlan

EXIT_FAILURE = 1
EXIT_USAGE = 2
# Where sudo finds programs (its secure_path); a devmesh elsewhere (a virtualenv) needs its full path.
_SUDO_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_OVERRIDES = ("DEVMESH_HOSTS_FILE", "DEVMESH_DNSMASQ_DIR", "DEVMESH_RESOLVED_DIR", "DEVMESH_RESOLVER_DIR")


@click.command(
    "install",
    epilog="""\b
Examples:
  devmesh install --auto --dry-run     (show the exact changes, write nothing)
  sudo devmesh install --auto --yes    (the hosts file belongs to root)
  DEVMESH_HOSTS_FILE=/tmp/hosts devmesh install --auto --yes
  devmesh install --auto --dry-run --json   (the plan as JSON)""",
)
@click.option(
    "--auto",
    "auto",
    is_flag=True,
    help="Pick the method (the default): the hosts file for plain names; for wildcard names also a "
    "dnsmasq snippet and the platform's per-domain resolver setting.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "hosts", "dns"]),
    default=None,
    help="Force a method: hosts (the hosts file only) or dns (dnsmasq for the whole domain only).",
)
@click.option("--yes", "-y", is_flag=True, help="Apply the changes without asking.")
@click.option("--dry-run", is_flag=True, help="Print the exact diff of every file and write nothing.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the plan and what was applied as JSON (needs --yes or --dry-run).",
)
@click.pass_context
def install(
    ctx: click.Context, auto: bool, method: str | None, yes: bool, dry_run: bool, as_json: bool
) -> None:
    """Make the mesh's host names (api.shop.test, ...) resolve to this machine.

    Needed only when [mesh] domain is not localhost: names under localhost resolve to this machine
    by themselves. devmesh adds one marked block per project to the hosts file (a backup of the
    previous file is kept beside it as hosts.devmesh.bak); wildcard hosts ("*.tenant") need a local
    dnsmasq, which devmesh configures with files of its own; system DNS settings (systemd-resolved)
    are left to you, with the exact commands printed. Nothing is written without --yes or a
    confirmation at the prompt. `devmesh uninstall` takes it all out again.
    """
    from devmesh.cli.main import _load
    from devmesh.names.changes import NamesError, hosts_file_path, plan_install
    from devmesh.names.plan import names_from_config

    if auto and method not in (None, "auto"):
        _fail(f"--auto and --method {method} contradict each other; pass one of them", EXIT_USAGE)
    loaded = _load(ctx)
    names = names_from_config(loaded)
    report: dict[str, Any] = {
        "command": "install",
        "mesh": names.mesh,
        "domain": names.domain,
        "project": names.project,
        "names": list(names.plain),
        "wildcards": list(names.wildcards),
        "method": method or "auto",
    }
    if not names.needs_setup:
        if as_json:
            _emit({**report, "needs_setup": False, "changes": [], "written": False})
            return
        click.echo(
            f"nothing to install: names under {names.domain!r} resolve to this machine without set-up "
            f"(e.g. {names.plain[-1]}). `devmesh install` is for another [mesh] domain, such as shop.test."
        )
        return
    try:
        plan = plan_install(
            names,
            method=method or "auto",  # type: ignore[arg-type]  # click.Choice checked it
            hosts_path=hosts_file_path(sys.platform),
            platform=sys.platform,
        )
    except NamesError as error:
        _fail(str(error))
    if not as_json:
        wildcards = f"; wildcards {', '.join(names.wildcards)}" if names.wildcards else ""
        click.echo(f"mesh {names.mesh!r}, domain {names.domain}: {', '.join(names.plain)}{wildcards}")
    again = ["install", *(["--method", method] if method else ["--auto"]), "--yes"]
    _apply(
        ctx,
        plan,
        again,
        yes=yes,
        dry_run=dry_run,
        report={**report, "needs_setup": True} if as_json else None,
    )


@click.command(
    "uninstall",
    epilog="""\b
Examples:
  devmesh uninstall --dry-run
  sudo devmesh uninstall
  sudo devmesh uninstall --all         (every project's block, from any folder)
  sudo devmesh uninstall --json        (what was removed, as JSON)""",
)
@click.option("--all", "everything", is_flag=True, help="Remove what devmesh added for every project.")
@click.option("--mesh", "mesh", help="Remove what devmesh added for this mesh name (no config needed).")
@click.option("--dry-run", is_flag=True, help="Print the exact diff of every file and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and what was applied as JSON.")
@click.pass_context
def uninstall(ctx: click.Context, everything: bool, mesh: str | None, dry_run: bool, as_json: bool) -> None:
    """Take out what `devmesh install` added: the project's hosts-file block and DNS snippets.

    Only devmesh's own lines and files go; the rest of the hosts file stays byte for byte, and its
    previous content is kept beside it as hosts.devmesh.bak. Running it again changes nothing. Run in a
    project, it leaves alone what devmesh added for another project folder with the same mesh name
    (--mesh NAME takes that too).
    """
    from devmesh.names.changes import NamesError, hosts_file_path, plan_uninstall
    from devmesh.names.plan import mark_name, project_label

    if everything and mesh:
        _fail("--all and --mesh contradict each other; pass one of them", EXIT_USAGE)
    target: str | None = None
    project = ""
    if mesh:
        target = mark_name(mesh)
    elif not everything:
        from devmesh.cli.main import _load
        from devmesh.config import ConfigError, find_config

        try:
            find_config(explicit=ctx.obj.config_file)
        except ConfigError as error:
            _fail(f"{error}; without a config: devmesh uninstall --mesh NAME, or --all", EXIT_USAGE)
        loaded = _load(ctx)
        target = mark_name(loaded.mesh_name)
        project = project_label(str(loaded.project_dir.resolve()))
    try:
        plan = plan_uninstall(
            target, hosts_path=hosts_file_path(sys.platform), platform=sys.platform, project=project
        )
    except NamesError as error:
        _fail(str(error))
    if not as_json:
        click.echo("every mesh" if target is None else f"mesh {target!r}")
    arguments = ["uninstall", *(["--all"] if everything else ["--mesh", target] if mesh and target else [])]
    report = {"command": "uninstall", "mesh": target, "project": project or None}
    _apply(ctx, plan, arguments, yes=True, dry_run=dry_run, report=report if as_json else None)


def _apply(
    ctx: click.Context,
    plan: NamesPlan,
    again: list[str],
    *,
    yes: bool,
    dry_run: bool,
    report: dict[str, Any] | None,
) -> None:
    """Show the plan, then (permitted and confirmed) apply it; the exit code says whether it worked.

    With `report` (--json) the plan and the outcome are printed as one JSON document instead, in every
    case, failures included (whose message also goes to stderr).
    """
    from devmesh.names.changes import ApplyError, apply, describe, write_problems

    as_json = report is not None
    document: dict[str, Any] = {
        **(report or {}),
        "dry_run": dry_run,
        "changes": [_change_json(change) for change in plan.changes],
        "notes": plan.notes,
        "manual": plan.manual,
        "unresolved": plan.unresolved or None,
        "applied": [],
        "then": [],
        "written": False,
        "error": None,
    }

    def stop(message: str, code: int = EXIT_FAILURE) -> NoReturn:
        if as_json:
            _emit({**document, "error": message})
        _fail(message, code)

    def finish() -> NoReturn:
        if as_json:
            _emit(document)
        else:
            _print_manual(plan)
        _finish(plan)

    if not as_json:
        for change in plan.changes:
            click.echo(f"  {change.verb:<10} {change.path}  ({change.purpose})")
        for note in plan.notes:
            click.echo(f"  note: {note}")
    if not plan.pending:
        if not as_json:
            click.echo("up to date: nothing to change")
        finish()
    if (dry_run or not yes) and not as_json:
        for change in plan.pending:
            click.echo("")
            click.echo(change.diff(), nl=False)
    problems = write_problems(plan)
    needs_root = any(problem.needs_root for problem in problems)
    document["problems"] = [problem.message for problem in problems]
    document["sudo"] = _sudo_line(ctx, again) if needs_root else None
    if dry_run:
        if not as_json:
            click.echo("\n--dry-run: nothing was written.")
            if problems:
                reasons = "; ".join(problem.message for problem in problems)
                click.echo(f"Applying it is not possible as this user ({reasons}).")
                if needs_root:
                    click.echo(f"Run it as root: {_sudo_line(ctx, again)}")
        finish()
    if problems:
        cannot = f"cannot write: {'; '.join(problem.message for problem in problems)}"
        if not needs_root:
            stop(f"{cannot}; nothing was written: fix the path (or the override variable) and run it again")
        if as_json:
            _emit({**document, "error": f"{cannot}; this needs root (nothing was written)"})
        click.echo(f"devmesh: {cannot}.", err=True)
        click.echo(
            f"devmesh: this needs root (nothing was written); run:\n  {_sudo_line(ctx, again)}", err=True
        )
        hint = _full_path_hint(ctx, again)
        if hint:
            click.echo(f"  ({hint})", err=True)
        raise SystemExit(EXIT_FAILURE)
    if not yes:
        if as_json:
            stop("--json does not ask before changing system files: pass --yes (or --dry-run to only look)")
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            _fail("not changing system files without a confirmation: pass --yes (or --dry-run to only look)")
        if not click.confirm("\nApply these changes?", default=False):
            _fail("nothing was changed")
    try:
        applied = apply(plan)
    except ApplyError as error:
        document["applied"] = [_applied_json(done) for done in error.done]
        document["failed"] = str(error.failed.path)
        document["written"] = bool(error.done)
        stop(str(error))
    thens = list(dict.fromkeys(done.change.then for done in applied if done.change.then))
    document.update(applied=[_applied_json(done) for done in applied], then=thens, written=True)
    if not as_json:
        for done in applied:
            click.echo(describe(done))
        for then in thens:
            click.echo(f"then run: {then}")
    finish()


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "path": str(change.path),
        "action": change.verb,
        "purpose": change.purpose,
        "then": change.then or None,
        "diff": change.diff(),
    }


def _applied_json(done: Applied) -> dict[str, Any]:
    return {
        "path": str(done.change.path),
        "how": done.how,
        "backup": str(done.backup) if done.backup else None,
    }


def _print_manual(plan: NamesPlan) -> None:
    if plan.manual:
        click.echo("\nby hand (devmesh does not change system DNS settings):")
        for line in plan.manual:
            click.echo(f"  {line}")


def _emit(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, indent=2))


def _finish(plan: NamesPlan) -> NoReturn:
    if plan.unresolved:
        _fail(f"still not resolvable here: {plan.unresolved}")
    raise SystemExit(0)


def _sudo_line(ctx: click.Context, arguments: list[str], program: str = "devmesh") -> str:
    """The command to run as root: the same command and config, and any path overrides (sudo drops them)."""
    parts = ["sudo"]
    overrides = [f"{name}={shlex.quote(os.environ[name])}" for name in _OVERRIDES if os.environ.get(name)]
    if overrides:
        parts += ["env", *overrides]
    parts.append(program)
    options = ctx.obj
    if options is not None and options.config_file is not None:
        parts += ["-f", shlex.quote(str(options.config_file.resolve()))]
    if options is not None and options.env_name:
        parts += ["--env", shlex.quote(options.env_name)]
    return " ".join([*parts, *(shlex.quote(argument) for argument in arguments)])


def _full_path_hint(ctx: click.Context, arguments: list[str]) -> str:
    """When sudo would not find this devmesh (a virtualenv), the same line with its full path."""
    found = shutil.which("devmesh")
    if found and os.path.dirname(found) in _SUDO_PATH:
        return ""
    program = shlex.quote(found) if found else f"{shlex.quote(sys.executable)} -m devmesh"
    return f"if sudo cannot find devmesh: {_sudo_line(ctx, arguments, program)}"


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)
