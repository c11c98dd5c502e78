"""Where a key path is written in a TOML or YAML file: the line number, for error messages.

tomllib keeps no positions, so TOML is scanned line by line: table headers, dotted keys and inline tables
cover what devmesh configs use. YAML positions come from PyYAML's node marks.
"""

from __future__ import annotations

import re

KeyLines = dict[tuple[str, ...], int]

_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(
    r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="
)
_INLINE_KEY_RE = re.compile(
    r"\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="
)


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", text)
    return tuple(next(part for part in groups if part) if any(groups) else "" for groups in parts)


def toml_key_lines(text: str) -> KeyLines:
    """Map every key path written in a TOML document to its 1-based line."""
    lines: KeyLines = {}
    table: tuple[str, ...] = ()
    in_multiline_string = False
    for number, raw in enumerate(text.splitlines(), start=1):
        toggles = raw.count('"""') % 2 == 1 or raw.count("'''") % 2 == 1
        if in_multiline_string:
            in_multiline_string = not toggles
            continue  # inside a multi-line string nothing is a key, including its closing line
        in_multiline_string = toggles
        header = _HEADER_RE.match(raw)
        if header:
            table = _split_dotted(header.group(1))
            for depth in range(1, len(table) + 1):
                lines.setdefault(table[:depth], number)
            continue
        key = _KEY_RE.match(raw)
        if not key:
            continue
        path = table + _split_dotted(key.group(1))
        for depth in range(len(table) + 1, len(path) + 1):
            lines.setdefault(path[:depth], number)
        rest = raw[key.end() :]
        if "{" in rest:
            _inline_keys(rest, path, number, lines)
    return lines


def _inline_keys(rest: str, path: tuple[str, ...], number: int, lines: KeyLines) -> None:
    """Record the keys of inline tables (`health = { http = "/h", interval = "1s" }`) on `number`."""
    open_tables: list[tuple[str, ...]] = []
    current_key = path
    expect_key = False
    position = 0
    while position < len(rest):
        if expect_key:
            expect_key = False
            assignment = _INLINE_KEY_RE.match(rest, position)
            if assignment:
                current_key = open_tables[-1] + _split_dotted(assignment.group(1))
                lines.setdefault(current_key, number)
                position = assignment.end()
                continue
        char = rest[position]
        if char in "\"'":
            end = rest.find(char, position + 1)
            position = len(rest) if end < 0 else end + 1
            continue
        if char == "{":
            open_tables.append(current_key)
            expect_key = True
        elif char == "," and open_tables:
            expect_key = True
        elif char == "}" and open_tables:
            open_tables.pop()
        elif char == "#" and not open_tables:
            break
        position += 1


def yaml_key_lines(text: str) -> KeyLines:
    """Map every key path of a YAML mapping document to its 1-based line."""
    import yaml  # only YAML configs pay for it

    lines: KeyLines = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, str(key_node.value))
                lines.setdefault(child, key_node.start_mark.line + 1)
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault((*path, str(index)), item.start_mark.line + 1)
                walk(item, (*path, str(index)))

    if root is not None:
        walk(root, ())
    return lines


def find_line(lines: KeyLines, key_path: tuple[str, ...]) -> int | None:
    """The line of the longest prefix of `key_path` written in the file, or None."""
    for depth in range(len(key_path), 0, -1):
        line = lines.get(key_path[:depth])
        if line is not None:
            return line
    return None
