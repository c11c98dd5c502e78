"""VS Code tasks for a devmesh project, merged into the user's .vscode/tasks.json.

devmesh owns the tasks whose `detail` starts with `managed by devmesh`: it adds, updates and removes
those, and nothing else. The user's own tasks, settings and comments stay as they were, byte for byte:
the merge edits the text (`devmesh.editors.jsonc` gives every value's span) rather than writing a
re-serialised document. A user's task labelled like one of devmesh's (`devmesh: up`) but not marked wins:
devmesh writes none beside it. Running the merge twice changes nothing the second time.

`devmesh: up` is a background task whose problem matcher knows when the mesh is ready (the agent's
`ready: N service(s) healthy` line), so it can be a launch configuration's `preLaunchTask`; it also
turns config errors (`devmesh.toml:12: ...`) into entries of the Problems panel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from devmesh.editors.jsonc import JsoncError, Node, has_comment, line_and_column, parse

__all__ = [
    "MANAGED_DETAIL",
    "MANAGED_PREFIX",
    "TasksFileError",
    "TasksMerge",
    "devmesh_tasks",
    "merge_tasks",
]

MANAGED_PREFIX = "managed by devmesh"
MANAGED_DETAIL = f"{MANAGED_PREFIX}: `devmesh vscode` rewrites this task"
LABEL_PREFIX = "devmesh: "
TASKS_VERSION = "2.0.0"
_HEADER = (
    '// VS Code tasks. Those marked "managed by devmesh" are rewritten by `devmesh vscode`;\n'
    "// add your own beside them, they are kept.\n"
)

# What `devmesh up` prints (agent/runtime.py): the proxy line starts a run, `_announce_ready`'s line ends
# it. Matched anywhere in a line: the agent's lines carry a `devmesh | ` prefix (and colours on a tty).
UP_BEGINS_PATTERN = r"proxy on https?://"
UP_ENDS_PATTERN = r"ready: \d+ service\(s\) healthy"
# A config problem as devmesh prints it: `/path/devmesh.toml:12: services.api.port: ...`.
CONFIG_PROBLEM_PATTERN = r"(\S*devmesh[^\s:]*\.(?:toml|ya?ml)):(\d+):\s+(.*)$"


class TasksFileError(ValueError):
    """tasks.json cannot be merged into; the message names the line and says what is wrong."""


@dataclass
class TasksMerge:
    """The merged text and what changed; `text` is the original when `changed` is False."""

    text: str
    changed: bool
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    user_owned: list[str] = field(default_factory=list)  # our labels the user has tasks of their own for

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "user_owned": self.user_owned,
        }


def devmesh_tasks(
    services: Sequence[str], *, program: str = "devmesh", global_args: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The tasks devmesh manages: up, down, status, and logs and restart for each of `services`."""

    def task(label: str, args: Sequence[str], **extra: Any) -> dict[str, Any]:
        return {
            "label": LABEL_PREFIX + label,
            "detail": MANAGED_DETAIL,
            "type": "process",
            "command": program,
            "args": [*global_args, *args],
            "options": {"cwd": "${workspaceFolder}"},
            **extra,
        }

    tasks = [
        task(
            "up",
            ["up"],
            isBackground=True,
            problemMatcher={
                "owner": "devmesh",
                "source": "devmesh",
                "fileLocation": ["autoDetect", "${workspaceFolder}"],
                "pattern": {"regexp": CONFIG_PROBLEM_PATTERN, "file": 1, "line": 2, "message": 3},
                "background": {
                    "activeBegin": True,
                    "beginsPattern": UP_BEGINS_PATTERN,
                    "endsPattern": UP_ENDS_PATTERN,
                },
            },
            presentation={"panel": "dedicated", "reveal": "always"},
        ),
        task("down", ["down"], problemMatcher=[]),
        task("status", ["status"], problemMatcher=[]),
    ]
    for name in services:
        tasks.append(
            task(
                f"logs {name}",
                ["logs", name, "-f"],
                isBackground=True,
                problemMatcher=[],
                presentation={"panel": "dedicated", "reveal": "always"},
            )
        )
    for name in services:
        tasks.append(task(f"restart {name}", ["restart", name], problemMatcher=[]))
    return tasks


def is_managed(task: object) -> bool:
    return isinstance(task, dict) and str(task.get("detail", "")).startswith(MANAGED_PREFIX)


def merge_tasks(original: str | None, tasks: Sequence[dict[str, Any]]) -> TasksMerge:
    """`original` (tasks.json's text, None when there is none) with devmesh's tasks set to `tasks`."""
    wanted = {task["label"]: task for task in tasks}
    if original is None or not original.strip():
        document = {"version": TASKS_VERSION, "tasks": list(tasks)}
        text = _HEADER + json.dumps(document, indent=2) + "\n"
        return TasksMerge(text, True, added=list(wanted))
    try:
        root = parse(original)
    except JsoncError as error:
        raise TasksFileError(f"{error.line}:{error.column}: {error.message}") from None
    if not isinstance(root.value, dict):
        line, _ = line_and_column(original, root.start)
        raise TasksFileError(f"{line}: the document is not an object ({{ ... }})")
    member = root.member("tasks")
    if member is None:
        result = _with_tasks_member(original, root, tasks)
    else:
        if not isinstance(member.value.value, list):
            line, _ = line_and_column(original, member.value.start)
            raise TasksFileError(f'{line}: "tasks" is not a list ([ ... ])')
        result = _merged_array(original, member.value, member.key_start, wanted)
    _check(original, result, wanted)
    return result


