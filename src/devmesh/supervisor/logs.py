"""Merged, coloured, prefixed service logs on the terminal (like docker compose), and a file per service.

Each line in a service's file starts with an ISO-8601 UTC timestamp, so `devmesh logs` can merge the files
of several services in order and follow them all. devmesh's own records (service started, crashed, peer
joined...) are structured: one JSON object per line in `devmesh.log`, with a level and a component, and
`DEVMESH_LOG` sets the level per component (`DEVMESH_LOG=warning,peers=debug`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO

from devmesh import const

_COLOURS = (36, 33, 32, 35, 34, 91, 96, 93, 92, 95, 94)
AGENT_LOG_NAME = "devmesh"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
COMPONENTS = (
    "agent",
    "config",
    "supervisor",
    "health",
    "proxy",
    "peers",
    "admin",
    "docker",
    "kubernetes",
    "plugins",
)


class LogLevelError(ValueError):
    """DEVMESH_LOG names a level or component that does not exist."""


def parse_levels(spec: str | None) -> dict[str, int]:
    """`DEVMESH_LOG`: a default level and per-component ones, e.g. `warning,peers=debug`. Returns the
    threshold per component ("*" for the default)."""
    levels = {"*": LEVELS["info"]}
    for part in (spec or "").split(","):
        part = part.strip().lower()
        if not part:
            continue
        component, _, level = part.rpartition("=")
        if level not in LEVELS:
            raise LogLevelError(
                f"DEVMESH_LOG: {level!r} is not a level (use {', '.join(LEVELS)}, e.g. DEVMESH_LOG=warning,peers=debug)"
            )
        if component and component not in COMPONENTS:
            raise LogLevelError(
                f"DEVMESH_LOG: {component!r} is not a component (use {', '.join(COMPONENTS)})"
            )
        levels[component or "*"] = LEVELS[level]
    return levels


_TIMESTAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) (.*)$")


def colour_enabled(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogSink:
    """Where every line a service prints goes: the terminal (prefixed) and the service's log file."""

    def __init__(
        self,
        log_dir: Path,
        *,
        terminal: TextIO | None = None,
        colour: bool | None = None,
        levels: dict[str, int] | None = None,
        json_terminal: bool = False,
    ) -> None:
        self._log_dir = log_dir
        self._levels = levels if levels is not None else {"*": LEVELS["info"]}
        self._json_terminal = json_terminal
        self._terminal = terminal if terminal is not None else sys.stdout
        self._colour = colour_enabled(self._terminal) if colour is None else colour
        self._files: dict[str, IO[str]] = {}
        self._colour_of: dict[str, int] = {}
        self._width = len(AGENT_LOG_NAME)
        log_dir.mkdir(parents=True, exist_ok=True)

    def register(self, name: str) -> None:
        """Reserve a colour and a column width for a service."""
        if name not in self._colour_of:
            self._colour_of[name] = _COLOURS[len(self._colour_of) % len(_COLOURS)]
        self._width = max(self._width, len(name))

    def line(self, name: str, text: str) -> None:
        """One line of a service's output."""
        text = text.rstrip("\r\n")
        self._file(name).write(f"{_now()} {text}\n")
        self._echo(name, text)

    def agent(
        self, text: str, *, component: str = "agent", level: str = "info", event: str = "", **fields: object
    ) -> None:
        """A record from devmesh itself (service started, crashed, config reloaded...): `text` for people,
        `event` and `fields` for machines."""
        if LEVELS[level] < self._levels.get(component, self._levels["*"]):
            return
        record: dict[str, object] = {"time": _now(), "level": level, "component": component}
        if event:
            record["event"] = event
        record.update(fields)
        record["message"] = text
        line = json.dumps(record, default=str)
        self._file(AGENT_LOG_NAME).write(line + "\n")
        if self._json_terminal:
            self._echo(AGENT_LOG_NAME, line)
        else:
            self._echo(AGENT_LOG_NAME, text if level == "info" else f"{level}: {text}")

    def access(self, line: str) -> None:
        """An access log line, when the access log goes to the terminal."""
        self._echo("access", line)

    def flush(self) -> None:
        for handle in self._files.values():
            handle.flush()
        self._terminal.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def _echo(self, name: str, text: str) -> None:
        prefix = f"{name:<{self._width}} | "
        if self._colour:
            code = 1 if name == AGENT_LOG_NAME else self._colour_of.get(name, 37)
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        try:
            self._terminal.write(prefix + text + "\n")
            self._terminal.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not stop the services

    def _file(self, name: str) -> IO[str]:
        handle = self._files.get(name)
        if handle is None:
            path = log_path(self._log_dir, name)
            if path.exists() and path.stat().st_size > const.LOG_FILE_MAX_BYTES:
                path.replace(path.with_suffix(".log.1"))
            handle = path.open("a", encoding="utf-8", buffering=1, errors="replace")
            self._files[name] = handle
        return handle


def log_path(log_dir: Path, name: str) -> Path:
    return log_dir / f"{name}.log"


def parse_line(raw: str) -> tuple[str, str]:
    """(timestamp, text) of a log file line (a service's line, or one of devmesh's JSON records); lines
    without a timestamp sort first."""
    if raw.startswith('{"time": "'):
        try:
            record = json.loads(raw)
            return (str(record["time"]), str(record["message"]))
        except (ValueError, KeyError, TypeError):
            pass
    match = _TIMESTAMP_RE.match(raw.rstrip("\n"))
    if match is None:
        return ("", raw.rstrip("\n"))
    return (match.group(1), match.group(2))


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a file, read from its end."""
    if count <= 0 or not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = 64 * 1024
        data = b""
        position = size
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def merged_tail(files: dict[str, Path], count: int) -> Iterator[tuple[str, str, str]]:
    """The last `count` lines of several services' files as (timestamp, service, text), in time order."""
    entries: list[tuple[str, str, str]] = []
    for name, path in files.items():
        for raw in tail_lines(path, count):
            stamp, text = parse_line(raw)
            entries.append((stamp, name, text))
    entries.sort(key=lambda entry: entry[0])
    yield from entries[-count:]
