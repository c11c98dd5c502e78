"""The JSONC parser: comments, trailing commas, spans, and errors that name the line."""

from __future__ import annotations

import json

import pytest

from devmesh.editors.jsonc import JsoncError, parse

TEXT = """// header
{
  /* block */ "a": [1, 2,], // after
  "b": {"c": "x\\"y", "d": null,},
}
"""


def test_parses_comments_and_trailing_commas_with_spans() -> None:
    root = parse(TEXT)
    assert root.value == {"a": [1, 2], "b": {"c": 'x"y', "d": None}}
    array = root.member("a")
    assert array is not None
    assert TEXT[array.value.start : array.value.end] == "[1, 2,]"
    assert [TEXT[item.start : item.end] for item in array.value.items] == ["1", "2"]
    assert array.value.commas[1] is not None  # the trailing comma is known, to be removed or kept
    assert root.members[0].comma is not None and root.members[1].comma is not None


def test_agrees_with_json_on_plain_json() -> None:
    document = {"x": [1.5, -2e3, True, False, None, "é\\n", {"y": []}], "z": {}}
    assert parse(json.dumps(document, indent=2)).value == document


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected , or }"),
        ("{\n  /* never closed\n}", 2, 3, "never closed"),
        ('{"a": [1,,2]}', 1, 10, "expected a value"),
        ("{\n  a: 1}", 2, 3, 'expected a "key"'),
        ("[1] 2", 1, 5, "after the end"),
        ('{"a": "\\q"}', 1, 7, "escape"),
        ("[" * 300, 1, 202, "nested"),
    ],
)
def test_errors_name_line_and_column(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(JsoncError) as raised:
        parse(text)
    assert (raised.value.line, raised.value.column) == (line, column)
    assert message in raised.value.message
