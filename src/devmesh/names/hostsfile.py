"""devmesh's marked blocks in a hosts file: find them, put one in, take them out — on text, no I/O.

A block belongs to one mesh (project) and looks like this:

    # >>> devmesh shop (managed by devmesh; remove with devmesh uninstall; project /home/me/shop) >>>
    127.0.0.1 shop.test api.shop.test web.shop.test
    # <<< devmesh shop <<<

The project folder on the first line tells apart two projects with the same mesh name (two folders
called `app`): `devmesh.names.changes` refuses to replace a block another project wrote with other
names. A block without it (written by an older devmesh) belongs to whichever project installs next.

Everything outside devmesh's blocks is the user's and comes back byte for byte: the text is decoded
with `surrogateescape` (a hosts file in another encoding survives), line endings are kept as they are
(CRLF on Windows), and a new block goes after the last line. When that last line has no line break,
devmesh adds one and says so inside the block, so that removing the block takes that line break away
again and the file is exactly what it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from devmesh.names.plan import NameSet

ENCODING = "utf-8"
ERRORS = "surrogateescape"
# Some resolvers read only the first few names of a line (Windows: 9); macOS and glibc have line limits.
NAMES_PER_LINE = 8
ADDED_LINE_BREAK_NOTE = "# (devmesh added the line break at the end of the line above this block)"

_BEGIN = re.compile(r"^# >>> devmesh (?P<mesh>\S+) \(managed by devmesh\b(?P<rest>.*)>>>\s*$")
_PROJECT = re.compile(r"; project (?P<project>.*)\)\s*$")
_END = re.compile(r"^# <<< devmesh (?P<mesh>\S+) <<<\s*$")


class HostsFileError(ValueError):
    """The hosts file has a devmesh block devmesh cannot safely change (edited by hand)."""


def begin_marker(mesh: str, project: str = "") -> str:
    recorded = f"; project {project}" if project else ""
    return f"# >>> devmesh {mesh} (managed by devmesh; remove with devmesh uninstall{recorded}) >>>"


def end_marker(mesh: str) -> str:
    return f"# <<< devmesh {mesh} <<<"


@dataclass(frozen=True, slots=True)
class Block:
    """Lines [start, end) of the file, the markers included."""

    mesh: str
    start: int
    end: int
    added_line_break: bool
    project: str = ""  # the project folder on the first line ("" when not recorded)
    body: tuple[str, ...] = ()  # the address lines, without line breaks


def decode(data: bytes) -> str:
    return data.decode(ENCODING, ERRORS)


def encode(text: str) -> bytes:
    return text.encode(ENCODING, ERRORS)


def find_blocks(text: str, *, where: str = "the hosts file") -> list[Block]:
    """Every devmesh block in `text`, in order; HostsFileError for one that is cut or nested."""
    lines = text.splitlines(keepends=True)
    blocks: list[Block] = []
    open_mesh: str | None = None
    open_line = 0
    open_project = ""
    note = False
    body: list[str] = []
    for number, line in enumerate(lines):
        content = line.rstrip("\r\n")
        begin = _BEGIN.match(content)
        end = _END.match(content)
        if begin:
            if open_mesh is not None:
                raise HostsFileError(
                    f"{where}: the devmesh block for {open_mesh!r} that starts on line {open_line + 1} "
                    f"has no end line before line {number + 1}; fix or delete it by hand"
                )
            open_mesh, open_line, note, body = begin.group("mesh"), number, False, []
            recorded = _PROJECT.search(begin.group("rest"))
            open_project = recorded.group("project") if recorded else ""
        elif end:
            if open_mesh is None or open_mesh != end.group("mesh"):
                raise HostsFileError(
                    f"{where}: line {number + 1} ends a devmesh block for {end.group('mesh')!r} that "
                    "never started; fix or delete it by hand"
                )
            blocks.append(Block(open_mesh, open_line, number + 1, note, open_project, tuple(body)))
            open_mesh = None
        elif open_mesh is not None and content == ADDED_LINE_BREAK_NOTE:
            note = True
        elif open_mesh is not None:
            body.append(content)
    if open_mesh is not None:
        raise HostsFileError(
            f"{where}: the devmesh block for {open_mesh!r} that starts on line {open_line + 1} never "
            f"ends (its last line should be {end_marker(open_mesh)!r}); fix or delete it by hand"
        )
    return blocks


def block_lines(names: NameSet, newline: str = "\n", *, added_line_break: bool = False) -> list[str]:
    """The block for `names`, one string per line, each ending with `newline`."""
    lines = [begin_marker(names.mesh, names.project)]
    if added_line_break:
        lines.append(ADDED_LINE_BREAK_NOTE)
    lines += body_lines(names)
    lines.append(end_marker(names.mesh))
    return [line + newline for line in lines]


def body_lines(names: NameSet) -> list[str]:
    """The address lines of the block for `names`, without line breaks."""
    return [
        f"{address} {' '.join(names.plain[first : first + NAMES_PER_LINE])}"
        for address in names.addresses
        for first in range(0, len(names.plain), NAMES_PER_LINE)
    ]


def from_another_project(block: Block, names: NameSet) -> bool:
    """True when `block` (of `names.mesh`) was written for another project folder than `names.project`.

    Unknown on either side (an older block, or names with no project) is not "another".
    """
    return bool(block.project and names.project and block.project != names.project)


def with_block(text: str, names: NameSet, *, where: str = "the hosts file") -> str:
    """`text` with the block for `names.mesh` put in: replaced where it is, else added at the end."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in text else "\n"
    blocks = [block for block in find_blocks(text, where=where) if block.mesh == names.mesh]
    if blocks:
        first = blocks[0]
        if len(blocks) == 1 and from_another_project(first, names) and first.body == tuple(body_lines(names)):
            # Another project with the same mesh name and the same names: they resolve already, and
            # rewriting the marker would make each project's install "update" it back and forth.
            return text
        new = block_lines(names, newline, added_line_break=first.added_line_break)
        # A second block for the same mesh (copied by hand, or from an interrupted in-place rewrite)
        # goes away: one mesh, one block.
        for extra in reversed(blocks[1:]):
            del lines[extra.start : extra.end]
        lines[first.start : first.end] = new
        return "".join(lines)
    added_line_break = bool(lines) and not lines[-1].endswith(("\n", "\r"))
    if added_line_break:
        lines[-1] += newline
    return "".join([*lines, *block_lines(names, newline, added_line_break=added_line_break)])


def without_blocks(
    text: str,
    mesh: str | None,
    *,
    where: str = "the hosts file",
    keep: Callable[[Block], bool] | None = None,
) -> str:
    """`text` without devmesh's block for `mesh` (every devmesh block when `mesh` is None); a block
    for which `keep` says True stays."""
    lines = text.splitlines(keepends=True)
    for block in reversed(find_blocks(text, where=where)):
        if (mesh is not None and block.mesh != mesh) or (keep is not None and keep(block)):
            continue
        at_end = block.end == len(lines)
        del lines[block.start : block.end]
        if block.added_line_break and at_end and lines:
            lines[-1] = lines[-1].rstrip("\r\n")
    return "".join(lines)


def meshes_in(text: str, *, where: str = "the hosts file") -> list[str]:
    """The meshes that have a block in `text`."""
    return [block.mesh for block in find_blocks(text, where=where)]
