"""Finding plugins: entry points in the group `devmesh.plugins` and `devmesh-NAME` programs on PATH.

Loading an entry point imports someone else's code, which may fail or be slow: nothing here loads one
unless it is asked for by name (`devmesh NAME`) or every plugin is being listed (`devmesh plugin list`).
`declared_names` answers "are there any, and what are they called" without importing a plugin and
without `importlib.metadata` (~35 ms of imports) when no installed distribution declares one, so
`devmesh --help` can name the plugins at the cost of a few directory listings.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from devmesh.plugins import ENTRY_POINT_GROUP, EXECUTABLE_PREFIX, HOOK_NAMES

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

Kind = Literal["command", "hooks", "executable", "unknown"]
Status = Literal["ok", "shadowed", "broken"]

# A plugin name is a command name: no path separators, nothing a shell or PATH lookup would interpret.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GROUP_HEADER = f"[{ENTRY_POINT_GROUP}]"


class PluginError(Exception):
    """A plugin could not be loaded or is not a plugin; the message names it and its source."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One plugin as `devmesh plugin list` shows it."""

    name: str
    kind: Kind
    source: str  # "distribution version" for an entry point, the program's path for an executable
    status: Status
    detail: str = ""  # why it is broken, or what shadows it

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "status": self.status,
            "detail": self.detail,
        }


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


# -- entry points -------------------------------------------------------------------------------------


def entry_points() -> list[EntryPoint]:
    """The group's entry points, first distribution on sys.path first (as importlib.metadata orders
    them); an empty list at once when no distribution declares the group."""
    if not _group_declared():
        return []
    from importlib.metadata import entry_points as all_entry_points

    return list(all_entry_points(group=ENTRY_POINT_GROUP))


def entry_point_source(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    if dist is None:
        return entry_point.value
    return f"{dist.name} {dist.version}"


def load_entry_point(entry_point: EntryPoint) -> tuple[Any, Kind]:
    """Import the entry point's object and say what kind of plugin it is; `PluginError` otherwise."""
    where = f"plugin {entry_point.name!r} ({entry_point.value} from {entry_point_source(entry_point)})"
    try:
        loaded = entry_point.load()
    except BaseException as error:  # an entry point may raise anything, SystemExit included
        raise PluginError(f"{where} failed to load: {type(error).__name__}: {error}") from error
    kind = kind_of(loaded)
    if kind == "unknown":
        raise PluginError(
            f"{where} is neither a click command nor an object with a hook "
            f"({', '.join(HOOK_NAMES)}); see docs/plugins.md"
        )
    return loaded, kind


def kind_of(loaded: object) -> Kind:
    import click

    if isinstance(loaded, click.Command):
        return "command"
    if any(callable(getattr(loaded, hook, None)) for hook in HOOK_NAMES):
        return "hooks"
    return "unknown"


def _group_declared() -> bool:
    """Whether any distribution on sys.path declares the group, from the entry_points.txt files alone."""
    return any(True for _ in _declared_entries())


def _declared_entries() -> Iterator[tuple[str, Path]]:
    """(name, metadata folder) of each entry point in the group, read from entry_points.txt directly."""
    for folder in sys.path:
        try:
            listing = os.scandir(folder or ".")
        except OSError:
            continue
        with listing:
            for item in listing:
                if not item.name.endswith((".dist-info", ".egg-info")):
                    continue
                try:
                    text = (Path(item.path) / "entry_points.txt").read_text(encoding="utf-8")
                except OSError:
                    continue
                if _GROUP_HEADER not in text:
                    continue
                for name in _names_in_group(text):
                    yield name, Path(item.path)


def _names_in_group(text: str) -> Iterator[str]:
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == _GROUP_HEADER
        elif inside and "=" in line and not line.startswith(("#", ";")):
            yield line.split("=", 1)[0].strip()


# -- executables on PATH ------------------------------------------------------------------------------


def executables() -> Iterator[tuple[str, Path]]:
    """(NAME, path) of every `devmesh-NAME` program on PATH, in PATH order (a name may come twice)."""
    seen_folders: set[str] = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or folder in seen_folders:
            continue
        seen_folders.add(folder)
        try:
            listing = os.scandir(folder)
        except OSError:
            continue
        with listing:
            found = sorted(
                (item.name, item.path) for item in listing if item.name.startswith(EXECUTABLE_PREFIX)
            )
        for file_name, path in found:
            name = file_name.removeprefix(EXECUTABLE_PREFIX)
            if valid_name(name) and os.path.isfile(path) and os.access(path, os.X_OK):
                yield name, Path(path)


def find_executable(name: str) -> Path | None:
    """The first `devmesh-NAME` program on PATH, or None (and None for a name that is not a command's)."""
    if not valid_name(name):
        return None
    for found, path in executables():
        if found == name:
            return path
    return None


# -- everything, for `plugin list` and `--help` -------------------------------------------------------


def declared_names(builtins: Collection[str]) -> list[tuple[str, str]]:
    """(name, where) of each plugin that `devmesh NAME` would run, without importing any: for `--help`."""
    names: dict[str, str] = {}
    for name, folder in _declared_entries():
        if name not in builtins and name not in names:
            names[name] = folder.name.removesuffix(".dist-info").removesuffix(".egg-info")
    for name, path in executables():
        if name not in builtins and name not in names:
            names[name] = str(path)
    return sorted(names.items())


def list_plugins(builtins: Collection[str]) -> list[PluginInfo]:
    """Every plugin found, each entry point loaded to learn its kind (and whether it loads at all)."""
    found: list[PluginInfo] = []
    winners: dict[str, str] = {name: "the built-in command" for name in builtins}
    for entry_point in entry_points():
        source = entry_point_source(entry_point)
        kind: Kind
        try:
            _, kind = load_entry_point(entry_point)
            problem = ""
        except PluginError as error:
            kind, problem = "unknown", str(error)
        found.append(_placed(entry_point.name, kind, source, problem, winners))
    for name, path in executables():
        found.append(_placed(name, "executable", str(path), "", winners))
    return found


def _placed(name: str, kind: Kind, source: str, problem: str, winners: dict[str, str]) -> PluginInfo:
    """The plugin's status given what came before it; records it as the winner of its name if it is.
    Only commands compete for a name: a hooks plugin runs in the agent whatever its name."""
    if problem:
        return PluginInfo(name, kind, source, "broken", problem)
    if kind == "hooks":
        return PluginInfo(name, kind, source, "ok")
    if name in winners:
        return PluginInfo(name, kind, source, "shadowed", f"`devmesh {name}` runs {winners[name]}")
    if not valid_name(name):
        return PluginInfo(name, kind, source, "broken", f"{name!r} is not a usable command name")
    winners[name] = f"{kind} plugin from {source}"
    return PluginInfo(name, kind, source, "ok")
