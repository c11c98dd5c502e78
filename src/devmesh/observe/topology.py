"""The mesh as a graph, for `devmesh graph`: services, what each depends on, and who else serves them.

Pure: a `Topology` is built from a status document (`GET /api/v1/status`, or one made from the config when
no agent runs) and rendered as Mermaid, Graphviz DOT, a rich tree or JSON. Nothing here does I/O.

Edges point the way a request goes: `web --> api` means web depends on api (calls it); a peer or a remote
has a dotted edge to each service it can serve. An edge is `active` when requests for that service go that
way right now (only known while an agent runs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from devmesh.routing.table import LOCAL_ORIGINS as ROUTER_LOCAL_ORIGINS

if TYPE_CHECKING:
    from rich.text import Text
    from rich.tree import Tree

NodeKind = Literal["service", "peer", "remote"]
EdgeKind = Literal["depends_on", "serves", "fallback"]

# The status document's origins that are "here" (the router's own list; Origin is a StrEnum).
LOCAL_ORIGINS = frozenset(str(origin) for origin in ROUTER_LOCAL_ORIGINS)
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Node:
    """A service, a peer agent, or a service's remote fallback.

    `id` is unique in the graph: the service name, `peer/<peer id>` or `remote/<service>`.
    """

    id: str
    kind: NodeKind
    name: str  # the service name, the peer id, or the remote's URL
    origin: str | None = None  # services: local | registered | peer | remote
    state: str = UNKNOWN  # services: starting | running | stopped | crashed; peers: alive | gone
    health: str = UNKNOWN  # services: healthy | unhealthy | unknown
    version: str | None = None
    url: str | None = None  # services: where the proxy serves them; remotes: the remote's URL
    address: str | None = None  # peers: the mesh address
    pin: str | None = None  # services: `devmesh route` pin (local | remote | peer=ID)
    serving: str | None = None  # services: where requests go now: local | registered | peer | remote | none
    detail: str | None = None

    @property
    def condition(self) -> str:
        """One word for a service: its health while it runs, else its state (`crashed`, `stopped`...)."""
        if self.state in ("running", UNKNOWN):
            return self.health
        return self.state


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind
    version: str | None = None  # serves: the version the peer offers
    healthy: bool | None = None  # serves / fallback: whether that endpoint is up
    active: bool = False  # requests for the target go this way now
    note: str | None = None  # e.g. "not used" for a peer's offer the service does not accept

    @property
    def label(self) -> str:
        """What a renderer writes on the edge ("" for a plain dependency)."""
        if self.kind == "depends_on":
            return ""
        parts = [self.version or "peer"] if self.kind == "serves" else ["fallback"]
        if self.healthy is False:
            parts.append("down")
        if self.note:
            parts.append(self.note)
        if self.active:
            parts.append("in use")
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class Topology:
    mesh: str
    online: bool  # built from a running agent's status (else from the config alone)
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    @classmethod
    def from_status(cls, document: Mapping[str, Any]) -> Topology:
        """The graph of a StatusDocument; fields missing from it (an older agent) count as unknown."""
        return _build(document)

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def services(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.kind == "service")

    def dependencies(self, node_id: str) -> list[str]:
        """What `node_id` depends on, in the order the status lists it."""
        return [e.target for e in self.edges if e.kind == "depends_on" and e.source == node_id]

    def dependents(self, node_id: str) -> list[str]:
        return [e.source for e in self.edges if e.kind == "depends_on" and e.target == node_id]

    def providers(self, node_id: str) -> list[Edge]:
        """The peer and remote edges into a service."""
        return [e for e in self.edges if e.kind != "depends_on" and e.target == node_id]


# -- building ------------------------------------------------------------------------------------------


def with_config(document: Mapping[str, Any], services: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of a status document where each service lacking `depends_on`, `remote` or `requires` takes
    it from `services` (the config: name -> those keys), for agents whose status does not carry them."""
    merged = dict(document)
    entries = []
    for entry in document.get("services") or []:
        config = services.get(entry.get("name", ""))
        if config is not None:
            entry = {**{k: v for k, v in config.items() if k not in entry}, **entry}
        entries.append(entry)
    merged["services"] = entries
    return merged


def peer_node_id(peer: str) -> str:
    return f"peer/{peer}"


def remote_node_id(service: str) -> str:
    return f"remote/{service}"


