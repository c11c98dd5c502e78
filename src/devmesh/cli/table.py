"""Plain column tables for the terminal, like `docker compose ps` and `kubectl get`.

Hand-written rather than rich's, whose import alone costs a third of `devmesh status`'s time budget.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TextIO

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
COLOURS = {"green": 32, "red": 31, "yellow": 33, "dim": 2, "bold": 1}


def paint(text: str, colour: str | None, enabled: bool) -> str:
    if not enabled or colour is None or not text:
        return text
    return f"\x1b[{COLOURS[colour]}m{text}\x1b[0m"


def visible_len(text: str) -> int:
    return len(_ANSI_RE.sub("", text))


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *, colour: bool) -> str:
    """Columns left-aligned and separated by three spaces; headers upper-case (bold with colour)."""
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], visible_len(cell))
    lines = []
    header_cells = [
        paint(header.upper().ljust(widths[i]), "bold", colour) for i, header in enumerate(headers)
    ]
    lines.append("   ".join(header_cells).rstrip())
    for row in rows:
        cells = [cell + " " * (widths[i] - visible_len(cell)) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    stream: TextIO | None = None,
    colour: bool | None = None,
) -> None:
    stream = stream if stream is not None else sys.stdout
    if colour is None:
        from devmesh.supervisor.logs import colour_enabled

        colour = colour_enabled(stream)
    stream.write(render(headers, rows, colour=colour) + "\n")
