"""JSON with comments and trailing commas (VS Code's JSONC), parsed with the position of every value.

Editors keep the user's settings in JSONC files. To change a part of such a file without losing the
user's comments and layout elsewhere, a change is made to the text: the parser gives each value its
span (`start`, `end`) and each array item or object member the comma that follows it, and the caller
splices new text into the old. Values themselves are plain Python (dict, list, str, int, float, bool,
None), as `json.loads` gives them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JsoncError", "Member", "Node", "line_and_column", "parse"]

_MAX_DEPTH = 200  # nesting beyond this is refused, not recursed into
_STRING_RE = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*"', re.DOTALL)
_SCALAR_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")


class JsoncError(ValueError):
    """The text is not JSONC; `line` and `column` (1-based) say where."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(f"line {line}, column {column}: {message}")


@dataclass(slots=True)
class Member:
    """One `"key": value` of an object; `comma` is the offset of the comma after it, if any."""

    key: str
    key_start: int
    value: Node
    comma: int | None = None


@dataclass(slots=True)
class Node:
    """A value and its span `text[start:end]`; objects have `members`, arrays `items` and `commas`."""

    start: int
    end: int
    value: Any
    members: list[Member] = field(default_factory=list)
    items: list[Node] = field(default_factory=list)
    commas: list[int | None] = field(default_factory=list)  # per item: the comma after it

    def member(self, key: str) -> Member | None:
        """The last member named `key` (as JSON parsers, VS Code's included, let the last one win)."""
        found = [member for member in self.members if member.key == key]
        return found[-1] if found else None


def line_and_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def parse(text: str) -> Node:
    """The document's root value with positions; `JsoncError` names the line and column of a fault."""
    parser = _Parser(text)
    root = parser.value(0)
    parser.skip()
    if parser.pos != len(text):
        parser.fail("unexpected text after the end of the document")
    return root


def has_comment(text: str) -> bool:
    """Whether the trivia `text` (whitespace and comments only) holds a comment."""
    return "//" in text or "/*" in text


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, offset: int | None = None) -> None:
        line, column = line_and_column(self.text, self.pos if offset is None else offset)
        raise JsoncError(message, line, column)

    def skip(self) -> None:
        """Past whitespace and comments."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n\ufeff":
                self.pos += 1
            elif text.startswith("//", self.pos):
                newline = text.find("\n", self.pos)
                self.pos = len(text) if newline < 0 else newline + 1
            elif text.startswith("/*", self.pos):
                close = text.find("*/", self.pos + 2)
                if close < 0:
                    self.fail("a /* comment is never closed")
                self.pos = close + 2
            else:
                return

    def value(self, depth: int) -> Node:
        self.skip()
        if self.pos >= len(self.text):
            self.fail("the document ends where a value was expected")
        if depth > _MAX_DEPTH:
            self.fail(f"nested more than {_MAX_DEPTH} levels deep")
        char = self.text[self.pos]
        if char == "{":
            return self._object(depth)
        if char == "[":
            return self._array(depth)
        start = self.pos
        match = (_STRING_RE if char == '"' else _SCALAR_RE).match(self.text, self.pos)
        if match is None:
            self.fail("expected a value (a string, number, object, array, true, false or null)")
        assert match is not None
        try:
            value = json.loads(match.group(0))
        except ValueError:
            self.fail("this string has a bad escape sequence")
        self.pos = match.end()
        return Node(start, self.pos, value)

    def _object(self, depth: int) -> Node:
        start = self.pos
        self.pos += 1
        members: list[Member] = []
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                break
            key_start = self.pos
            if not self.text.startswith('"', self.pos):
                self.fail('expected a "key" in double quotes, or }')
            key = self.value(depth + 1)
            self.skip()
            if not self.text.startswith(":", self.pos):
                self.fail("expected : after the key")
            self.pos += 1
            member = Member(key.value, key_start, self.value(depth + 1))
            members.append(member)
            self.skip()
            if self.text.startswith(",", self.pos):
                member.comma = self.pos
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                self.fail("expected , or } after the value")
        value = {member.key: member.value.value for member in members}
        return Node(start, self.pos, value, members=members)

    def _array(self, depth: int) -> Node:
        start = self.pos
        self.pos += 1
        items: list[Node] = []
        commas: list[int | None] = []
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                break
            items.append(self.value(depth + 1))
            commas.append(None)
            self.skip()
            if self.text.startswith(",", self.pos):
                commas[-1] = self.pos
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                self.fail("expected , or ] after the value")
        return Node(start, self.pos, [item.value for item in items], items=items, commas=commas)