def _build(document: Mapping[str, Any]) -> Topology:
    online = document.get("agent") is not None
    entries: list[Mapping[str, Any]] = [e for e in document.get("services") or [] if e.get("name")]
    peers: list[Mapping[str, Any]] = list(document.get("peers") or [])

    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    for entry in entries:
        name = str(entry["name"])
        nodes[name] = Node(
            id=name,
            kind="service",
            name=name,
            origin=entry.get("origin"),
            state=str(entry.get("state") or UNKNOWN) if online else UNKNOWN,
            health=str(entry.get("health") or UNKNOWN) if online else UNKNOWN,
            version=entry.get("version"),
            url=entry.get("url"),
            pin=entry.get("pin"),
            detail=entry.get("detail"),
        )

    for entry in entries:
        for dependency in entry.get("depends_on") or []:
            if dependency not in nodes:  # a dependency the status does not list (should not happen)
                nodes[dependency] = Node(id=dependency, kind="service", name=dependency)
            edges.append(Edge(source=str(entry["name"]), target=str(dependency), kind="depends_on"))

    # Peers: every agent this one follows, alive or not, even when it offers nothing.
    peer_alive: dict[str, bool] = {}
    for peer in peers:
        peer_id = str(peer.get("peer") or peer.get("address") or "?")
        alive = bool(peer.get("alive"))
        peer_alive[peer_id] = alive
        nodes.setdefault(
            peer_node_id(peer_id),
            Node(
                id=peer_node_id(peer_id),
                kind="peer",
                name=peer_id,
                state="alive" if alive else "gone",
                health="healthy" if alive else "unhealthy",
                address=peer.get("address"),
                detail=peer.get("error"),
            ),
        )

    for entry in entries:
        name = str(entry["name"])
        endpoints: list[Mapping[str, Any]] | None = entry.get("endpoints")
        serves: dict[str, Edge] = {}
        if endpoints is not None:
            for endpoint in endpoints:
                if endpoint.get("origin") != "peer":
                    continue
                peer_id = str(endpoint.get("peer") or endpoint.get("address") or "?")
                _ensure_peer(nodes, peer_id, endpoint.get("address"))
                serves.setdefault(
                    peer_id,
                    Edge(
                        source=peer_node_id(peer_id),
                        target=name,
                        kind="serves",
                        version=endpoint.get("version"),
                        healthy=bool(endpoint.get("healthy")),
                    ),
                )
        for peer in peers:
            peer_id = str(peer.get("peer") or peer.get("address") or "?")
            for offered in peer.get("services") or []:
                if offered.get("name") != name or peer_id in serves:
                    continue
                serves[peer_id] = Edge(
                    source=peer_node_id(peer_id),
                    target=name,
                    kind="serves",
                    version=offered.get("version"),
                    healthy=bool(offered.get("healthy")) and peer_alive.get(peer_id, False),
                    # The agent lists the endpoints it routes to: an offer missing there is not used
                    # (a pin, or a version outside `requires`).
                    note="not used" if endpoints is not None else None,
                )
        remote = entry.get("remote")
        if remote:
            nodes[remote_node_id(name)] = Node(
                id=remote_node_id(name), kind="remote", name=str(remote), url=str(remote)
            )
        serving, active = _serving(entry, serves, online=online)
        nodes[name] = replace(nodes[name], serving=serving)
        for peer_id, edge in serves.items():
            edges.append(replace(edge, active=peer_id in active))
        if remote:
            edges.append(
                Edge(
                    source=remote_node_id(name),
                    target=name,
                    kind="fallback",
                    healthy=None,
                    active=serving == "remote",
                )
            )

    ordered = [n for n in nodes.values() if n.kind == "service"]
    ordered += [n for n in nodes.values() if n.kind == "peer"]
    ordered += [n for n in nodes.values() if n.kind == "remote"]
    return Topology(
        mesh=str(document.get("mesh") or ""), online=online, nodes=tuple(ordered), edges=tuple(edges)
    )


def _ensure_peer(nodes: dict[str, Node], peer_id: str, address: str | None) -> None:
    if peer_node_id(peer_id) not in nodes:
        nodes[peer_node_id(peer_id)] = Node(
            id=peer_node_id(peer_id), kind="peer", name=peer_id, state="alive", address=address
        )


