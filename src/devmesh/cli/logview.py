"""`devmesh logs`: the services' log files, merged in time order, optionally followed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from devmesh.supervisor.logs import AGENT_LOG_NAME, colour_enabled, merged_tail, parse_line

_COLOURS = (36, 33, 32, 35, 34, 91, 96, 93, 92, 95, 94)
FOLLOW_POLL_S = 0.2


def show_logs(log_dir: Path, *, service: str | None, follow: bool, lines: int) -> int:
    files = {path.stem: path for path in sorted(log_dir.glob("*.log"))} if log_dir.is_dir() else {}
    if service is not None:
        if service not in files:
            known = ", ".join(name for name in files if name != AGENT_LOG_NAME) or "none yet"
            print(f"devmesh: no logs for {service!r} (services with logs: {known})", file=sys.stderr)
            return 2
        files = {service: files[service]}
    colour = colour_enabled(sys.stdout)
    width = max((len(name) for name in files), default=0)
    colour_of = {name: _COLOURS[index % len(_COLOURS)] for index, name in enumerate(files)}

    def emit(name: str, text: str) -> None:
        if service is not None:
            print(text)
            return
        prefix = f"{name:<{width}} | "
        if colour:
            prefix = f"\x1b[{colour_of.get(name, 37)}m{prefix}\x1b[0m"
        print(prefix + text)

    for _stamp, name, text in merged_tail(files, lines):
        emit(name, text)
    sys.stdout.flush()
    if not follow:
        return 0
    offsets = {name: path.stat().st_size for name, path in files.items()}
    partial = {name: "" for name in files}
    try:
        while True:
            if service is None:
                for path in log_dir.glob("*.log"):
                    if path.stem not in files:
                        files[path.stem] = path
                        offsets[path.stem] = 0
                        partial[path.stem] = ""
                        colour_of[path.stem] = _COLOURS[len(colour_of) % len(_COLOURS)]
                        width = max(width, len(path.stem))
            # Lines that arrived in several files since the last look are merged in time order.
            fresh: list[tuple[str, str, str]] = []
            for name, path in files.items():
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size < offsets[name]:  # rotated
                    offsets[name] = 0
                if size == offsets[name]:
                    continue
                with path.open("r", encoding="utf-8", errors="replace") as handle:
                    handle.seek(offsets[name])
                    chunk = handle.read()
                    offsets[name] = handle.tell()
                text = partial[name] + chunk
                *complete, partial[name] = text.split("\n")
                fresh.extend((*parse_line(raw), name) for raw in complete)
            for _stamp, text, name in sorted(fresh, key=lambda entry: entry[0]):
                emit(name, text)
            sys.stdout.flush()
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return 0
