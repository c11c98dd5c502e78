"""The topology behind `devmesh graph`: built from status documents, rendered as Mermaid, DOT, a tree, JSON."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from devmesh.observe.topology import (
    Topology,
    dot_quote,
    mermaid_ids,
    mermaid_text,
    to_dot,
    to_json,
    to_mermaid,
    to_tree,
    with_config,
)


def service(name: str, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "origin": "local",
        "state": "running",
        "health": "healthy",
        "pid": 1,
        "port": 3000,
        "url": f"http://{name}.localhost:7080",
        "version": "1.0.0",
        "hosts": [name],
        "restarts": 0,
        "detail": None,
        "depends_on": [],
        "requires": None,
        "remote": None,
        "pin": None,
    }
    entry.update(fields)
    return entry


def endpoint(
    origin: str, *, healthy: bool = True, peer: str | None = None, version: str | None = None
) -> dict[str, Any]:
    address = {"local": "127.0.0.1:3000", "peer": "10.0.0.5:7090", "remote": "api.staging.shop.dev:443"}[
        origin
    ]
    return {"address": address, "origin": origin, "peer": peer, "version": version, "healthy": healthy}


AGENT: dict[str, Any] = {
    "pid": 1,
    "config": "/p/devmesh.toml",
    "files": [],
    "admin": "127.0.0.1:7070",
    "revision": 3,
}
BOB: dict[str, Any] = {
    "peer": "bob-1a2b3c",
    "address": "10.0.0.5:7090",
    "alive": True,
    "latency_ms": 0.4,
    "services": [{"name": "payments", "version": "2.1.0", "healthy": True}],
    "error": None,
}


def shop(**overrides: Any) -> dict[str, Any]:
    """The example shop, live: payments is not running here and bob serves it; api has a remote."""
    services = {
        "web": service("web", depends_on=["api", "events"], endpoints=[endpoint("local")]),
        "api": service(
            "api",
            version="1.4.2",
            depends_on=["payments"],
            remote="https://api.staging.shop.dev",
            endpoints=[endpoint("local"), endpoint("remote")],
        ),
        "events": service("events", version="0.3.0", endpoints=[endpoint("local")]),
        "payments": service(
            "payments",
            state="stopped",
            health="unknown",
            version="2.1.0",
            pid=None,
            endpoints=[endpoint("peer", peer="bob-1a2b3c", version="2.1.0")],
        ),
    }
    for name, fields in overrides.items():
        services[name] = {**services[name], **fields}
    return {"mesh": "shop", "agent": AGENT, "services": list(services.values()), "peers": [BOB]}


def offline() -> dict[str, Any]:
    return {
        "mesh": "shop",
        "agent": None,
        "services": [
            service("web", state="unknown", health="unknown", depends_on=["api"]),
            service("api", state="unknown", health="unknown", remote="https://api.staging.shop.dev"),
        ],
        "peers": [],
    }


# -- the model ------------------------------------------------------------------------------------------


def test_services_dependencies_peers_and_remotes_become_nodes_and_edges() -> None:
    topology = Topology.from_status(shop())
    assert [n.id for n in topology.nodes] == [
        "web",
        "api",
        "events",
        "payments",
        "peer/bob-1a2b3c",
        "remote/api",
    ]
    assert topology.dependencies("web") == ["api", "events"]
    assert topology.dependents("payments") == ["api"]
    (served,) = topology.providers("payments")
    assert (served.source, served.kind, served.version, served.active) == (
        "peer/bob-1a2b3c",
        "serves",
        "2.1.0",
        True,
    )
    (fallback,) = topology.providers("api")
    assert (fallback.source, fallback.kind, fallback.active) == ("remote/api", "fallback", False)
    assert topology.node("api").serving == "local"
    assert topology.node("payments").serving == "peer"
    assert topology.node("remote/api").url == "https://api.staging.shop.dev"


def test_the_remote_is_in_use_when_nothing_local_or_at_a_peer_answers() -> None:
    topology = Topology.from_status(
        shop(api={"health": "unhealthy", "endpoints": [endpoint("local", healthy=False), endpoint("remote")]})
    )
    assert topology.node("api").serving == "remote"
    assert [e.active for e in topology.providers("api")] == [True]
    assert topology.providers("api")[0].label == "fallback · in use"


def test_nothing_answers_when_a_pin_leaves_no_endpoint() -> None:
    topology = Topology.from_status(shop(payments={"pin": "peer=carol-000000", "endpoints": []}))
    assert topology.node("payments").serving == "none"
    assert topology.node("payments").pin == "peer=carol-000000"
    # bob still offers payments, but the agent does not route to him (the pin): shown, not used.
    (offer,) = topology.providers("payments")
    assert offer.note == "not used" and not offer.active


def test_without_an_agent_everything_is_unknown_and_nothing_is_in_use() -> None:
    topology = Topology.from_status(offline())
    assert not topology.online
    assert {(n.state, n.health, n.serving) for n in topology.services} == {("unknown", "unknown", None)}
    assert not any(edge.active for edge in topology.edges)
    assert topology.node("web").condition == "unknown"


def test_a_status_without_the_new_fields_takes_them_from_the_config() -> None:
    old: dict[str, Any] = {
        "mesh": "shop",
        "agent": AGENT,
        "services": [
            {k: v for k, v in service("web").items() if k not in ("depends_on", "remote", "requires", "pin")},
            {
                k: v
                for k, v in service("api", health="unhealthy").items()
                if k not in ("depends_on", "remote", "pin")
            },
        ],
        "peers": [],
    }
    config: dict[str, dict[str, Any]] = {
        "web": {"depends_on": ["api"], "remote": None, "requires": None},
        "api": {"depends_on": [], "remote": "https://api.staging.shop.dev", "requires": ">=1.4"},
    }
    merged = with_config(old, config)
    assert old["services"][0].get("depends_on") is None, "the document given is not changed"
    topology = Topology.from_status(merged)
    assert topology.dependencies("web") == ["api"]
    # `requires` was in the status (None): kept; what the status says wins over the config.
    assert merged["services"][1]["requires"] is None
    # No endpoints in this status: where requests go is worked out from health, peers and remote.
    assert topology.node("web").serving == "local"
    assert topology.node("api").serving == "remote"


def test_an_older_status_uses_the_peers_list_for_who_serves_what() -> None:
    document = shop()
    for entry in document["services"]:
        del entry["endpoints"]
    document["services"].append(service("search", origin="peer", version="0.9.0", port=None))
    document["peers"] = [
        {**BOB, "services": [*BOB["services"], {"name": "search", "version": "0.9.0", "healthy": True}]},
        {
            "peer": None,
            "address": "10.0.0.7:7090",
            "alive": False,
            "latency_ms": 0,
            "services": [],
            "error": "refused",
        },
    ]
    topology = Topology.from_status(document)
    assert [e.source for e in topology.providers("search")] == ["peer/bob-1a2b3c"]
    assert topology.node("search").serving == "peer"
    assert topology.node("payments").serving == "peer"  # stopped here, bob has it
    gone = topology.node("peer/10.0.0.7:7090")
    assert (gone.state, gone.address) == ("gone", "10.0.0.7:7090")


# -- Mermaid -------------------------------------------------------------------------------------------

# What `to_mermaid` may write: one statement per line, each of a form Mermaid's flowchart grammar takes.
_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_LABEL = r'"[^"<>]*(?:<br/>[^"<>]*)*"'
_MERMAID_LINE = re.compile(
    "|".join(
        [
            r"flowchart LR",
            r"  %%[^\n]*",
            rf"  {_ID}\[{_LABEL}\]",
            rf"  {_ID}\[\({_LABEL}\)\]",
            rf"  {_ID}\{{\{{{_LABEL}\}}\}}",
            rf"  {_ID} --> {_ID}",
            rf'  {_ID} -\.->\|"[^"|<>]*"\| {_ID}',
            r"  classDef [a-z]+ [a-z-]+:[^ ;]+(,[a-z-]+:[^,;]+)*",
            rf"  class {_ID}(,{_ID})* [a-z]+",
            r"  linkStyle \d+(,\d+)* [^;]+",
        ]
    )
)


def check_mermaid(text: str) -> list[str]:
    lines = text.rstrip("\n").split("\n")
    for line in lines:
        assert _MERMAID_LINE.fullmatch(line), f"not a Mermaid statement devmesh writes: {line!r}"
    return lines


def test_mermaid_for_the_shop() -> None:
    text = to_mermaid(Topology.from_status(shop()))
    lines = check_mermaid(text)
    assert lines[0] == "flowchart LR"
    assert '  api["api<br/>local · healthy · 1.4.2"]' in lines
    assert '  payments["payments<br/>local · stopped · 2.1.0"]' in lines
    assert '  peer_bob_1a2b3c[("peer bob-1a2b3c<br/>10.0.0.5:7090")]' in lines
    assert '  remote_api{{"remote<br/>https://api.staging.shop.dev"}}' in lines
    edges = [line for line in lines if not line.startswith("  %%") and ("-->" in line or "-.->" in line)]
    assert edges == [
        "  web --> api",
        "  web --> events",
        "  api --> payments",
        '  remote_api -.->|"fallback"| api',
        '  peer_bob_1a2b3c -.->|"2.1.0 · in use"| payments',
    ]
    # linkStyle counts edges from 0 in the order they are written: the peer edge is the fifth.
    assert "  linkStyle 4 stroke:#1a7f37,stroke-width:3px" in lines
    assert "  class web,api,events healthy" in lines
    assert "  class payments stopped" in lines
    assert "  class peer_bob_1a2b3c peer" in lines


def test_mermaid_offline_has_no_live_styles() -> None:
    lines = check_mermaid(to_mermaid(Topology.from_status(offline())))
    assert '  web["web<br/>local · unknown · 1.0.0"]' in lines
    assert "  web --> api" in lines
    assert not any(line.startswith("  linkStyle") for line in lines)
    assert "  class web,api unknown" in lines


def test_mermaid_escapes_what_could_end_a_label_or_inject_markup() -> None:
    assert mermaid_text('a"b') == "a#quot;b"
    assert mermaid_text("<script>") == "#lt;script#gt;"
    assert mermaid_text("x|y#z;") == "x#124;y#35;z#59;"
    assert mermaid_text("[a](b){c}") == "#91;a#93;#40;b#41;#123;c#125;"
    assert mermaid_text("line\nbreak") == "line break"
    assert mermaid_text("bob-1a2b3c.lan:7090 · v1.2.0+build") == "bob-1a2b3c.lan:7090 · v1.2.0+build"
    hostile = shop(api={"version": '1"]\n  click api "javascript:alert(1)"'})
    hostile["peers"] = [{**BOB, "peer": 'evil"]) --> x[(', "address": "<img src=x>:1"}]
    lines = check_mermaid(to_mermaid(Topology.from_status(hostile)))
    assert not any(line.lstrip().startswith("click") for line in lines)


def test_mermaid_ids_are_safe_and_distinct() -> None:
    document = {
        "mesh": "m",
        "agent": None,
        "services": [service(name) for name in ("end", "3d", "class", "a-b", "peer-bob-1")],
        "peers": [
            {"peer": "bob.1", "address": "h:1", "alive": True, "services": []},
            {"peer": "bob-1", "address": "h:2", "alive": True, "services": []},
        ],
    }
    ids = mermaid_ids(Topology.from_status(document))
    assert ids["end"] == "svc_end" and ids["3d"] == "svc_3d" and ids["class"] == "svc_class"
    assert ids["a-b"] == "a_b"
    assert ids["peer-bob-1"] == "peer_bob_1"
    assert ids["peer/bob.1"] == "peer_bob_1_2" and ids["peer/bob-1"] == "peer_bob_1_3"
    assert len({value.lower() for value in ids.values()}) == len(ids)
    check_mermaid(to_mermaid(Topology.from_status(document)))


# -- DOT -------------------------------------------------------------------------------------------------

_DOT_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z0-9_.#]+)|(?P<op>->|[{}\[\];=,]))'
)


def parse_dot(text: str) -> tuple[set[str], list[tuple[str, str]]]:
    """A small parser for the DOT devmesh writes: `digraph ID { stmt; ... }` where a statement is
    `graph|node|edge [attrs]`, `ID [attrs]` or `ID -> ID [attrs]`. Returns (node ids, edges)."""
    tokens: list[tuple[str, str]] = []
    position = 0
    body = text.rstrip()
    while position < len(body):
        match = _DOT_TOKEN.match(body, position)
        assert match, f"cannot read DOT at {body[position : position + 40]!r}"
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()

    def unquote(token: tuple[str, str]) -> str:
        kind, value = token
        assert kind in ("string", "word"), token
        return re.sub(r"\\(.)", r"\1", value[1:-1]) if kind == "string" else value

    assert tokens[:3] == [("word", "digraph"), ("word", "devmesh"), ("op", "{")]
    assert tokens[-1] == ("op", "}")
    index, nodes, edges = 3, set(), []

    def attributes(at: int) -> int:
        assert tokens[at] == ("op", "["), tokens[at]
        at += 1
        while tokens[at] != ("op", "]"):
            unquote(tokens[at])
            assert tokens[at + 1] == ("op", "="), tokens[at : at + 2]
            unquote(tokens[at + 2])
            at += 3
            if tokens[at] == ("op", ","):
                at += 1
        return at + 1

    while index < len(tokens) - 1:
        first = unquote(tokens[index])
        if tokens[index + 1] == ("op", "->"):
            edges.append((first, unquote(tokens[index + 2])))
            index += 3
        elif tokens[index][0] == "word" and first in ("graph", "node", "edge"):
            index += 1
        else:
            nodes.add(first)
            index += 1
        if tokens[index] == ("op", "["):
            index = attributes(index)
        assert tokens[index] == ("op", ";"), f"statement not ended: {tokens[index]}"
        index += 1
    for source, target in edges:
        assert source in nodes and target in nodes, (source, target)
    return nodes, edges


def test_dot_for_the_shop() -> None:
    text = to_dot(Topology.from_status(shop()))
    nodes, edges = parse_dot(text)
    assert nodes == {"web", "api", "events", "payments", "peer/bob-1a2b3c", "remote/api"}
    assert (
        ("web", "api") in edges
        and ("peer/bob-1a2b3c", "payments") in edges
        and ("remote/api", "api") in edges
    )
    assert '"api" [label="api\\nlocal · healthy · 1.4.2"' in text
    assert (
        '"peer/bob-1a2b3c" -> "payments" [style=dashed, label="2.1.0 · in use", color="#1a7f37", penwidth=2.5];'
        in text
    )


def test_dot_escapes_quotes_and_backslashes() -> None:
    assert dot_quote('a"b\\c\nd') == '"a\\"b\\\\c d"'
    hostile = shop(api={"version": '1" ]; evil [label="x'})
    hostile["mesh"] = 'shop\\"'
    hostile["peers"] = [{**BOB, "peer": 'bob"; x -> y; "'}]
    nodes, _ = parse_dot(to_dot(Topology.from_status(hostile)))
    assert 'peer/bob"; x -> y; "' in nodes
    assert "evil" not in nodes


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")
@pytest.mark.parametrize("document", [shop(), offline()], ids=["live", "offline"])
def test_graphviz_accepts_the_dot(document: dict[str, Any]) -> None:
    hostile = json.loads(json.dumps(document))
    hostile["services"][0]["version"] = 'x"\\y'
    for text in (to_dot(Topology.from_status(document)), to_dot(Topology.from_status(hostile))):
        result = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and not result.stderr, result.stderr


# -- tree and JSON ----------------------------------------------------------------------------------------


def render(renderable: object) -> str:
    from rich.console import Console

    console = Console(width=200, color_system=None, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_tree_puts_roots_first_with_dependencies_and_providers_beneath() -> None:
    document = shop()
    document["services"].append(service("admin", depends_on=["api"], endpoints=[endpoint("local")]))
    text = render(to_tree(Topology.from_status(document)))
    lines = text.rstrip("\n").split("\n")
    assert lines[0].startswith("mesh shop")
    assert "live" in lines[0]
    order = [re.sub(r"^[│├└─\s]+", "", line).split()[0] for line in lines[1:]]
    assert order == ["web", "api", "⇠", "payments", "⇠", "events", "admin", "api"]
    assert "api  (see above)" in text
    assert "⇠ peer bob-1a2b3c (10.0.0.5:7090)  2.1.0 · in use" in text
    assert "⇠ remote https://api.staging.shop.dev  fallback" in text
    assert "payments  local · stopped · unknown · 2.1.0" in text


def test_tree_offline_says_where_it_comes_from() -> None:
    text = render(to_tree(Topology.from_status(offline())))
    assert "from the config" in text.split("\n")[0]
    assert "web  local · unknown · 1.0.0" in text


def test_json_lists_nodes_and_edges() -> None:
    document = json.loads(to_json(Topology.from_status(shop())))
    assert set(document) >= {"nodes", "edges"}
    ids = {node["id"] for node in document["nodes"]}
    for edge in document["edges"]:
        assert edge["source"] in ids and edge["target"] in ids
    api = next(node for node in document["nodes"] if node["id"] == "api")
    assert api["kind"] == "service" and api["health"] == "healthy" and api["serving"] == "local"
    assert {"source": "web", "target": "api", "kind": "depends_on"}.items() <= document["edges"][0].items()
