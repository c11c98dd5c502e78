"""`devmesh graph`: the mesh's topology as Mermaid, Graphviz DOT, a terminal tree or JSON.

Only click at import time: `main.py` imports this module to register the command, and `devmesh --help`
must stay fast. The rendering (and rich, for the tree) is imported when the command runs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig

EXIT_FAILURE = 1
EXIT_USAGE = 2


@click.command(
    "graph",
    epilog="""\b
Examples:
  devmesh graph                       (Mermaid: paste it into a ```mermaid block on GitHub)
  devmesh graph --format tree
  devmesh graph --format dot | dot -Tsvg > mesh.svg
  devmesh graph --json""",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["mermaid", "dot", "tree"]),
    default="mermaid",
    show_default=True,
    help="Mermaid flowchart, Graphviz DOT, or a tree for the terminal.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the nodes and edges as JSON.")
@click.pass_context
def graph(ctx: click.Context, output_format: str, as_json: bool) -> None:
    """Draw the mesh: services, what depends on what, and which peer or remote serves them.

    A --> B means A depends on B. While the agent runs, each service shows its origin, health and
    version, a peer's dotted edge goes to each service it offers, a remote's to the service it backs,
    and the edges requests take right now are drawn thick (Mermaid, DOT) or marked "in use". Without a
    running agent the graph comes from the config alone, every state unknown.
    """
    from devmesh.observe.topology import Topology, to_dot, to_json, to_mermaid, to_tree, with_config

    document = _live_status(ctx)
    if document is None:
        loaded = _load_config(ctx)
        document = offline_document(loaded)
    else:
        config = _config_quietly(ctx)
        if config is not None:
            document = with_config(document, config_services(config))
    topology = Topology.from_status(document)
    if as_json:
        click.echo(to_json(topology))
    elif output_format == "dot":
        click.echo(to_dot(topology), nl=False)
    elif output_format == "tree":
        from rich.console import Console

        from devmesh.supervisor.logs import colour_enabled

        colour = colour_enabled(sys.stdout)
        console = Console(
            file=sys.stdout,
            force_terminal=colour,
            no_color=not colour,
            highlight=False,
            # In a terminal long lines wrap inside the tree; in a pipe or a file they are never cut.
            width=None if sys.stdout.isatty() else 10_000,
        )
        console.print(to_tree(topology))
    else:
        click.echo(to_mermaid(topology), nl=False)


def _live_status(ctx: click.Context) -> dict[str, Any] | None:
    """The running agent's status document, or None (with a note on stderr) when no agent runs."""
    from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
    from devmesh.agent.paths import StatePaths
    from devmesh.cli.main import _fail, _project_dir

    try:
        document: dict[str, Any] = AdminClient.for_project(StatePaths(_project_dir(ctx))).get(
            "/api/v1/status"
        )
    except AgentNotRunning as error:
        click.echo(f"{error}; the graph shows the config only", err=True)
        return None
    except AdminError as error:
        _fail(str(error))
    return document


def _load_config(ctx: click.Context) -> LoadedConfig:
    from devmesh.cli.main import _load

    return _load(ctx)


def _config_quietly(ctx: click.Context) -> LoadedConfig | None:
    """The config on disk, or None when it has errors (the running agent keeps its last good one)."""
    from devmesh.config import ConfigError, find_config, load_config

    options = ctx.obj
    try:
        path = find_config(explicit=options.config_file) if options.config_file else find_config()
        return load_config(path, env_name=options.env_name)
    except ConfigError:
        return None


def config_services(loaded: LoadedConfig) -> dict[str, dict[str, Any]]:
    """What the graph needs from each service of the config."""
    return {
        name: {"depends_on": list(spec.depends_on), "remote": spec.remote, "requires": spec.requires}
        for name, spec in loaded.config.services.items()
    }


def offline_document(loaded: LoadedConfig) -> dict[str, Any]:
    """A status document from the config alone: no agent, every state and health unknown."""
    services = []
    for name, spec in loaded.config.services.items():
        if spec.command is not None or spec.port is not None:
            origin = "local"
        elif spec.remote is not None and spec.requires is None:
            origin = "remote"
        else:
            origin = "peer"  # only `requires`: what a peer offers
        services.append(
            {
                "name": name,
                "origin": origin,
                "state": "unknown",
                "health": "unknown",
                "version": spec.version,
                "hosts": spec.hosts or [name],
                "depends_on": list(spec.depends_on),
                "remote": spec.remote,
                "requires": spec.requires,
                "pin": None,
            }
        )
    return {"mesh": loaded.mesh_name, "agent": None, "services": services, "peers": []}