def _serving(
    entry: Mapping[str, Any], serves: Mapping[str, Edge], *, online: bool
) -> tuple[str | None, set[str]]:
    """Where requests for the service go now (DESIGN §3: pin, healthy local, healthy peers, remote), and
    the peer ids that serve them. (None, {}) without an agent."""
    if not online:
        return None, set()
    remote = bool(entry.get("remote"))
    endpoints: list[Mapping[str, Any]] | None = entry.get("endpoints")
    if endpoints is not None:  # the agent's own list, pin applied, in the order it tries them
        healthy = [e for e in endpoints if e.get("healthy")]
        for endpoint in healthy:
            if endpoint.get("origin") in LOCAL_ORIGINS:
                return str(endpoint["origin"]), set()
        peers = {str(e.get("peer") or e.get("address") or "?") for e in healthy if e.get("origin") == "peer"}
        if peers:
            return "peer", peers
        if any(e.get("origin") == "remote" for e in endpoints):
            return "remote", set()
        return "none", set()
    # An agent whose status has no endpoints: the same order from what it does say.
    pin = entry.get("pin")
    origin = entry.get("origin")
    up = entry.get("health") == "healthy"
    usable = {peer_id for peer_id, edge in serves.items() if edge.healthy and not edge.note}
    here = origin in LOCAL_ORIGINS and up
    if pin == "local":
        return (str(origin), set()) if here else ("none", set())
    if isinstance(pin, str) and pin.startswith("peer="):
        wanted = pin.removeprefix("peer=")
        return ("peer", {wanted}) if wanted in usable else ("none", set())
    if pin == "remote":
        return ("remote", set()) if remote else ("none", set())
    if here:
        return str(origin), set()
    if usable:
        return "peer", usable
    if remote:
        return "remote", set()
    return "none", set()


# -- Mermaid -------------------------------------------------------------------------------------------

