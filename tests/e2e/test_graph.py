"""`devmesh graph` as a user runs it: from the config alone, then live from a running agent (and a peer)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from support import TINY_COMMAND, Project, devmesh, free_port, running_agent, wait_for

HEALTH = '{ http = "/health", interval = "0.2s" }'


def config(remote_port: int) -> str:
    return f"""
[mesh]
name = "graphs"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.db]
command = "{TINY_COMMAND}"
version = "15.0"
health = {HEALTH}
[services.api]
command = "{TINY_COMMAND}"
version = "1.4.2"
depends_on = ["db"]
health = {HEALTH}
[services.web]
command = "{TINY_COMMAND}"
version = "1.0.0"
depends_on = ["api"]
health = {HEALTH}
[services.legacy]
remote = "http://127.0.0.1:{remote_port}"
"""


def nodes_and_edges(document: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    return {node["id"]: node for node in document["nodes"]}, document["edges"]


def test_without_an_agent_the_graph_comes_from_the_config(project: Project) -> None:
    remote_port = free_port()
    project.write(config(remote_port))

    mermaid = devmesh("graph", cwd=project.root)
    assert mermaid.returncode == 0, mermaid.stderr
    assert "not running" in mermaid.stderr
    lines = mermaid.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    assert '  api["api<br/>local · unknown · 1.4.2"]' in lines
    assert "  api --> db" in lines and "  web --> api" in lines
    assert f'  remote_legacy{{{{"remote<br/>http://127.0.0.1:{remote_port}"}}}}' in lines
    assert '  remote_legacy -.->|"fallback"| legacy' in lines
    assert not any(line.startswith("  linkStyle") for line in lines), "nothing is known to be in use"

    as_json = devmesh("graph", "--json", cwd=project.root)
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["online"] is False
    nodes, edges = nodes_and_edges(document)
    assert set(nodes) == {"db", "api", "web", "legacy", "remote/legacy"}
    assert {(n["state"], n["health"]) for n in nodes.values() if n["kind"] == "service"} == {
        ("unknown", "unknown")
    }
    assert {(e["source"], e["target"], e["kind"]) for e in edges} == {
        ("api", "db", "depends_on"),
        ("web", "api", "depends_on"),
        ("remote/legacy", "legacy", "fallback"),
    }

    dot = devmesh("graph", "--format", "dot", cwd=project.root)
    assert dot.returncode == 0
    assert dot.stdout.startswith("digraph devmesh {") and dot.stdout.rstrip().endswith("}")
    assert '"web" -> "api";' in dot.stdout

    # From a subfolder, like every command; the tree puts what nothing depends on first.
    sub = project.root / "src"
    sub.mkdir()
    tree = devmesh("graph", "--format", "tree", cwd=sub)
    assert tree.returncode == 0, tree.stderr
    rows = [re.sub(r"^[│├└─\s]+", "", line) for line in tree.stdout.splitlines()]
    assert rows[0].startswith("mesh graphs") and "from the config" in rows[0]
    assert [row.split()[0] for row in rows[1:]] == ["web", "api", "db", "legacy", "⇠"]
    assert rows[1].startswith("web  local · unknown · 1.0.0")


def test_usage_and_config_errors_exit_2(project: Project) -> None:
    project.write(config(free_port()))
    wrong = devmesh("graph", "--format", "svg", cwd=project.root)
    assert wrong.returncode == 2 and "svg" in wrong.stderr
    project.write('[services.api]\ncommand = "x"\ndepends_on = ["nope"]\n')
    broken = devmesh("graph", cwd=project.root)
    assert broken.returncode == 2 and "nope" in broken.stderr
    help_text = devmesh("graph", "--help", cwd=project.root)
    assert help_text.returncode == 0 and "devmesh graph --format tree" in help_text.stdout


def test_with_an_agent_the_graph_shows_health_and_where_requests_go(project: Project) -> None:
    remote_port = free_port()
    project.write(config(remote_port))
    with running_agent(project) as agent:
        agent.wait_healthy("db", "api", "web")

        document = json.loads(devmesh("graph", "--json", cwd=project.root).stdout)
        assert document["online"] is True and document["mesh"] == "graphs"
        nodes, edges = nodes_and_edges(document)
        assert (nodes["api"]["health"], nodes["api"]["serving"], nodes["api"]["version"]) == (
            "healthy",
            "local",
            "1.4.2",
        )
        assert nodes["api"]["url"] == agent.service("api")["url"]
        # Nothing runs `legacy` here: requests go to its remote.
        assert nodes["legacy"]["serving"] == "remote"
        (fallback,) = [e for e in edges if e["kind"] == "fallback"]
        assert fallback["source"] == "remote/legacy" and fallback["active"] is True

        mermaid = devmesh("graph", cwd=project.root)
        assert mermaid.returncode == 0 and mermaid.stderr == ""
        lines = mermaid.stdout.splitlines()
        assert '  api["api<br/>local · healthy · 1.4.2"]' in lines
        assert "  class db,api,web healthy" in lines
        assert '  remote_legacy -.->|"fallback · in use"| legacy' in lines
        edge_lines = [
            line for line in lines if not line.startswith("  %%") and ("-->" in line or "-.->" in line)
        ]
        index = edge_lines.index('  remote_legacy -.->|"fallback · in use"| legacy')
        assert f"  linkStyle {index} stroke:#1a7f37,stroke-width:3px" in lines

        tree = devmesh("graph", "--format", "tree", cwd=project.root).stdout
        assert "live" in tree.splitlines()[0]
        assert "api  local · healthy · 1.4.2" in tree
        assert f"⇠ remote http://127.0.0.1:{remote_port}  fallback · in use" in tree

        # A stopped service shows as such, live.
        assert devmesh("stop", "web", cwd=project.root).returncode == 0
        wait_for(lambda: agent.service("web")["state"] == "stopped", what="web stopped")
        lines = devmesh("graph", cwd=project.root).stdout.splitlines()
        assert '  web["web<br/>local · stopped · 1.0.0"]' in lines
        assert "  class web,legacy stopped" in lines  # legacy: nothing runs it here


def _project_in(root: Path, name: str) -> Project:
    folder = root / name
    folder.mkdir()
    return Project(folder.resolve())


def test_a_peer_that_serves_a_service_is_drawn_with_a_dotted_edge(tmp_path: Path) -> None:
    mesh_port = free_port()
    alice, bob = _project_in(tmp_path, "alice"), _project_in(tmp_path, "bob")
    alice.write(
        f"""
