"""Merging devmesh's tasks into a user's tasks.json: their text kept, ours replaced, never twice."""

from __future__ import annotations

import pytest

from devmesh.editors.jsonc import parse
from devmesh.editors.vscode import (
    MANAGED_DETAIL,
    UP_BEGINS_PATTERN,
    UP_ENDS_PATTERN,
    TasksFileError,
    devmesh_tasks,
    merge_tasks,
)

USER_FILE = """// my build tasks
{
\t"version": "2.0.0",
\t/* keep me */
\t"tasks": [
\t\t// the build
\t\t{ "label": "build", "type": "shell", "command": "make" }, // same line
\t],
\t"inputs": [],
}
"""


def _labels(text: str) -> list[str]:
    return [task["label"] for task in parse(text).value["tasks"]]


def test_merges_into_a_commented_file_keeping_every_byte_of_the_users_text() -> None:
    merged = merge_tasks(USER_FILE, devmesh_tasks(["api"]))
    assert merged.changed
    assert _labels(merged.text) == [
        "build",
        "devmesh: up",
        "devmesh: down",
        "devmesh: status",
        "devmesh: logs api",
        "devmesh: restart api",
    ]
    for kept in ("// my build tasks", "/* keep me */", "// the build", "// same line", '"inputs": []'):
        assert kept in merged.text
    assert '{ "label": "build", "type": "shell", "command": "make" }' in merged.text
    assert '\n\t\t{\n\t\t\t"label": "devmesh: up"' in merged.text  # the file's tabs, not our spaces
    assert merge_tasks(merged.text, devmesh_tasks(["api"])).changed is False


def test_replaces_only_its_own_tasks_and_removes_those_of_gone_services() -> None:
    first = merge_tasks(USER_FILE, devmesh_tasks(["api", "web"])).text
    second = merge_tasks(first, devmesh_tasks(["api"], program=".venv/bin/devmesh"))
    assert second.removed == ["devmesh: logs web", "devmesh: restart web"]
    assert set(second.updated) == {
        "devmesh: up",
        "devmesh: down",
        "devmesh: status",
        "devmesh: logs api",
        "devmesh: restart api",
    }
    tasks = parse(second.text).value["tasks"]
    assert [task["command"] for task in tasks[1:]] == [".venv/bin/devmesh"] * 5
    assert tasks[0] == {"label": "build", "type": "shell", "command": "make"}


def test_a_users_own_task_with_our_label_wins_and_is_not_duplicated() -> None:
    text = '{"version": "2.0.0", "tasks": [{"label": "devmesh: up", "type": "shell", "command": "my-up"}]}'
    merged = merge_tasks(text, devmesh_tasks([]))
    assert merged.user_owned == ["devmesh: up"]
    assert _labels(merged.text) == ["devmesh: up", "devmesh: down", "devmesh: status"]
    assert parse(merged.text).value["tasks"][0]["command"] == "my-up"


def test_duplicated_managed_tasks_are_collapsed() -> None:
    once = merge_tasks(None, devmesh_tasks([])).text
    root = parse(once)
    tasks = root.member("tasks")
    assert tasks is not None
    first = tasks.value.items[0]
    doubled = once[: first.start] + once[first.start : first.end] + ", " + once[first.start :]
    merged = merge_tasks(doubled, devmesh_tasks([]))
    assert merged.removed == ["devmesh: up"]
    assert _labels(merged.text) == ["devmesh: up", "devmesh: down", "devmesh: status"]


def test_a_file_without_tasks_gets_them_and_a_new_file_is_complete() -> None:
    merged = merge_tasks('{\n  // settings only\n  "options": {"env": {"A": "1"}},\n}\n', devmesh_tasks([]))
    value = parse(merged.text).value
    assert value["version"] == "2.0.0" and value["options"] == {"env": {"A": "1"}}
    assert "// settings only" in merged.text
    assert merge_tasks(merged.text, devmesh_tasks([])).changed is False
    fresh = merge_tasks(None, devmesh_tasks(["api"]))
    assert parse(fresh.text).value["tasks"] == devmesh_tasks(["api"])
    assert parse(fresh.text).value["tasks"][0]["detail"] == MANAGED_DETAIL


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{\n  "tasks": [\n    {"label": "x"}\n    {"label": "y"}\n  ]\n}', "4:5: expected , or ]"),
        ("[]", "not an object"),
        ('{"tasks": {}}', '"tasks" is not a list'),
    ],
)
def test_a_file_that_cannot_be_merged_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(TasksFileError, match=message.replace("[", r"\[")):
        merge_tasks(text, devmesh_tasks([]))


def test_the_up_task_recognises_what_devmesh_up_prints() -> None:
    import re

    up = devmesh_tasks([])[0]
    background = up["problemMatcher"]["background"]
    assert background == {
        "activeBegin": True,
        "beginsPattern": UP_BEGINS_PATTERN,
        "endsPattern": UP_ENDS_PATTERN,
    }
    # As agent/runtime.py prints them, prefixed by the log sink (tests/integration/test_vscode.py checks a
    # real agent's output).
    assert re.search(UP_BEGINS_PATTERN, "devmesh | proxy on http://127.0.0.1:7080: services at ...")
    assert re.search(UP_ENDS_PATTERN, "devmesh | ready: 2 service(s) healthy in 0.41s")
    pattern = up["problemMatcher"]["pattern"]
    match = re.search(pattern["regexp"], "  /p/devmesh.toml:12: services.api.port: not a port")
    assert match is not None
    assert (match.group(pattern["file"]), match.group(pattern["line"]), match.group(pattern["message"])) == (
        "/p/devmesh.toml",
        "12",
        "services.api.port: not a port",
    )
