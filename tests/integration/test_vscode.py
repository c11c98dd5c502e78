"""`devmesh vscode` as a user runs it, and its `devmesh: up` task against a real agent's output."""

from __future__ import annotations

import json
import re

from devmesh.editors.jsonc import parse
from support import TINY_COMMAND, Project, devmesh, running_agent, wait_for

CONFIG = f"""
[mesh]
name = "editors"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.api]
command = "{TINY_COMMAND}"
health = {{ http = "/health", interval = "0.2s" }}
[services.db]
port = 5432
"""

USER_TASKS = """{
  // my own
  "version": "2.0.0",
  "tasks": [
    {"label": "build", "type": "shell", "command": "make"}, // the build
  ],
}
"""


def test_merges_idempotently_and_refuses_a_broken_file(project: Project) -> None:
    project.write(CONFIG)
    tasks = project.root / ".vscode" / "tasks.json"
    tasks.parent.mkdir()
    tasks.write_text(USER_TASKS, encoding="utf-8")
    first = devmesh("vscode", cwd=project.root)
    assert first.returncode == 0, first.stderr
    assert (
        "added devmesh: up, devmesh: down, devmesh: status, devmesh: logs api, devmesh: restart api"
        in first.stdout
    )
    text = tasks.read_text(encoding="utf-8")
    assert "// my own" in text and "// the build" in text
    labels = [task["label"] for task in parse(text).value["tasks"]]
    assert labels[0] == "build" and "devmesh: logs db" not in labels  # db is not supervised: no logs

    before = tasks.stat()
    again = devmesh("vscode", "--json", cwd=project.root)
    assert json.loads(again.stdout)["changed"] is False
    after = tasks.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even rewritten
    assert devmesh("vscode", "--check", cwd=project.root).returncode == 0

    broken = text.replace('"version": "2.0.0",', '"version": "2.0.0"', 1)
    tasks.write_text(broken, encoding="utf-8")
    refused = devmesh("vscode", cwd=project.root)
    assert refused.returncode == 2
    assert f"{tasks}:4:" in refused.stderr and "nothing was written" in refused.stderr
    assert tasks.read_text(encoding="utf-8") == broken
    assert [path.name for path in tasks.parent.iterdir()] == ["tasks.json"]  # no temporary left


def test_the_up_tasks_patterns_match_a_real_agents_output(project: Project) -> None:
    project.write(CONFIG.replace("[services.db]\nport = 5432\n", ""))
    assert devmesh("vscode", cwd=project.root).returncode == 0
    up = parse((project.root / ".vscode" / "tasks.json").read_text(encoding="utf-8")).value["tasks"][0]
    background = up["problemMatcher"]["background"]
    with running_agent(project) as agent:
        agent.wait_healthy()
        wait_for(lambda: re.search(background["endsPattern"], agent.log()), what="the ready line")
        lines = agent.log().splitlines()
    begins = [index for index, line in enumerate(lines) if re.search(background["beginsPattern"], line)]
    ends = [index for index, line in enumerate(lines) if re.search(background["endsPattern"], line)]
    assert len(begins) == 1 and len(ends) == 1 and begins[0] < ends[0]
