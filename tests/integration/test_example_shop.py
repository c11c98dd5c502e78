"""`devmesh up` on the example shop, as the demo runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

from support import Project, running_agent

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


def test_the_example_comes_up_healthy_in_dependency_order(project: Project) -> None:
    shutil.copytree(SHOP, project.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".devmesh"))
    # A personal overlay, as a developer would write one: another admin port, nothing else changed.
    project.write('[proxy]\nadmin = "127.0.0.1:0"\nlisten = "127.0.0.1:0"\n', name="devmesh.local.toml")
    with running_agent(project) as agent:
        document = agent.wait_healthy(timeout=20)
        services = {entry["name"]: entry for entry in document["services"]}
        assert set(services) == {"payments", "api", "events", "web"}
        assert services["api"]["version"] == "1.4.2"
        log = agent.log()
        assert log.index("payments started") < log.index("api started") < log.index("web started")
        assert log.index("events started") < log.index("web started")
