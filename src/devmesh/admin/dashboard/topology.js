// The topology: services left to right by dependency depth (who calls whom), the peers that serve some of
// them, and the services with no edge in a grid below. An SVG laid out again only when the graph changes
// (services, dependencies, peers); states and health update the nodes in place.

import { $, el, setClass, setText, svg } from "./dom.js";
import { dirty, exposed, schedule, select, state } from "./state.js";

const NODE_W = 156;
const NODE_H = 40;
const GAP_X = 64;
const GAP_Y = 14;
const MAX_ROWS = 12;
const topologyNodes = new Map(); // id -> {id, kind, g, title, sub, peer, last}: the drawn nodes
let topologyKey = null;
let topologySvg = null;
let topologyWidth = 0;
new ResizeObserver(() => {
  // the standalone grid follows the panel's width
  if (Math.abs($("#topology").clientWidth - topologyWidth) > 40) {
    topologyKey = null;
    dirty.topology = true;
    schedule();
  }
}).observe($("#topology"));

function servedByPeer(service) {
  const peers = new Set();
  for (const e of service.endpoints || []) if (e.peer) peers.add(e.peer);
  return peers;
}

function computeTopologyKey() {
  const parts = [];
  for (const name of [...state.services.keys()].sort()) {
    const s = state.services.get(name);
    parts.push(`${name}>${(s.depends_on || []).join(",")}@${[...servedByPeer(s)].sort().join(",")}`);
  }
  for (const peer of state.peers) parts.push(`#${peer.peer}:${(peer.services || []).map((s) => s.name).join(",")}`);
  return parts.join(";");
}

export function renderTopology() {
  dirty.topology = false;
  const key = computeTopologyKey();
  if (key !== topologyKey) {
    topologyKey = key;
    layoutTopology();
  }
  updateTopologyNodes();
}

