"""`devmesh plugin list|run`, and how `devmesh NAME` finds a plugin when NAME is not a built-in command.

Only click at import time: `main.py` imports this module to register the group. The plugin machinery
(`devmesh.plugins`, importlib.metadata) is imported when a plugin is looked for, that is for an unknown
command name, `devmesh --help` (a directory listing per sys.path and PATH entry) and `plugin ...`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from pathlib import Path

EXIT_FAILURE = 1
EXIT_USAGE = 2
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)


@click.group(
    "plugin",
    epilog="""\b
Examples:
  devmesh plugin list
  devmesh plugin list --json
  devmesh plugin run hello a b      (even when a built-in command is also called hello)""",
)
def plugin() -> None:
    """Commands and hooks added by other packages, and devmesh-NAME programs on PATH.

    A Python package adds a plugin with an entry point in the group `devmesh.plugins` (a click command,
    or an object with hook functions the agent calls); a program named devmesh-NAME on PATH runs as
    `devmesh NAME`. A built-in command always wins over a plugin of the same name. See docs/plugins.md.
    """


@plugin.command(
    "list",
    epilog="""\b
Examples:
  devmesh plugin list
  devmesh plugin list --json | jq '.[] | select(.status == "broken")'""",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Show every plugin: name, kind (command, hooks, executable), source, and whether it is usable,
    shadowed by another command of the same name, or broken (the error says why).

    Lists load every Python plugin, to learn its kind: a plugin's import error shows here.
    """
    from devmesh.plugins.registry import list_plugins

    found = list_plugins(_builtins(ctx))
    if as_json:
        click.echo(json.dumps([info.to_json() for info in found], indent=2))
        return
    if not found:
        click.echo(
            "no plugins: install a package with an entry point in the group devmesh.plugins, "
            "or put a program named devmesh-NAME on PATH (docs/plugins.md)"
        )
        return
    from devmesh.cli.table import print_table

    print_table(
        ["plugin", "kind", "status", "source", "detail"],
        [[info.name, info.kind, info.status, info.source, info.detail] for info in found],
    )


@plugin.command(
    "run",
    context_settings=_PASS_THROUGH,
    epilog="""\b
Examples:
  devmesh plugin run hello a b
  devmesh plugin run hello -- --help    (the plugin's own --help)""",
)
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run_command(ctx: click.Context, name: str, args: tuple[str, ...]) -> None:
    """Run plugin NAME with ARGS, as `devmesh NAME ARGS` does, but also when a built-in command has
    the same name."""
    command = find_plugin_command(ctx, name, builtins=())
    if command is None:
        _fail(f"no plugin named {name!r}; `devmesh plugin list` shows the plugins found", EXIT_USAGE)
    root = ctx.find_root()
    with command.make_context(name, list(args), parent=root) as child:
        command.invoke(child)


# -- used by the top-level group in main.py ---------------------------------------------------------


def find_plugin_command(ctx: click.Context, name: str, *, builtins: Collection[str]) -> click.Command | None:
    """The command `devmesh NAME` runs when NAME is a plugin's name (and not in `builtins`), else None.

    A Python plugin wins over a program on PATH. A Python plugin that fails to load, or has hooks but no
    command, gives a command that says so and exits non-zero.
    """
    from devmesh.plugins.registry import (
        PluginError,
        entry_points,
        find_executable,
        load_entry_point,
        valid_name,
    )

    if name in builtins or not valid_name(name):
        return None
    for entry_point in entry_points():
        if entry_point.name != name:
            continue
        try:
            loaded, kind = load_entry_point(entry_point)
        except PluginError as error:
            return _failing_command(name, str(error), EXIT_FAILURE)
        if kind == "command":
            command: click.Command = loaded
            return command
        return _failing_command(
            name,
            f"plugin {name!r} has hooks the agent calls, not a command to run "
            "(`devmesh plugin list` shows the commands)",
            EXIT_USAGE,
        )
    path = find_executable(name)
    if path is None:
        return None
    return _executable_command(name, path)


def format_plugins_epilog(formatter: click.HelpFormatter, *, builtins: Collection[str]) -> None:
    """A "Plugins" section for `devmesh --help`: the names `devmesh NAME` would run, none imported."""
    from devmesh.plugins.registry import declared_names

    names = declared_names(builtins)
    with formatter.section("Plugins"):
        if names:
            formatter.write_dl([(name, f"from {where}") for name, where in names])
            formatter.write_paragraph()
        formatter.write_text(
            "Entry points in the group devmesh.plugins and devmesh-NAME programs on PATH add commands; "
            "`devmesh plugin list` shows them all."
        )


def _builtins(ctx: click.Context) -> Collection[str]:
    root = ctx.find_root().command
    return root.commands.keys() if isinstance(root, click.Group) else ()


def _failing_command(name: str, message: str, code: int) -> click.Command:
    def fail(**_ignored: Any) -> None:
        _fail(message, code)

    return click.Command(
        name,
        callback=fail,
        context_settings=_PASS_THROUGH | {"allow_extra_args": True},
        add_help_option=False,
    )


def _executable_command(name: str, path: Path) -> click.Command:
    """A command that replaces devmesh with the program, every argument (--help included) passed on."""

    @click.pass_context
    def run_program(ctx: click.Context, args: tuple[str, ...]) -> None:
        import os

        from devmesh.plugins.executables import exec_program, plugin_environment

        options = ctx.find_root().obj
        env = plugin_environment(
            os.environ,
            config_file=getattr(options, "config_file", None),
            env_name=getattr(options, "env_name", None),
        )
        try:
            exec_program(path, args, env)
        except OSError as error:
            _fail(f"could not run plugin {name!r} ({path}): {error}")

    return click.Command(
        name,
        callback=run_program,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings=_PASS_THROUGH,
        add_help_option=False,
        help=f"Plugin: runs {path}.",
    )