# Words Mermaid's flowchart grammar reserves: as a node id they break the diagram.
_MERMAID_RESERVED = {
    "end",
    "graph",
    "flowchart",
    "subgraph",
    "style",
    "class",
    "classdef",
    "click",
    "call",
    "href",
    "linkstyle",
    "direction",
    "default",
    "interpolate",
    "acctitle",
    "accdescr",
}
_MERMAID_SAFE = re.compile(r"[A-Za-z0-9 .,:/@+=_\-\u00b7]")
_MERMAID_NAMED = {'"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"}

_COLOURS = {
    # fill, stroke: GitHub's palette, readable on light and dark backgrounds.
    "healthy": ("#dafbe1", "#1a7f37"),
    "unhealthy": ("#ffebe9", "#cf222e"),
    "unknown": ("#fff8c5", "#9a6700"),
    "stopped": ("#f6f8fa", "#8c959f"),
    "peer": ("#ddf4ff", "#0969da"),
    "peergone": ("#f6f8fa", "#8c959f"),
    "remote": ("#fbefff", "#8250df"),
}
_ACTIVE = "#1a7f37"
_TEXT = "#1f2328"


def mermaid_text(text: str) -> str:
    """Text made safe inside a quoted Mermaid label: anything beyond plain characters becomes an entity
    code (`#quot;`, `#35;`), so a name can neither end the label nor inject markup."""
    out = []
    for char in text:
        if char in _MERMAID_NAMED:
            out.append(_MERMAID_NAMED[char])
        elif _MERMAID_SAFE.match(char) or (ord(char) > 127 and char.isprintable()):
            out.append(char)
        elif char in "\r\n\t":
            out.append(" ")
        else:
            out.append(f"#{ord(char)};")
    return "".join(out)


def _class_of(node: Node) -> str:
    if node.kind == "peer":
        return "peer" if node.state == "alive" else "peergone"
    if node.kind == "remote":
        return "remote"
    if node.state == "stopped":
        return "stopped"
    if node.state == "crashed" or node.health == "unhealthy":
        return "unhealthy"
    return "healthy" if node.health == "healthy" else "unknown"


def mermaid_ids(topology: Topology) -> dict[str, str]:
    """A Mermaid id for every node: letters, digits and `_` only, never a reserved word, all distinct."""
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for node in topology.nodes:
        base = re.sub(r"[^A-Za-z0-9_]", "_", node.name if node.kind == "service" else node.id)
        if node.kind == "service" and (base.lower() in _MERMAID_RESERVED or not base[:1].isalpha()):
            base = f"svc_{base}"
        candidate, counter = base, 2
        while candidate.lower() in taken:
            candidate = f"{base}_{counter}"
            counter += 1
        taken.add(candidate.lower())
        ids[node.id] = candidate
    return ids


def _describe(node: Node) -> list[str]:
    """The lines of a node's label (plain text; each renderer escapes and joins them)."""
    if node.kind == "peer":
        lines = [f"peer {node.name}"]
        if node.address:
            lines.append(node.address if node.state == "alive" else f"{node.address} · gone")
        return lines
    if node.kind == "remote":
        return ["remote", node.name]
    facts = [node.origin or "?", node.condition]
    if node.version:
        facts.append(node.version)
    lines = [node.name, " · ".join(facts)]
    if node.pin:
        lines.append(f"pinned: {node.pin}")
    return lines


def to_mermaid(topology: Topology) -> str:
    """A `flowchart LR` to paste into a ```mermaid block (GitHub, GitLab, Notion...)."""
    ids = mermaid_ids(topology)
    lines = [
        "flowchart LR",
        f"  %% devmesh graph of mesh {mermaid_text(topology.mesh) or '?'}: A --> B means A depends on B;",
        "  %% dotted: a peer or remote that can serve a service; thick green: where requests go now",
    ]
    for node in topology.nodes:
        label = "<br/>".join(mermaid_text(line) for line in _describe(node))
        node_id = ids[node.id]
        if node.kind == "peer":
            lines.append(f'  {node_id}[("{label}")]')
        elif node.kind == "remote":
            lines.append(f'  {node_id}{{{{"{label}"}}}}')
        else:
            lines.append(f'  {node_id}["{label}"]')
    active: list[int] = []
    for index, edge in enumerate(topology.edges):
        source, target = ids[edge.source], ids[edge.target]
        if edge.kind == "depends_on":
            lines.append(f"  {source} --> {target}")
        else:
            lines.append(f'  {source} -.->|"{mermaid_text(edge.label)}"| {target}')
        if edge.active:
            active.append(index)
    used: dict[str, list[str]] = {}
    for node in topology.nodes:
        used.setdefault(_class_of(node), []).append(ids[node.id])
    for name, members in used.items():
        fill, stroke = _COLOURS[name]
        dash = ",stroke-dasharray:4 3" if name in ("stopped", "peergone") else ""
        lines.append(f"  classDef {name} fill:{fill},stroke:{stroke},color:{_TEXT}{dash}")
        lines.append(f"  class {','.join(members)} {name}")
    if active:
        lines.append(f"  linkStyle {','.join(map(str, active))} stroke:{_ACTIVE},stroke-width:3px")
    return "\n".join(lines) + "\n"


# -- Graphviz DOT --------------------------------------------------------------------------------------


def dot_quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, control characters dropped."""
    cleaned = "".join(
        " " if char in "\r\n\t" else char for char in text if char.isprintable() or char in "\r\n\t"
    )
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_label(lines: Sequence[str]) -> str:
    # Quote each line, then join with DOT's own line break (the `\n` escape, which dot_quote leaves alone
    # since it is added after quoting).
    return '"' + "\\n".join(dot_quote(line)[1:-1] for line in lines) + '"'


def _dot_attributes(pairs: Iterable[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{key}={value}" for key, value in pairs) + "]"


def to_dot(topology: Topology) -> str:
    """A `digraph devmesh { ... }` for Graphviz (`devmesh graph --format dot | dot -Tsvg > mesh.svg`)."""
    lines = [
        "digraph devmesh {",
        f"  graph [rankdir=LR, labelloc=t, fontname=Helvetica, label={dot_quote('mesh ' + topology.mesh)}];",
        "  node [shape=box, fontname=Helvetica, fontsize=11];",
        "  edge [fontname=Helvetica, fontsize=10];",
    ]
    shapes = {"service": "box", "peer": "cylinder", "remote": "hexagon"}
    for node in topology.nodes:
        name = _class_of(node)
        fill, stroke = _COLOURS[name]
        attributes = [
            ("label", _dot_label(_describe(node))),
            ("fillcolor", dot_quote(fill)),
            ("color", dot_quote(stroke)),
        ]
        if node.kind != "service":
            attributes.append(("shape", shapes[node.kind]))
        styles = ["rounded"] if node.kind == "service" else []
        styles += ["filled", "dashed"] if name in ("stopped", "peergone") else ["filled"]
        attributes.append(("style", dot_quote(",".join(styles))))
        lines.append(f"  {dot_quote(node.id)} {_dot_attributes(attributes)};")
    for edge in topology.edges:
        attributes = []
        if edge.kind != "depends_on":
            attributes += [("style", "dashed"), ("label", dot_quote(edge.label))]
        if edge.active:
            attributes += [("color", dot_quote(_ACTIVE)), ("penwidth", "2.5")]
        suffix = f" {_dot_attributes(attributes)}" if attributes else ""
        lines.append(f"  {dot_quote(edge.source)} -> {dot_quote(edge.target)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- a terminal tree -----------------------------------------------------------------------------------

_HEALTH_STYLES = {"healthy": "green", "unhealthy": "red", "unknown": "yellow"}
_STATE_STYLES = {"running": "green", "starting": "yellow", "stopped": "dim", "crashed": "red"}


def _service_text(node: Node, *, repeated: bool = False) -> Text:
    from rich.text import Text

    text = Text()
    text.append(node.name, style="bold")
    if repeated:
        text.append("  (see above)", style="dim")
        return text
    text.append("  ")
    text.append(node.origin or "?", style="cyan")
    if node.state not in ("running", UNKNOWN):
        text.append(" · ")
        text.append(node.state, style=_STATE_STYLES.get(node.state))
    text.append(" · ")
    text.append(node.health, style=_HEALTH_STYLES.get(node.health))
    if node.detail and node.health != "healthy":
        text.append(f" ({node.detail})", style="dim")
    if node.version:
        text.append(f" · {node.version}")
    if node.pin:
        text.append(f" · pinned to {node.pin}", style="magenta")
    if node.serving == "none" and node.state != "starting":
        text.append(" · nothing can answer", style="red")
    if node.url:
        text.append(f"  {node.url}", style="dim")
    return text


def _provider_text(topology: Topology, edge: Edge) -> Text:
    from rich.text import Text

    source = topology.node(edge.source)
    text = Text()
    text.append("⇠ ", style="dim")
    if source.kind == "peer":
        text.append(f"peer {source.name}", style="blue" if source.state == "alive" else "dim")
        if source.address:
            text.append(f" ({source.address})", style="dim")
    else:
        text.append(f"remote {source.name}", style="magenta")
    label = edge.label
    if label:
        text.append("  ")
        text.append(label, style="bold green" if edge.active else ("red" if edge.healthy is False else "dim"))
    return text


def to_tree(topology: Topology) -> Tree:
    """Roots first (the services nothing depends on), each with what it depends on beneath it, and under
    a service the peers and remote that can serve it. A service reached twice is written in full once."""
    from rich.text import Text
    from rich.tree import Tree

    title = Text(f"mesh {topology.mesh}", style="bold")
    title.append(
        "  (live, from the running agent)"
        if topology.online
        else "  (from the config; devmesh is not running)",
        style="dim",
    )
    tree = Tree(title)
    services = topology.services
    roots = [node for node in services if not topology.dependents(node.id)] or list(services)
    shown: set[str] = set()

    def add(branch: Tree, node: Node, path: tuple[str, ...]) -> None:
        if node.id in shown or node.id in path:
            branch.add(_service_text(node, repeated=True))
            return
        shown.add(node.id)
        child = branch.add(_service_text(node))
        for edge in topology.providers(node.id):
            child.add(_provider_text(topology, edge))
        for dependency in topology.dependencies(node.id):
            add(child, topology.node(dependency), (*path, node.id))

    for root in roots:
        add(tree, root, ())
    for node in services:  # only reachable through a cycle (the config forbids them): still shown
        if node.id not in shown:
            add(tree, node, ())
    idle = [
        n for n in topology.nodes if n.kind == "peer" and not any(e.source == n.id for e in topology.edges)
    ]
    if idle:
        branch = tree.add(Text("peers serving nothing here", style="dim"))
        for peer in idle:
            line = Text(f"peer {peer.name}", style="blue" if peer.state == "alive" else "dim")
            if peer.address:
                line.append(f" ({peer.address}, {peer.state})", style="dim")
            branch.add(line)
    return tree


# -- JSON ----------------------------------------------------------------------------------------------


def to_dict(topology: Topology) -> dict[str, Any]:
    return {
        "mesh": topology.mesh,
        "online": topology.online,
        "nodes": [asdict(node) for node in topology.nodes],
        "edges": [{**asdict(edge), "label": edge.label} for edge in topology.edges],
    }


def to_json(topology: Topology) -> str:
    """`{"mesh", "online", "nodes": [...], "edges": [...]}`, indented."""
    return json.dumps(to_dict(topology), indent=2)