function layoutTopology() {
  exposed.topologyLayouts++;
  const container = $("#topology");
  const nodes = new Map();
  const edges = [];
  for (const name of state.services.keys()) nodes.set(name, { id: name, kind: "service", deps: [], dependents: [] });
  for (const [name, s] of state.services) {
    for (const dep of s.depends_on || []) {
      if (!nodes.has(dep)) nodes.set(dep, { id: dep, kind: "ghost", deps: [], dependents: [] });
      nodes.get(name).deps.push(dep);
      nodes.get(dep).dependents.push(name);
      edges.push({ from: name, to: dep, kind: nodes.get(dep).kind === "ghost" ? "missing" : "dep" });
    }
  }
  // Peers, each with an edge to every service it serves.
  const peerServed = new Set();
  for (const peer of state.peers) {
    const id = `peer:${peer.peer}`;
    nodes.set(id, { id, kind: "peer", peer, deps: [], dependents: [] });
    const served = new Set((peer.services || []).map((s) => s.name));
    for (const [name, s] of state.services) if (servedByPeer(s).has(peer.peer)) served.add(name);
    for (const name of served) {
      if (!state.services.has(name)) continue;
      edges.push({ from: id, to: name, kind: "peer" });
      peerServed.add(name);
    }
  }
  // Columns, left to right by dependency depth: what nothing depends on (the entry points) first, then
  // what they call, one column further right per hop of the longest chain.
  const column = new Map();
  const visiting = new Set();
  const columnOf = (id) => {
    if (column.has(id)) return column.get(id);
    if (visiting.has(id)) return 0; // a cycle: the config refuses them, but draw something anyway
    visiting.add(id);
    let c = 0;
    for (const up of nodes.get(id).dependents) c = Math.max(c, columnOf(up) + 1);
    visiting.delete(id);
    column.set(id, c);
    return c;
  };
  const graph = [];
  const standalone = [];
  for (const [id, node] of nodes) {
    if (node.kind === "peer") continue;
    if (node.deps.length || node.dependents.length) graph.push(id);
    else if (peerServed.has(id)) graph.push(id);
    else standalone.push(id);
  }
  let lastColumn = 0;
  for (const id of graph) {
    const node = nodes.get(id);
    if (node.deps.length || node.dependents.length) lastColumn = Math.max(lastColumn, columnOf(id));
  }
  for (const id of graph) if (!column.has(id)) column.set(id, lastColumn); // served by a peer only: next to it
  const layers = [];
  for (const id of graph) (layers[column.get(id)] ||= []).push(id);
  const peerIds = [...nodes.values()].filter((n) => n.kind === "peer").map((n) => n.id);
  if (peerIds.length) layers[graph.length ? lastColumn + 1 : 0] = peerIds;

  const row = new Map();
  const columns = [];
  for (let l = 0; l < layers.length; l++) {
    const ids = layers[l] || [];
    if (!ids.length) continue;
    // Order by the mean row of the neighbours already placed (fewer crossings), then by name.
    const score = new Map();
    for (const id of ids) {
      const placed = edges
        .filter((e) => (e.to === id && row.has(e.from)) || (e.from === id && row.has(e.to)))
        .map((e) => row.get(e.to === id ? e.from : e.to));
      score.set(id, placed.length ? placed.reduce((a, b) => a + b, 0) / placed.length : Infinity);
    }
    ids.sort((a, b) => {
      const sa = score.get(a);
      const sb = score.get(b);
      if (sa !== sb) return sa === Infinity ? 1 : sb === Infinity ? -1 : sa - sb;
      const ga = nodes.get(a).kind === "ghost" ? 1 : 0;
      const gb = nodes.get(b).kind === "ghost" ? 1 : 0;
      return ga - gb || a.localeCompare(b);
    });
    for (let start = 0; start < ids.length; start += MAX_ROWS) {
      const chunk = ids.slice(start, start + MAX_ROWS);
      chunk.forEach((id, r) => row.set(id, r));
      columns.push(chunk);
    }
  }
  const coords = new Map();
  const tallest = Math.max(0, ...columns.map((c) => c.length));
  const graphH = tallest ? tallest * NODE_H + (tallest - 1) * GAP_Y : 0;
  const graphW = columns.length ? columns.length * (NODE_W + GAP_X) - GAP_X : 0;
  // Services with no edge at all: a compact grid below the graph.
  const available = Math.max(NODE_W, (container.clientWidth || 800) - 40);
  const perRow = Math.max(1, Math.min(standalone.length, Math.floor((available + 12) / (NODE_W + 12))));
  standalone.sort((a, b) => a.localeCompare(b));
  const gridW = standalone.length ? perRow * (NODE_W + 12) - 12 : 0;
  const width = Math.max(graphW, gridW, NODE_W) + 16;
  const graphX = 8 + (width - 16 - graphW) / 2;
  columns.forEach((ids, c) => {
    const columnH = ids.length * NODE_H + (ids.length - 1) * GAP_Y;
    const offset = (graphH - columnH) / 2;
    ids.forEach((id, r) => coords.set(id, { x: graphX + c * (NODE_W + GAP_X), y: 8 + offset + r * (NODE_H + GAP_Y) }));
  });
  let height = graphH + 16;
  let gridTop = 0;
  if (standalone.length) {
    gridTop = graphH ? graphH + 40 : 22;
    const gridX = 8 + (width - 16 - gridW) / 2;
    standalone.forEach((id, k) => {
      coords.set(id, {
        x: gridX + (k % perRow) * (NODE_W + 12),
        y: gridTop + Math.floor(k / perRow) * (NODE_H + 10),
      });
    });
    height = gridTop + Math.ceil(standalone.length / perRow) * (NODE_H + 10) + 6;
  }

  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Service topology" });
  const defs = svg("defs");
  const marker = svg("marker", {
    id: "arrow",
    viewBox: "0 0 8 8",
    refX: "7.5",
    refY: "4",
    markerWidth: "7",
    markerHeight: "7",
    orient: "auto-start-reverse",
  });
  marker.append(svg("path", { d: "M0,0.5 L8,4 L0,7.5 Z" }));
  defs.append(marker);
  root.append(defs);
  if (standalone.length) {
    const label = svg("text", { class: "group-label", x: 8 + (width - 16 - gridW) / 2, y: gridTop - 8 });
    label.textContent = graph.length ? "no dependencies" : "services";
    root.append(label);
  }
  const edgeLayer = svg("g", { class: "edges" });
  const nodeLayer = svg("g", { class: "nodes" });
  root.append(edgeLayer, nodeLayer);

  for (const edge of edges) {
    const a = coords.get(edge.from);
    const b = coords.get(edge.to);
    if (!a || !b) continue;
    let d;
    if (edge.kind === "peer") {
      // from the peer (right) back to the service it serves
      const x1 = a.x;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x + NODE_W;
      const y2 = b.y + NODE_H / 2;
      const bend = Math.max(30, (x1 - x2) / 2);
      d = `M${x1},${y1} C${x1 - bend},${y1} ${x2 + bend},${y2} ${x2},${y2}`;
    } else if (b.x > a.x) {
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x - 2;
      const y2 = b.y + NODE_H / 2;
      const bend = Math.max(24, (x2 - x1) / 2);
      d = `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
    } else {
      // same column (a wrapped layer, or a cycle): loop out to the right
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x + NODE_W + 2;
      const y2 = b.y + NODE_H / 2;
      d = `M${x1},${y1} C${x1 + 40},${y1} ${x2 + 40},${y2} ${x2},${y2}`;
    }
    edgeLayer.append(
      svg("path", {
        d,
        class: `edge e-${edge.kind === "missing" ? "dep e-missing" : edge.kind}`,
        "data-from": edge.from,
        "data-to": edge.to,
      }),
    );
  }

  topologyNodes.clear();
  for (const [id, node] of nodes) {
    const at = coords.get(id);
    if (!at) continue;
    const g = svg("g", { class: "node", transform: `translate(${at.x},${at.y})`, "data-node": id });
    if (node.kind === "service") g.setAttribute("data-service", id);
    if (node.kind === "peer") g.setAttribute("data-peer", node.peer.peer);
    const title = svg("title");
    g.append(title);
    g.append(svg("rect", { width: NODE_W, height: NODE_H, rx: 7 }));
    g.append(svg("circle", { class: "dot", cx: 14, cy: NODE_H / 2, r: 4 }));
    const label = svg("text", { class: "label", x: 26, y: 17 });
    const labelText = node.kind === "peer" ? node.peer.peer : id;
    label.textContent = labelText.length > 19 ? `${labelText.slice(0, 18)}…` : labelText;
    const sub = svg("text", { class: "sub", x: 26, y: 31 });
    g.append(label, sub);
    nodeLayer.append(g);
    topologyNodes.set(id, { id, kind: node.kind, g, title, sub, peer: node.peer, last: "" });
  }
  topologySvg = root;
  topologyWidth = container.clientWidth;
  container.textContent = "";
  if (!nodes.size) container.append(el("div", { class: "empty", text: "No services yet." }));
  else container.append(root);
}

function updateTopologyNodes() {
  for (const node of topologyNodes.values()) {
    let cls;
    let sub;
    let title;
    if (node.kind === "service") {
      const s = state.services.get(node.id);
      if (!s) continue;
      cls = `node h-${s.health} s-${s.state}${state.selected === node.id ? " is-selected" : ""}`;
      sub = [s.version, s.origin !== "local" ? s.origin : s.state !== "running" ? s.state : null]
        .filter(Boolean)
        .join(" · ");
      title = `${s.name}: ${s.state}, ${s.health}${s.url ? `\n${s.url}` : ""}${
        (s.depends_on || []).length ? `\ndepends on ${s.depends_on.join(", ")}` : ""
      }`;
    } else if (node.kind === "peer") {
      const peer = state.peers.find((p) => p.peer === node.peer.peer) || node.peer;
      cls = `node is-peer ${peer.alive === false ? "p-dead" : "p-alive"}`;
      sub = peer.address || "peer";
      title = `peer ${peer.peer} at ${peer.address}${peer.error ? `\n${peer.error}` : ""}`;
    } else {
      cls = "node is-ghost";
      sub = "not in this mesh";
      title = `${node.id}: depended on, but not defined`;
    }
    if (node.last === cls + sub + title) continue;
    node.last = cls + sub + title;
    setClass(node.g, cls);
    setText(node.sub, sub);
    setText(node.title, title);
  }
}

$("#topology").addEventListener("click", (event) => {
  const g = event.target.closest("g[data-service]");
  if (g) select(state.selected === g.dataset.service ? null : g.dataset.service);
});
$("#topology").addEventListener("mouseover", (event) => {
  const g = event.target.closest("g[data-node]");
  if (!topologySvg) return;
  topologySvg.querySelectorAll(".is-lit").forEach((n) => n.classList.remove("is-lit"));
  if (!g) {
    topologySvg.classList.remove("is-focus");
    return;
  }
  const id = g.dataset.node;
  topologySvg.classList.add("is-focus");
  g.classList.add("is-lit");
  for (const edge of topologySvg.querySelectorAll(".edge")) {
    if (edge.dataset.from === id || edge.dataset.to === id) {
      edge.classList.add("is-lit");
      const other = edge.dataset.from === id ? edge.dataset.to : edge.dataset.from;
      topologyNodes.get(other)?.g.classList.add("is-lit");
    }
  }
});
$("#topology").addEventListener("mouseleave", () => {
  if (!topologySvg) return;
  topologySvg.classList.remove("is-focus");
  topologySvg.querySelectorAll(".is-lit").forEach((n) => n.classList.remove("is-lit"));
});

export function renderSelectedNode() {
  for (const node of topologyNodes.values()) {
    if (node.kind === "service") node.g.classList.toggle("is-selected", node.id === state.selected);
  }
}