[mesh]
name = "graph-team"
secret = "s3cret"
share = true
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
mesh = "127.0.0.1:{mesh_port}"
[peers]
discovery = "off"
[services.payments]
command = "{TINY_COMMAND}"
version = "2.1.0"
health = {HEALTH}
"""
    )
    bob.write(
        f"""
[mesh]
name = "graph-team"
secret = "s3cret"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
mesh = "127.0.0.1:{free_port()}"
[peers]
static = ["127.0.0.1:{mesh_port}"]
discovery = "off"
[services.web]
command = "{TINY_COMMAND}"
health = {HEALTH}
"""
    )
    with running_agent(alice) as offering, running_agent(bob) as following:
        offering.wait_healthy("payments")
        following.wait_healthy("web")
        wait_for(
            lambda: any(
                s["name"] == "payments" and s["health"] == "healthy" for s in following.status()["services"]
            ),
            timeout=10,
            what="alice's payments in bob's mesh",
        )
        peer_id = following.status()["peers"][0]["peer"]

        document = json.loads(devmesh("graph", "--json", cwd=bob.root).stdout)
        nodes, edges = nodes_and_edges(document)
        peer = nodes[f"peer/{peer_id}"]
        assert (
            peer["kind"] == "peer"
            and peer["state"] == "alive"
            and peer["address"] == f"127.0.0.1:{mesh_port}"
        )
        assert nodes["payments"]["origin"] == "peer" and nodes["payments"]["serving"] == "peer"
        (served,) = [e for e in edges if e["kind"] == "serves"]
        assert (served["source"], served["target"], served["version"], served["active"]) == (
            f"peer/{peer_id}",
            "payments",
            "2.1.0",
            True,
        )

        lines = devmesh("graph", cwd=bob.root).stdout.splitlines()
        mermaid_id = "peer_" + re.sub(r"[^A-Za-z0-9_]", "_", peer_id)
        assert f'  {mermaid_id}[("peer {peer_id}<br/>127.0.0.1:{mesh_port}")]' in lines
        assert f'  {mermaid_id} -.->|"2.1.0 · in use"| payments' in lines
