"""`devmesh vscode`: VS Code tasks (up, down, status, logs and restart per service) in .vscode/tasks.json.

Only click at import time: `main.py` imports this module to register the command, and `devmesh --help`
must stay fast. The merge (`devmesh.editors.vscode`) is imported when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from devmesh.editors.vscode import TasksMerge

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)


@click.command(
    "vscode",
    epilog="""\b
Examples:
  devmesh vscode                        (then Terminal > Run Task... > devmesh: up)
  devmesh vscode --program .venv/bin/devmesh
  devmesh vscode --check                (in CI: fail when tasks.json is out of date)""",
)
@click.option(
    "--program",
    default="devmesh",
    show_default=True,
    help="The devmesh executable the tasks run (a path is taken relative to the project folder).",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if tasks.json is not up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
@click.pass_context
def vscode(ctx: click.Context, program: str, check: bool, as_json: bool) -> None:
    """Write or merge .vscode/tasks.json in the project folder: devmesh up, down and status, and logs
    and restart for each service.

    Only the tasks marked "managed by devmesh" are touched: your own tasks, settings and comments stay
    as they are, and a second run changes nothing. `devmesh: up` is a background task that is ready
    when every service is healthy, so a launch configuration can use it as its preLaunchTask. A
    tasks.json that does not parse is left alone, and the error names its line.
    """
    from devmesh import const
    from devmesh.cli.main import _load
    from devmesh.config.writeback import atomic_write_text
    from devmesh.editors.vscode import TasksFileError, devmesh_tasks, merge_tasks

    loaded = _load(ctx)
    project_dir = loaded.project_dir
    global_args: list[str] = []
    default_config = next(
        (project_dir / name for name in const.CONFIG_NAMES if (project_dir / name).is_file()), None
    )
    if default_config is None or default_config.name != loaded.path.name:
        global_args += ["-f", "${workspaceFolder}/" + loaded.path.name]
    if loaded.env_name:
        global_args += ["--env", loaded.env_name]
    if "/" in program and not Path(program).is_absolute():
        program = "${workspaceFolder}/" + program
    supervised = [name for name, spec in loaded.config.services.items() if spec.command is not None]
    tasks = devmesh_tasks(supervised, program=program, global_args=global_args)

    path = project_dir / ".vscode" / "tasks.json"
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    try:
        original: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        original = None
    except (OSError, UnicodeDecodeError) as error:
        _fail(f"cannot read {path}: {error}", EXIT_USAGE)
    try:
        merge = merge_tasks(original, tasks)
    except TasksFileError as error:
        _fail(
            f"{path}:{error} (nothing was written; fix the file, or move it away for a new one)", EXIT_USAGE
        )
    if merge.changed and not check:
        path.parent.mkdir(exist_ok=True)
        try:
            atomic_write_text(path, merge.text)
        except OSError as error:
            _fail(f"cannot write {path}: {error}")
    if as_json:
        click.echo(
            json.dumps(
                {"file": str(path), **merge.to_json(), "written": merge.changed and not check}, indent=2
            )
        )
    else:
        _report(str(shown), merge, check=check)
    if check and merge.changed:
        raise SystemExit(EXIT_FAILURE)


def _report(shown: str, merge: TasksMerge, *, check: bool) -> None:
    for label in merge.user_owned:
        click.echo(
            f'kept your own task {label!r} (not marked "managed by devmesh"); devmesh writes none beside it'
        )
    if not merge.changed:
        click.echo(f"{shown} is up to date")
        return
    verb = "would change" if check else "wrote"
    parts = [
        f"{what} {', '.join(labels)}"
        for what, labels in (("added", merge.added), ("updated", merge.updated), ("removed", merge.removed))
        if labels
    ]
    click.echo(f"{verb} {shown}: {'; '.join(parts)}")