def _merged_array(text: str, array: Node, key_start: int, wanted: dict[str, dict[str, Any]]) -> TasksMerge:
    indent_unit, key_indent = _indents(text, key_start)
    item_indent = _item_indent(text, array) or key_indent + indent_unit
    user_labels = {
        item.value.get("label")
        for item in array.items
        if isinstance(item.value, dict) and not is_managed(item.value)
    }
    merge = TasksMerge(text, False)
    merge.user_owned = [label for label in wanted if label in user_labels]
    pieces: list[tuple[str, str]] = []  # (the trivia before an item, the item's text)
    carried = ""  # comments that stood before a task devmesh removes: kept, before the next item
    emitted: set[str] = set()
    after_managed: int | None = None  # where new tasks of devmesh's go: after its last one
    segment_start = array.start + 1
    for item, comma in zip(array.items, array.commas, strict=True):
        lead = text[segment_start : item.start]
        segment_start = comma + 1 if comma is not None else item.end
        original_item = text[item.start : item.end]
        if not is_managed(item.value):
            pieces.append((carried + lead, original_item))
            carried = ""
            continue
        label = item.value.get("label")
        if label in wanted and label not in emitted and label not in user_labels:
            emitted.add(label)
            if item.value == wanted[label]:
                pieces.append((carried + lead, original_item))
            else:
                pieces.append((carried + lead, _render(wanted[label], indent_unit, item_indent)))
                merge.updated.append(label)
            carried = ""
            after_managed = len(pieces)
        else:
            merge.removed.append(str(label))
            if has_comment(lead):
                carried += lead
    new = [label for label in wanted if label not in emitted and label not in user_labels]
    position = after_managed if after_managed is not None else len(pieces)
    pieces[position:position] = [
        ("\n" + item_indent, _render(wanted[label], indent_unit, item_indent)) for label in new
    ]
    merge.added = new
    if not (merge.added or merge.updated or merge.removed):
        return merge
    tail = carried + text[segment_start : array.end - 1]
    if pieces and "\n" not in tail:
        tail = "\n" + key_indent + tail.lstrip(" \t")
    inner = ",".join(lead + item for lead, item in pieces) + tail
    merge.text = text[: array.start + 1] + inner + text[array.end - 1 :]
    merge.changed = merge.text != text
    return merge


def _with_tasks_member(text: str, root: Node, tasks: Sequence[dict[str, Any]]) -> TasksMerge:
    """A document without "tasks": the member added after the last one (and "version" if missing)."""
    unit = "  "
    if root.members:
        unit = _indents(text, root.members[0].key_start)[1] or unit  # a top-level key: one level deep
    added: list[tuple[str, Any]] = []
    if root.member("version") is None:
        added.append(("version", TASKS_VERSION))
    added.append(("tasks", list(tasks)))
    members = ",".join(f"\n{unit}{json.dumps(key)}: {_render(value, unit, unit)}" for key, value in added)
    if not root.members:
        position, insertion = root.start + 1, members + "\n"
    else:
        last = root.members[-1]
        if last.comma is not None:
            position, insertion = last.comma + 1, members
        else:
            position, insertion = last.value.end, "," + members
    merged = text[:position] + insertion + text[position:]
    return TasksMerge(merged, True, added=[task["label"] for task in tasks])


def _indents(text: str, offset: int) -> tuple[str, str]:
    """(one level of indentation, the indentation of the line at `offset`), guessed from the file."""
    line_start = text.rfind("\n", 0, offset) + 1
    line_indent = text[line_start:offset]
    if line_indent.strip():
        line_indent = ""  # the key does not start its line: no indentation to follow
    unit = "\t" if line_indent.startswith("\t") else (line_indent if line_indent else "  ")
    return unit, line_indent


def _item_indent(text: str, array: Node) -> str:
    """The indentation of the array's first item when it starts a line, else ""."""
    if not array.items:
        return ""
    first = array.items[0].start
    line_start = text.rfind("\n", 0, first) + 1
    indent = text[line_start:first]
    return indent if indent and not indent.strip() else ""


def _render(value: Any, unit: str, indent: str) -> str:
    """`value` as JSON, indented by `unit` per level, its lines after the first starting at `indent`."""
    lines = json.dumps(value, indent=unit).split("\n")
    return "\n".join([lines[0], *(indent + line for line in lines[1:])])


def _check(original: str, merge: TasksMerge, wanted: dict[str, dict[str, Any]]) -> None:
    """The merged text parses, holds every user task unchanged and devmesh's exactly: else nothing is
    written (an error here is a devmesh bug, reported as such)."""
    if not merge.changed:
        return
    before = parse(original).value.get("tasks", [])
    after = parse(merge.text).value
    user_before = [task for task in before if not is_managed(task)]
    user_after = [task for task in after["tasks"] if not is_managed(task)]
    ours = {task["label"]: task for task in after["tasks"] if is_managed(task)}
    expected = {label: task for label, task in wanted.items() if label not in merge.user_owned}
    if (
        user_before != user_after
        or ours != expected
        or len(ours) != len([task for task in after["tasks"] if is_managed(task)])
    ):
        raise RuntimeError("devmesh vscode: the merge went wrong (a devmesh bug); nothing was written")
