// devmesh dashboard. Plain ES module, no build step, no network beyond the agent's own admin API.
//
// State comes ONLY from the WebSocket /api/v1/events: the `hello` message replaces everything, later events
// patch it. Nothing polls. Actions are fetch POST/DELETE with the write token; their results come back as
// events. Rendering is keyed and incremental: events mark what changed, one requestAnimationFrame applies it.

const WINDOW = 60; // seconds of traffic kept for the charts and sparklines
const MAX_REQUESTS = 2000; // records kept in memory
const MAX_REQUEST_ROWS = 200; // rows shown in the requests table
const MAX_ACTIVITY = 80;
const TOKEN_KEY = "devmesh.token";
const WATCHDOG_MS = 10_000; // traffic arrives every second: a silent socket this long is dead

const COLORS = {
  accent: "#7aa2f7",
  green: "#5bd08d",
  amber: "#e3b341",
  red: "#f47067",
  purple: "#b392f0",
  cyan: "#56c8d8",
  grid: "#1c2330",
  axis: "#566072",
  text: "#d5dbe5",
  panel: "#11151c",
};
const PALETTE = ["#5bd08d", "#e3b341", "#b392f0", "#56c8d8", "#f7768e", "#ff9e64", "#9ece6a", "#bb9af7", "#2ac3de", "#c0caf5"]; // not the accent: that is the total

// ---------------------------------------------------------------------------------------------------------
// small helpers

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  if (attrs) for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}
function setClass(node, className) {
  if (node.getAttribute("class") !== className) node.setAttribute("class", className);
}
function setAttr(node, name, value) {
  if (value === null || value === undefined) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
}

let colorOrder = new Map();
function hashColor(name) {
  // Distinct colours for the services on screen: by position in the sorted names, hashed for the others.
  const index = colorOrder.get(name);
  if (index !== undefined) return PALETTE[index % PALETTE.length];
  let hash = 0;
  for (let i = 0; i < name.length; i++) hash = (hash * 31 + name.charCodeAt(i)) | 0;
  return PALETTE[Math.abs(hash) % PALETTE.length];
}

function fmtRps(v) {
  if (!v) return "0";
  if (v < 10) return v.toFixed(1);
  if (v < 1000) return v.toFixed(0);
  return (v / 1000).toFixed(1) + "k";
}
function fmtMs(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v < 1) return v.toFixed(2) + " ms";
  if (v < 10) return v.toFixed(1) + " ms";
  if (v < 1000) return v.toFixed(0) + " ms";
  return (v / 1000).toFixed(2) + " s";
}
function trim(n) {
  return String(Number(n.toPrecision(3)));
}
function fmtMsShort(v) {
  if (!v) return "0";
  if (v < 1000) return `${trim(v)}ms`;
  return `${trim(v / 1000)}s`;
}
function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}
function fmtClock(epoch, millis = false) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return millis ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
function niceMax(v, floor) {
  // The top of a 4-step axis whose steps are round numbers (1, 2, 2.5, 5 x 10^n).
  const step = Math.max(v, floor) / 4;
  const exp = 10 ** Math.floor(Math.log10(step));
  const f = step / exp;
  const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nice * exp * 4;
}

// ---------------------------------------------------------------------------------------------------------
// the write token: from the URL fragment (#token=...), kept in sessionStorage, fragment removed

function takeToken() {
  let token = "";
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    token = decodeURIComponent(match[1]);
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      /* storage may be disabled: the token lives for this page only */
    }
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    try {
      token = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      token = "";
    }
  }
  return token;
}

let token = takeToken();
const READ_ONLY_HINT = "run `devmesh dashboard` to act";

// ---------------------------------------------------------------------------------------------------------
// state

const state = {
  mesh: "",
  agent: null,
  services: new Map(), // name -> ServiceStatus
  peers: [],
  traffic: [], // last WINDOW traffic messages {time, services}, oldest first
  requests: [], // newest last
  requestIndex: new Map(), // id -> record
  selected: null, // the service the charts show (null: all)
  connection: "connecting",
  configError: null,
};

const knownRequestServices = new Set(); // services seen in requests, for the requests filter

// What changed since the last frame: render() applies exactly this, then clears it.
const dirty = {
  header: true,
  services: new Set(),
  removed: new Set(),
  serviceSet: true,
  traffic: true,
  topology: true,
  peers: true,
  requestsRebuild: true,
  newRequests: [],
  activity: [],
  selection: true,
  readOnly: true,
};

const exposed = {
  samples: 0, // traffic messages received since the page loaded
  lastEventTime: null, // `time` of the last message (agent clock, epoch seconds)
  lastEventAt: null, // Date.now() when it arrived
  lastEventType: null,
  messages: 0,
  hellos: 0,
  renders: 0,
  renderMs: 0, // how long the last batched render took
  maxRenderMs: 0,
  topologyLayouts: 0, // full re-layouts of the graph: only when services, dependencies or peers change
  connected: false,
};
window.devmeshDashboard = exposed;

// ---------------------------------------------------------------------------------------------------------
// the events socket

let socket = null;
let attempt = 0;
let retryTimer = 0;
let watchdog = 0;
let trafficSeen = false;

function eventsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/v1/events`;
}

function connect() {
  clearTimeout(retryTimer);
  retryTimer = 0;
  // Once the page has lost the agent, it says so until a new hello arrives, attempts included.
  setConnection(exposed.hellos || attempt ? "reconnecting" : "connecting");
  let ws;
  try {
    ws = new WebSocket(eventsUrl());
  } catch {
    scheduleReconnect();
    return;
  }
  socket = ws;
  trafficSeen = false;
  ws.onmessage = (event) => {
    if (ws !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    armWatchdog(ws);
    handle(message);
  };
  ws.onclose = () => {
    if (ws !== socket) return;
    socket = null;
    scheduleReconnect();
  };
}

function armWatchdog(ws) {
  clearTimeout(watchdog);
  if (!trafficSeen) return;
  watchdog = setTimeout(() => {
    if (ws !== socket) return;
    socket = null;
    try {
      ws.close();
    } catch {
      /* already closed */
    }
    scheduleReconnect();
  }, WATCHDOG_MS);
}

function scheduleReconnect() {
  clearTimeout(watchdog);
  exposed.connected = false;
  const delay = Math.min(5000, 250 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
  attempt = Math.min(attempt + 1, 6);
  setConnection("disconnected", delay);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, delay);
}

function reconnectNow() {
  if (socket) return;
  attempt = 0;
  connect();
}

let countdown = 0;
function setConnection(kind, delay = 0) {
  // kind: connecting (first time) | live | disconnected (waiting to retry) | reconnecting (retrying)
  const shown = kind === "reconnecting" ? "disconnected" : kind;
  state.connection = shown;
  const badge = $("#connection");
  badge.dataset.state = shown;
  setClass(badge, `badge badge-${shown}`);
  document.body.classList.toggle("is-disconnected", shown === "disconnected");
  const label = badge.querySelector("span");
  clearInterval(countdown);
  if (kind === "live") {
    label.textContent = "live";
    badge.title = "Connected to the agent's events stream";
  } else if (kind === "connecting") {
    label.textContent = "connecting";
    badge.title = "";
  } else if (kind === "reconnecting") {
    label.textContent = "disconnected · reconnecting";
    badge.title = "The agent is not reachable; trying again.";
  } else {
    const until = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      label.textContent = left > 0 ? `disconnected · retry in ${left}s` : "disconnected · retrying";
    };
    tick();
    countdown = setInterval(tick, 500);
    badge.title = "The agent is not reachable. Click to retry now.";
  }
}

// ---------------------------------------------------------------------------------------------------------
// messages

function handle(message) {
  exposed.messages++;
  exposed.lastEventTime = message.time ?? null;
  exposed.lastEventAt = Date.now();
  exposed.lastEventType = message.type;
  switch (message.type) {
    case "hello":
      onHello(message);
      break;
    case "service":
      onService(message);
      break;
    case "service_removed":
      onServiceRemoved(message);
      break;
    case "peer":
      onPeer(message);
      break;
    case "route":
      onRoute(message);
      break;
    case "agent":
      onAgent(message);
      break;
    case "traffic":
      onTraffic(message);
      break;
    default:
      return;
  }
  schedule();
}

function onHello(message) {
  attempt = 0;
  exposed.hellos++;
  exposed.connected = true;
  setConnection("live");
  const status = message.status || {};
  const reconnect = exposed.hellos > 1;
  state.mesh = status.mesh || "";
  state.agent = status.agent || null;
  state.configError = state.agent?.config_error || null;
  const fresh = new Map();
  for (const service of status.services || []) fresh.set(service.name, service);
  for (const name of state.services.keys()) if (!fresh.has(name)) dirty.removed.add(name);
  state.services = fresh;
  for (const name of fresh.keys()) dirty.services.add(name);
  state.peers = status.peers || [];
  state.traffic = (message.traffic || []).slice(-WINDOW).map((t) => ({ time: t.time, services: t.services || {} }));
  state.requests = [];
  state.requestIndex.clear();
  for (const record of message.requests || []) addRequest(record);
  dirty.newRequests = [];
  dirty.requestsRebuild = true;
  dirty.header = dirty.serviceSet = dirty.traffic = dirty.topology = dirty.peers = dirty.selection = true;
  if (state.selected && !fresh.has(state.selected)) state.selected = null;
  const pid = state.agent ? ` (agent pid ${state.agent.pid})` : "";
  log(message.time, "a-info", reconnect ? ["reconnected", pid] : ["connected", pid]);
}

function onService(message) {
  const service = message.service;
  if (!service || !service.name) return;
  const known = state.services.has(service.name);
  state.services.set(service.name, service);
  dirty.services.add(service.name);
  dirty.topology = true;
  if (!known) dirty.serviceSet = true;
  const previous = message.previous;
  const name = el("b", { text: service.name });
  if (!previous) {
    log(message.time, "a-info", [name, ` appeared (${service.origin})`]);
  } else if (previous.state !== service.state) {
    const cls = service.state === "crashed" ? "a-bad" : service.state === "running" ? "a-good" : "a-warn";
    const detail = service.state === "crashed" && service.detail ? `: ${service.detail}` : "";
    log(message.time, cls, [name, ` ${previous.state} → ${service.state}${detail}`]);
  } else if (previous.health !== service.health) {
    const cls = service.health === "healthy" ? "a-good" : service.health === "unhealthy" ? "a-bad" : "a-warn";
    log(message.time, cls, [name, ` ${previous.health} → ${service.health}`]);
  }
}

function onServiceRemoved(message) {
  if (!state.services.has(message.name)) return;
  state.services.delete(message.name);
  dirty.removed.add(message.name);
  dirty.serviceSet = dirty.topology = true;
  if (state.selected === message.name) {
    state.selected = null;
    dirty.selection = dirty.traffic = true;
  }
  log(message.time, "a-warn", [el("b", { text: message.name }), " removed"]);
}

function onPeer(message) {
  state.peers = message.peers || [];
  dirty.peers = dirty.topology = dirty.serviceSet = true;
  const joined = message.event === "joined";
  log(message.time, "a-peer", ["peer ", el("b", { text: message.peer }), joined ? " joined" : " left"]);
}

function onRoute(message) {
  const service = state.services.get(message.service);
  if (service) {
    service.pin = message.pin ?? null;
    dirty.services.add(message.service);
  }
  const text = message.pin ? ` pinned to ${message.pin}` : " route cleared";
  log(message.time, "a-peer", [el("b", { text: message.service }), text]);
}

function onAgent(message) {
  if (message.event === "config_error") {
    state.configError = message.message || "the config has an error";
    log(message.time, "a-bad", ["config error: ", message.message || ""]);
  } else {
    state.configError = null;
    if (state.agent) state.agent = { ...state.agent, config_error: null };
    log(message.time, "a-info", [message.message || "config reloaded"]);
  }
  dirty.header = true;
}

function onTraffic(message) {
  exposed.samples++;
  trafficSeen = true;
  state.traffic.push({ time: message.time, services: message.services || {} });
  if (state.traffic.length > WINDOW) state.traffic.splice(0, state.traffic.length - WINDOW);
  for (const record of message.requests || []) {
    if (addRequest(record)) dirty.newRequests.push(record);
  }
  if (dirty.newRequests.length > MAX_REQUEST_ROWS) {
    dirty.newRequests = [];
    dirty.requestsRebuild = true;
  }
  dirty.traffic = true;
}

function addRequest(record) {
  if (!record || record.id === undefined || record.id === null) return false;
  const key = String(record.id);
  if (state.requestIndex.has(key)) return false;
  state.requests.push(record);
  state.requestIndex.set(key, record);
  if (state.requests.length > MAX_REQUESTS) {
    for (const old of state.requests.splice(0, state.requests.length - MAX_REQUESTS)) {
      state.requestIndex.delete(String(old.id));
    }
  }
  if (record.service && !knownRequestServices.has(record.service)) {
    knownRequestServices.add(record.service);
    dirty.serviceSet = true;
  }
  return true;
}

function log(time, cls, parts) {
  const entry = { time: time || Date.now() / 1000, cls, parts };
  dirty.activity.push(entry);
  if (dirty.activity.length > MAX_ACTIVITY) dirty.activity.shift(); // a hidden tab does not render
}

// ---------------------------------------------------------------------------------------------------------
// rendering, batched in one animation frame

let frame = 0;
function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  exposed.renders++;
  const started = performance.now();
  if (dirty.readOnly) renderReadOnly();
  if (dirty.header) renderHeader();
  if (dirty.removed.size || dirty.services.size || dirty.serviceSet) renderServices();
  if (dirty.selection) renderSelection();
  if (dirty.traffic) renderTraffic();
  if (dirty.topology) renderTopology();
  if (dirty.peers) renderPeers();
  if (dirty.requestsRebuild || dirty.newRequests.length) renderRequests();
  if (dirty.activity.length) renderActivity();
  exposed.renderMs = performance.now() - started;
  if (exposed.renderMs > exposed.maxRenderMs) exposed.maxRenderMs = exposed.renderMs;
}

// -- header ------------------------------------------------------------------------------------------------

function renderHeader() {
  dirty.header = false;
  setText($("#mesh-name"), state.mesh || "…");
  const meta = $("#agent-meta");
  meta.textContent = "";
  const agent = state.agent;
  if (agent) {
    const item = (label, value, cls, title) =>
      el("span", { class: cls || null, title: title || null }, `${label} `, el("b", { text: value }));
    meta.append(
      item("pid", String(agent.pid), null, `the agent's process (${agent.config})`),
      item("rev", String(agent.revision), null, "the catalog revision when this page connected"),
    );
    if (agent.listen) meta.append(item("proxy", agent.listen));
    if (agent.https) meta.append(item("https", agent.https));
    if (agent.mesh) meta.append(item("mesh", agent.mesh));
    if (agent.peer_id) meta.append(item("id", agent.peer_id));
    if (agent.mesh_refused) meta.append(item("refused", String(agent.mesh_refused), "meta-error"));
  }
  const banner = $("#banner");
  if (state.configError) {
    banner.textContent = `The config has an error; the agent keeps running the last good one.\n${state.configError}`;
    banner.hidden = false;
  } else banner.hidden = true;
  updateTitle();
}

function updateTitle() {
  let bad = 0;
  for (const s of state.services.values()) if (s.state === "crashed" || s.health === "unhealthy") bad++;
  const prefix = bad ? `(${bad} down) ` : "";
  const title = `${prefix}${state.mesh || "devmesh"} · devmesh`;
  if (document.title !== title) document.title = title;
}

function renderReadOnly() {
  dirty.readOnly = false;
  $("#readonly").hidden = Boolean(token);
  document.body.classList.toggle("is-read-only", !token);
  for (const row of rows.values()) updateActions(row, state.services.get(row.name));
}

// -- services table ----------------------------------------------------------------------------------------

const rows = new Map(); // name -> row handles
const servicesBody = $("#services tbody");
const rowTemplate = document.createElement("template");
rowTemplate.innerHTML = `<tr>
<td class="c-name"><a class="svc-name" data-field="name" target="_blank" rel="noopener"></a><span class="svc-pin" data-field="pin"></span><span class="svc-detail" data-field="detail"></span></td>
<td class="c-state"><span class="pill" data-field="state"></span></td>
<td class="c-health"><span class="pill" data-field="health"></span></td>
<td class="c-origin"><span class="origin" data-field="origin"></span></td>
<td class="c-version" data-field="version"></td>
<td class="c-num" data-field="endpoints"></td>
<td class="c-num" data-field="restarts"></td>
<td class="c-num" data-field="pid"></td>
<td class="c-traffic"><div class="traffic-cell"><svg class="spark" viewBox="0 0 59 20" preserveAspectRatio="none" aria-hidden="true"><path class="area" d=""/><path class="line" d=""/><path class="errs" d=""/></svg><span class="rps" data-field="rps" data-rps="0">0/s</span></div></td>
<td class="c-actions"><div class="actions"><button class="btn" type="button" data-action="restart">Restart</button><button class="btn" type="button" data-action="stop">Stop</button><button class="btn" type="button" data-action="start">Start</button><select data-action="pin" aria-label="Route pin"></select></div></td>
</tr>`;

function createRow(name) {
  const tr = rowTemplate.content.firstElementChild.cloneNode(true);
  tr.dataset.service = name;
  const field = (f) => tr.querySelector(`[data-field="${f}"]`);
  const row = {
    name,
    tr,
    link: field("name"),
    pin: field("pin"),
    detail: field("detail"),
    state: field("state"),
    health: field("health"),
    origin: field("origin"),
    version: field("version"),
    endpoints: field("endpoints"),
    restarts: field("restarts"),
    pid: field("pid"),
    spark: tr.querySelector(".spark"),
    line: tr.querySelector(".spark .line"),
    area: tr.querySelector(".spark .area"),
    errs: tr.querySelector(".spark .errs"),
    rps: field("rps"),
    restart: tr.querySelector('[data-action="restart"]'),
    stop: tr.querySelector('[data-action="stop"]'),
    start: tr.querySelector('[data-action="start"]'),
    select: tr.querySelector('select[data-action="pin"]'),
    pinKey: "",
    last: null,
  };
  row.link.textContent = name;
  fillPinOptions(row);
  return row;
}

function pinChoices() {
  const choices = [
    ["", "route: auto"],
    ["local", "pin: local"],
    ["remote", "pin: remote"],
  ];
  for (const peer of state.peers) choices.push([`peer=${peer.peer}`, `pin: ${peer.peer}`]);
  return choices;
}

function fillPinOptions(row, choices = pinChoices()) {
  const key = choices.map((c) => c[0]).join("|");
  if (row.pinKey === key) return;
  row.pinKey = key;
  row.select.textContent = "";
  for (const [value, label] of choices) row.select.append(el("option", { value, text: label }));
}

function updateRow(row, s) {
  const last = row.last;
  row.last = s;
  if (s.url) {
    setAttr(row.link, "href", s.url);
    setClass(row.link, "svc-name");
    setAttr(row.link, "title", `Open ${s.url}`);
  } else {
    setAttr(row.link, "href", null);
    setClass(row.link, "svc-name no-url");
    setAttr(row.link, "title", null);
  }
  setText(row.pin, s.pin || "");
  setText(row.detail, s.state === "crashed" || s.state === "stopped" || s.health === "unhealthy" ? s.detail || "" : "");
  setAttr(row.detail, "title", s.detail || null);

  setText(row.state, s.state);
  setClass(row.state, `pill v-${s.state}`);
  row.state.dataset.value = s.state;
  setAttr(row.state, "title", s.detail || null);
  setText(row.health, s.health);
  setClass(row.health, `pill v-${s.health}`);
  row.health.dataset.value = s.health;

  setText(row.origin, s.origin);
  setClass(row.origin, `origin o-${s.origin}`);
  setText(row.version, s.version || "–");
  setAttr(row.version, "title", s.requires ? `requires ${s.requires}` : null);
  const endpoints = Array.isArray(s.endpoints) ? s.endpoints : null;
  setText(row.endpoints, endpoints ? String(endpoints.length) : "–");
  setAttr(
    row.endpoints,
    "title",
    endpoints && endpoints.length
      ? endpoints
          .map((e) => `${e.address} · ${e.origin}${e.peer ? ` (${e.peer})` : ""}${e.healthy ? "" : " · unhealthy"}`)
          .join("\n")
      : null,
  );
  setText(row.restarts, String(s.restarts ?? 0));
  row.restarts.classList.toggle("is-hot", (s.restarts ?? 0) > 0);
  setText(row.pid, s.pid ?? "–");
  row.tr.dataset.pid = s.pid ?? "";
  row.tr.dataset.state = s.state;
  row.tr.dataset.health = s.health;

  const pinValue = s.pin || "";
  if (pinValue && ![...row.select.options].some((o) => o.value === pinValue)) {
    row.select.append(el("option", { value: pinValue, text: `pin: ${pinValue}` }));
    row.pinKey = "";
  }
  if (!row.select.classList.contains("is-busy") && row.select.value !== pinValue) row.select.value = pinValue;
  row.select.classList.toggle("is-pinned", Boolean(pinValue));

  updateActions(row, s);
  if (last && (last.state !== s.state || last.health !== s.health || last.pid !== s.pid)) {
    const color = s.state === "crashed" || s.health === "unhealthy" ? "rgba(244, 112, 103, 0.22)" : "rgba(122, 162, 247, 0.16)";
    row.tr.animate([{ backgroundColor: color }, { backgroundColor: "transparent" }], { duration: 1200, easing: "ease-out" });
  }
}

function updateActions(row, s) {
  if (!s) return;
  const managed = s.origin === "local" || s.origin === "registered";
  const stopped = s.state === "stopped" || s.state === "crashed";
  row.stop.hidden = stopped;
  row.start.hidden = !stopped;
  const readOnlyTitle = token ? null : READ_ONLY_HINT;
  const why = managed ? null : `${s.name} is served by a ${s.origin}: nothing to start or stop here`;
  for (const button of [row.restart, row.stop, row.start]) {
    const busy = button.classList.contains("is-busy");
    button.disabled = !token || !managed || busy;
    setAttr(button, "title", readOnlyTitle || why || `${button.dataset.action} ${s.name}`);
  }
  row.select.disabled = !token;
  setAttr(row.select, "title", readOnlyTitle || "Where requests for this service go");
}

function renderServices() {
  for (const name of dirty.removed) {
    const row = rows.get(name);
    if (row && !state.services.has(name)) {
      row.tr.remove();
      rows.delete(name);
    }
  }
  dirty.removed.clear();
  for (const name of dirty.services) {
    const service = state.services.get(name);
    if (!service) continue;
    let row = rows.get(name);
    if (!row) {
      row = createRow(name);
      rows.set(name, row);
      dirty.serviceSet = true;
    }
    updateRow(row, service);
  }
  dirty.services.clear();
  if (dirty.serviceSet) {
    dirty.serviceSet = false;
    orderRows();
    const choices = pinChoices();
    for (const row of rows.values()) fillPinOptions(row, choices);
    for (const row of rows.values()) {
      const s = state.services.get(row.name);
      if (s && row.select.value !== (s.pin || "") && !row.select.classList.contains("is-busy")) {
        row.select.value = s.pin || "";
      }
    }
    updateRequestServiceOptions();
    applyServiceFilter();
    dirty.traffic = true; // new rows need their sparkline
  }
  renderServicesSummary();
  updateTitle();
}

function orderRows() {
  const names = [...rows.keys()].sort((a, b) => a.localeCompare(b));
  colorOrder = new Map(names.map((name, i) => [name, i]));
  let previous = null;
  for (const name of names) {
    const tr = rows.get(name).tr;
    const expected = previous ? previous.nextSibling : servicesBody.firstChild;
    if (tr !== expected) servicesBody.insertBefore(tr, expected);
    previous = tr;
  }
  $("#services-empty").hidden = names.length > 0;
}

function renderServicesSummary() {
  const counts = { total: 0, healthy: 0, crashed: 0, unhealthy: 0, stopped: 0, starting: 0 };
  for (const s of state.services.values()) {
    counts.total++;
    if (s.health === "healthy") counts.healthy++;
    if (s.health === "unhealthy") counts.unhealthy++;
    if (s.state === "crashed") counts.crashed++;
    if (s.state === "stopped") counts.stopped++;
    if (s.state === "starting") counts.starting++;
  }
  const summary = $("#services-summary");
  summary.textContent = "";
  summary.append(el("b", { text: String(counts.total) }), counts.total === 1 ? " service" : " services");
  summary.append(` · ${counts.healthy} healthy`);
  if (counts.starting) summary.append(" · ", el("span", { class: "s-warn", text: `${counts.starting} starting` }));
  if (counts.unhealthy) summary.append(" · ", el("span", { class: "s-bad", text: `${counts.unhealthy} unhealthy` }));
  if (counts.crashed) summary.append(" · ", el("span", { class: "s-bad", text: `${counts.crashed} crashed` }));
  if (counts.stopped) summary.append(` · ${counts.stopped} stopped`);
}

const serviceFilter = $("#service-filter");
function applyServiceFilter() {
  const needle = serviceFilter.value.trim().toLowerCase();
  for (const row of rows.values()) {
    const s = state.services.get(row.name);
    const hay = `${row.name} ${s?.origin || ""} ${s?.version || ""} ${s?.state || ""} ${s?.health || ""}`.toLowerCase();
    const hide = Boolean(needle) && !hay.includes(needle);
    if (row.tr.hidden !== hide) row.tr.hidden = hide;
  }
}
serviceFilter.addEventListener("input", applyServiceFilter);

servicesBody.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  const tr = event.target.closest("tr[data-service]");
  if (!tr) return;
  const name = tr.dataset.service;
  if (button) {
    event.stopPropagation();
    runServiceAction(name, button.dataset.action, button);
    return;
  }
  if (event.target.closest("a, select")) return;
  select(state.selected === name ? null : name);
});

servicesBody.addEventListener("change", (event) => {
  const chooser = event.target.closest('select[data-action="pin"]');
  if (!chooser) return;
  const name = chooser.closest("tr").dataset.service;
  const pin = chooser.value;
  chooser.classList.add("is-busy");
  const request = pin
    ? act("POST", `/api/v1/routes/${encodeURIComponent(name)}`, { pin })
    : act("DELETE", `/api/v1/routes/${encodeURIComponent(name)}`);
  request.then((ok) => {
    chooser.classList.remove("is-busy");
    const service = state.services.get(name);
    if (!ok && service) chooser.value = service.pin || "";
  });
});

function runServiceAction(name, action, button) {
  button.classList.add("is-busy");
  button.disabled = true;
  act("POST", `/api/v1/services/${encodeURIComponent(name)}/${action}`).then(() => {
    button.classList.remove("is-busy");
    const row = rows.get(name);
    if (row) updateActions(row, state.services.get(name));
  });
}

async function act(method, path, body) {
  if (!token) {
    toast(`Read-only: ${READ_ONLY_HINT}.`, true);
    return false;
  }
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.ok) return true;
    let message = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      if (problem && problem.error) message = problem.error;
    } catch {
      /* not JSON */
    }
    if (response.status === 401) {
      token = "";
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch {
        /* ignore */
      }
      dirty.readOnly = true;
      schedule();
      toast(`The agent refused the token: ${READ_ONLY_HINT}.`, true);
    } else toast(message, true);
  } catch (error) {
    toast(`The agent did not answer: ${error.message || error}`, true);
  }
  return false;
}

function toast(message, isError = false) {
  const node = el("div", { class: isError ? "toast is-error" : "toast" }, isError ? el("b", { text: "✕ " }) : null, message);
  $("#toasts").append(node);
  setTimeout(() => node.remove(), 6000);
}

// -- selection (which service the charts show) -------------------------------------------------------------

function select(name) {
  state.selected = name;
  dirty.selection = dirty.traffic = true;
  schedule();
}

let selectedRow = null;
function renderSelection() {
  dirty.selection = false;
  if (selectedRow) selectedRow.classList.remove("is-selected");
  selectedRow = state.selected ? rows.get(state.selected)?.tr || null : null;
  if (selectedRow) selectedRow.classList.add("is-selected");
  setText($("#chart-scope"), state.selected || "all services");
  $("#chart-clear").hidden = !state.selected;
  for (const node of topologyNodes.values()) {
    if (node.kind === "service") node.g.classList.toggle("is-selected", node.id === state.selected);
  }
}
$("#chart-clear").addEventListener("click", () => select(null));

// -- traffic: sparklines and charts ------------------------------------------------------------------------

function trafficWindow() {
  // One slot per second, aligned on the newest message: slots[i] is the message of second end-59+i or null.
  const slots = new Array(WINDOW).fill(null);
  const last = state.traffic[state.traffic.length - 1];
  if (!last) return { slots, end: null, count: 0 };
  const end = Math.round(last.time);
  let count = 0;
  for (const message of state.traffic) {
    const index = WINDOW - 1 - (end - Math.round(message.time));
    if (index >= 0 && index < WINDOW) {
      if (!slots[index]) count++;
      slots[index] = message;
    }
  }
  return { slots, end, count };
}

const heartbeat = $("#connection i");
function beat() {
  // one blip of the badge's dot per traffic message: the stream is alive (transform/opacity: composited)
  heartbeat.animate(
    [
      { transform: "scale(1.7)", opacity: 0.5 },
      { transform: "scale(1)", opacity: 1 },
    ],
    { duration: 450, easing: "ease-out" },
  );
}

function renderTraffic() {
  dirty.traffic = false;
  if (state.connection === "live") beat();
  const win = trafficWindow();
  renderSparklines(win);
  renderCharts(win);
}

function renderSparklines(win) {
  const latest = win.slots[WINDOW - 1];
  for (const row of rows.values()) {
    const name = row.name;
    let max = 0;
    let errs = "";
    const values = new Array(WINDOW);
    for (let i = 0; i < WINDOW; i++) {
      const sample = win.slots[i]?.services[name];
      const v = sample ? sample.rps || 0 : 0;
      values[i] = v;
      if (v > max) max = v;
      if (sample && sample.errors) errs += `M${i},20V${(20 - Math.min(8, 3 + sample.errors)).toFixed(0)}`;
    }
    let line = "M0,19L59,19";
    let area = "";
    if (max > 0) {
      const scale = 17 / max;
      line = `M${values.map((v, i) => `${i},${(19 - v * scale).toFixed(1)}`).join("L")}`;
      area = `${line}L59,20L0,20Z`;
    }
    setAttr(row.line, "d", line);
    setAttr(row.area, "d", area);
    setAttr(row.errs, "d", errs);
    const now = latest?.services[name]?.rps || 0;
    setText(row.rps, `${fmtRps(now)}/s`);
    setAttr(row.rps, "data-rps", String(now));
    row.rps.classList.toggle("is-active", now > 0);
  }
}

class Chart {
  constructor(canvas, legend, options) {
    this.canvas = canvas;
    this.legend = legend;
    this.ctx = canvas.getContext("2d");
    this.options = options;
    this.data = { series: [], end: null };
    this.hover = null;
    this.legendKey = "";
    this.width = 0;
    this.height = 0;
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
    this.hoverFrame = 0;
    canvas.addEventListener("mousemove", (event) => {
      this.hover = event.offsetX;
      if (!this.hoverFrame) {
        this.hoverFrame = requestAnimationFrame(() => {
          this.hoverFrame = 0;
          this.draw();
        });
      }
    });
    canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.draw();
    });
    this.resize();
  }

  resize() {
    const box = this.canvas.parentElement.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    this.width = Math.max(1, Math.floor(box.width));
    this.height = Math.max(1, Math.floor(box.height));
    this.canvas.width = Math.floor(this.width * ratio);
    this.canvas.height = Math.floor(this.height * ratio);
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.draw();
  }

  set(data) {
    this.data = data;
    this.renderLegend();
    this.draw();
  }

  renderLegend() {
    const key = this.data.series.map((s) => `${s.label}:${s.color}`).join("|");
    if (key === this.legendKey) return;
    this.legendKey = key;
    this.legend.textContent = "";
    for (const s of this.data.series) {
      const item = el("span", { class: s.service ? "is-clickable" : null, title: s.service ? `Show ${s.service}` : null });
      const swatch = el("i");
      swatch.style.background = s.color;
      item.append(swatch, s.label);
      if (s.service) item.addEventListener("click", () => select(s.service));
      this.legend.append(item);
    }
  }

  draw() {
    const { ctx, width, height } = this;
    const { series, end } = this.data;
    const format = this.options.axis;
    ctx.clearRect(0, 0, width, height);
    const left = 38;
    const right = 8;
    const top = 8;
    const bottom = 18;
    const plotW = Math.max(1, width - left - right);
    const plotH = Math.max(1, height - top - bottom);
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    const yMax = niceMax(max * 1.08, this.options.floor);
    const xAt = (i) => left + (i / (WINDOW - 1)) * plotW;
    const yAt = (v) => top + plotH - (v / yMax) * plotH;

    ctx.font = "10.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
    ctx.textBaseline = "middle";
    ctx.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const v = (yMax * k) / 4;
      const y = Math.round(yAt(v)) + 0.5;
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "right";
      ctx.fillText(format(v), left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    for (const secondsAgo of [60, 45, 30, 15, 0]) {
      const x = xAt(WINDOW - 1 - Math.min(secondsAgo, WINDOW - 1));
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = secondsAgo === 60 ? "left" : secondsAgo === 0 ? "right" : "center";
      ctx.fillText(secondsAgo === 0 ? "now" : `-${secondsAgo}s`, x, height - 4);
    }

    if (end === null) {
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "center";
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillText(state.connection === "live" ? "waiting for traffic…" : "no data", left + plotW / 2, top + plotH / 2);
      return;
    }

    for (const s of series) {
      ctx.beginPath();
      let started = false;
      let firstX = 0;
      let lastX = 0;
      for (let i = 0; i < WINDOW; i++) {
        const v = s.values[i];
        if (v === null) {
          continue;
        }
        const x = xAt(i);
        const y = yAt(v);
        if (!started) {
          ctx.moveTo(x, y);
          firstX = x;
          started = true;
        } else ctx.lineTo(x, y);
        lastX = x;
      }
      if (!started) continue;
      ctx.strokeStyle = s.color;
      ctx.lineWidth = s.width || 1.5;
      ctx.lineJoin = "round";
      ctx.setLineDash(s.dash || []);
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.fill) {
        ctx.lineTo(lastX, top + plotH);
        ctx.lineTo(firstX, top + plotH);
        ctx.closePath();
        const gradient = ctx.createLinearGradient(0, top, 0, top + plotH);
        gradient.addColorStop(0, `${s.color}40`);
        gradient.addColorStop(1, `${s.color}05`);
        ctx.fillStyle = gradient;
        ctx.fill();
      }
    }

    if (this.hover !== null && this.hover >= left && this.hover <= left + plotW && series.length) {
      const i = Math.round(((this.hover - left) / plotW) * (WINDOW - 1));
      const x = xAt(i);
      ctx.strokeStyle = "#3a4557";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, top);
      ctx.lineTo(Math.round(x) + 0.5, top + plotH);
      ctx.stroke();
      const lines = [`${fmtClock(end - (WINDOW - 1 - i))}`];
      const colors = [COLORS.axis];
      for (const s of series.slice(0, 7)) {
        const v = s.values[i];
        lines.push(`${s.label}  ${v === null ? "–" : this.options.value(v)}`);
        colors.push(s.color);
        if (v !== null) {
          ctx.fillStyle = s.color;
          ctx.beginPath();
          ctx.arc(x, yAt(v), 2.5, 0, Math.PI * 2);
          ctx.fill();
        }
      }
      ctx.font = "11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
      const boxW = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 16;
      const boxH = lines.length * 15 + 8;
      const boxX = x + 10 + boxW > width ? x - 10 - boxW : x + 10;
      const boxY = top + 2;
      ctx.fillStyle = "rgba(17, 21, 28, 0.94)";
      ctx.strokeStyle = "#2a3342";
      ctx.beginPath();
      ctx.rect(boxX, boxY, boxW, boxH);
      ctx.fill();
      ctx.stroke();
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      lines.forEach((line, k) => {
        ctx.fillStyle = k === 0 ? COLORS.axis : COLORS.text;
        if (k > 0) {
          ctx.fillStyle = colors[k];
          ctx.fillRect(boxX + 8, boxY + 6 + k * 15 + 4, 6, 2);
          ctx.fillStyle = COLORS.text;
          ctx.fillText(line, boxX + 18, boxY + 5 + k * 15);
        } else ctx.fillText(line, boxX + 8, boxY + 5);
      });
    }
  }
}

const rpsChart = new Chart($("#chart-rps"), $("#legend-rps"), {
  axis: (v) => (v < 1000 ? trim(v) : `${trim(v / 1000)}k`),
  value: (v) => `${fmtRps(v)}/s`,
  floor: 2,
});
const latencyChart = new Chart($("#chart-latency"), $("#legend-latency"), {
  axis: (v) => fmtMsShort(v),
  value: (v) => fmtMs(v),
  floor: 1,
});

function seriesOf(win, name, pick) {
  return win.slots.map((message) => {
    if (!message) return null;
    const sample = message.services[name];
    return sample ? (pick(sample) ?? 0) : 0;
  });
}

function seriesOfLatency(win, name, pick) {
  // Latency exists only for seconds with requests: other seconds are gaps, not zeros.
  return win.slots.map((message) => {
    const sample = message?.services[name];
    return sample && sample.requests ? (pick(sample) ?? null) : null;
  });
}

function renderCharts(win) {
  const latest = win.slots[WINDOW - 1];
  const rpsCanvas = rpsChart.canvas;
  const latencyCanvas = latencyChart.canvas;
  let rpsNow = 0;
  let p50Now = null;
  let p95Now = null;
  if (state.selected) {
    const name = state.selected;
    const rps = seriesOf(win, name, (s) => s.rps);
    const errors = seriesOf(win, name, (s) => s.errors);
    rpsChart.set({
      end: win.end,
      series: [
        { label: `${name} req/s`, color: COLORS.accent, values: rps, fill: true, width: 1.8 },
        { label: "errors/s", color: COLORS.red, values: errors, width: 1.3 },
      ],
    });
    latencyChart.set({
      end: win.end,
      series: [
        { label: "p50", color: COLORS.green, values: seriesOfLatency(win, name, (s) => s.p50_ms), width: 1.6 },
        { label: "p95", color: COLORS.purple, values: seriesOfLatency(win, name, (s) => s.p95_ms), width: 1.6 },
      ],
    });
    const sample = latest?.services[name];
    rpsNow = sample?.rps || 0;
    p50Now = sample?.requests ? sample.p50_ms : null;
    p95Now = sample?.requests ? sample.p95_ms : null;
  } else {
    // All services: the total, plus the busiest few as their own lines.
    const totals = new Map();
    for (const message of win.slots) {
      if (!message) continue;
      for (const [name, sample] of Object.entries(message.services)) {
        totals.set(name, (totals.get(name) || 0) + (sample.requests || sample.rps || 0));
      }
    }
    const busiest = [...totals.entries()]
      .filter(([, n]) => n > 0)
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .slice(0, 5)
      .map(([name]) => name)
      .sort();
    const total = win.slots.map((message) => {
      if (!message) return null;
      let sum = 0;
      for (const sample of Object.values(message.services)) sum += sample.rps || 0;
      return sum;
    });
    rpsChart.set({
      end: win.end,
      series: [
        { label: "total", color: COLORS.accent, values: total, fill: true, width: 1.8 },
        ...busiest.map((name) => ({
          label: name,
          service: name,
          color: hashColor(name),
          values: seriesOf(win, name, (s) => s.rps),
          width: 1.2,
        })),
      ],
    });
    latencyChart.set({
      end: win.end,
      series: busiest.map((name) => ({
        label: `${name} p95`,
        service: name,
        color: hashColor(name),
        values: seriesOfLatency(win, name, (s) => s.p95_ms),
        width: 1.5,
      })),
    });
    if (latest) {
      for (const sample of Object.values(latest.services)) {
        rpsNow += sample.rps || 0;
        if (sample.requests && sample.p95_ms !== undefined) p95Now = Math.max(p95Now ?? 0, sample.p95_ms);
        if (sample.requests && sample.p50_ms !== undefined) p50Now = Math.max(p50Now ?? 0, sample.p50_ms);
      }
    }
  }
  rpsCanvas.dataset.lastRps = String(rpsNow);
  rpsCanvas.dataset.points = String(win.count);
  rpsCanvas.dataset.end = win.end === null ? "" : String(win.end);
  latencyCanvas.dataset.lastP50 = p50Now === null ? "" : String(p50Now);
  latencyCanvas.dataset.lastP95 = p95Now === null ? "" : String(p95Now);
  latencyCanvas.dataset.points = String(win.count);
  setText($("#rps-now"), win.end === null ? "–" : `${fmtRps(rpsNow)} req/s`);
  setText(
    $("#latency-now"),
    p95Now === null ? "–" : state.selected ? `p50 ${fmtMs(p50Now)} · p95 ${fmtMs(p95Now)}` : `worst p95 ${fmtMs(p95Now)}`,
  );
}

// -- topology ----------------------------------------------------------------------------------------------

const NODE_W = 156;
const NODE_H = 40;
const GAP_X = 64;
const GAP_Y = 14;
const MAX_ROWS = 12;
const topologyNodes = new Map(); // id -> {id, kind, g, x, y}
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

function renderTopology() {
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
  if (topologySvg) topologySvg.remove();
  topologySvg = root;
  topologyWidth = container.clientWidth;
  container.textContent = "";
  if (!nodes.size) container.append(el("div", { class: "empty", text: "No services yet." }));
  else container.append(root);
  dirty.selection = true;
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

// -- peers -------------------------------------------------------------------------------------------------

function renderPeers() {
  dirty.peers = false;
  const box = $("#peers");
  box.textContent = "";
  const alive = state.peers.filter((p) => p.alive !== false).length;
  setText($("#peers-summary"), state.peers.length ? `${alive} of ${state.peers.length} alive` : "");
  if (!state.peers.length) {
    box.append(
      el(
        "div",
        { class: "empty" },
        "No peers. Teammates on the same mesh show up here (",
        el("code", { text: "share = true" }),
        ", mDNS or ",
        el("code", { text: "[peers] static" }),
        ").",
      ),
    );
    return;
  }
  for (const peer of state.peers) {
    const card = el(
      "div",
      { class: "peer", dataset: { peer: peer.peer } },
      el(
        "div",
        { class: "peer-head" },
        el("span", { class: `pill ${peer.alive === false ? "v-down" : "v-alive"}`, text: peer.alive === false ? "down" : "alive" }),
        el("span", { class: "peer-id", text: peer.peer }),
        el("span", { class: "peer-addr", text: peer.address || "" }),
        el("span", { class: "peer-latency", text: peer.latency_ms === null || peer.latency_ms === undefined ? "" : fmtMs(peer.latency_ms) }),
      ),
    );
    const services = el("div", { class: "peer-services" });
    for (const s of peer.services || []) {
      services.append(
        el(
          "span",
          { class: s.healthy === false ? "peer-service is-unhealthy" : "peer-service", title: s.healthy === false ? "unhealthy" : "healthy" },
          s.name,
          s.version ? el("small", { text: s.version }) : null,
        ),
      );
    }
    if ((peer.services || []).length) card.append(services);
    if (peer.error) card.append(el("div", { class: "peer-error", text: peer.error }));
    box.append(card);
  }
}

// -- recent requests ---------------------------------------------------------------------------------------

const requestsBody = $("#requests tbody");
const filters = { service: "", status: "", trace: "" };
let paused = false;
let pausedCount = 0;
let selectedRequest = null;

function matches(record) {
  if (filters.service && record.service !== filters.service) return false;
  if (filters.status && String(record.status ?? 0)[0] !== filters.status) return false;
  if (filters.trace) {
    const hay = `${record.trace_id || ""} ${record.traceparent || ""}`.toLowerCase();
    if (!hay.includes(filters.trace)) return false;
  }
  return true;
}

function requestRow(record) {
  const status = record.status ?? 0;
  const duration = record.duration_ms ?? 0;
  const servedBy = record.peer ? `${record.peer}` : record.endpoint || record.origin || "";
  const trace = record.trace_id || "";
  const tr = el(
    "tr",
    { dataset: { id: String(record.id), status: String(status), service: record.service || "" } },
    el("td", { class: "c-time", text: fmtClock(record.time, true) }),
    el("td", { class: "c-method", text: record.method || "" }),
    el("td", { class: "c-service", text: record.service || "–" }),
    el("td", { class: "c-path", title: `${record.host || ""}${record.path || ""}`, text: record.path || "" }),
    el(
      "td",
      { class: "c-num" },
      el("span", { class: `status k${String(status)[0]}`, text: status ? String(status) : "—" }),
      record.fault ? el("span", { class: "fault-tag", text: record.fault }) : null,
    ),
    el("td", { class: `c-num dur${duration > 1000 ? " is-very-slow" : duration > 250 ? " is-slow" : ""}`, text: fmtMs(duration) }),
    el("td", { class: "c-endpoint", title: `${record.origin || ""} ${record.endpoint || ""}`, text: servedBy }),
    el("td", { class: "c-trace", title: trace ? `${trace}\nclick: only this trace` : null, dataset: { trace }, text: trace.slice(0, 8) }),
  );
  if (String(record.id) === selectedRequest) tr.classList.add("is-selected");
  return tr;
}

function renderRequests() {
  if (paused) {
    if (dirty.newRequests.length || dirty.requestsRebuild) {
      pausedCount += dirty.newRequests.filter(matches).length;
      dirty.newRequests = [];
      dirty.requestsRebuild = false;
      setText($("#req-pause"), `Resume (${pausedCount} new)`);
    }
    return;
  }
  if (dirty.requestsRebuild) {
    dirty.requestsRebuild = false;
    dirty.newRequests = [];
    const fragment = document.createDocumentFragment();
    let shown = 0;
    for (let i = state.requests.length - 1; i >= 0 && shown < MAX_REQUEST_ROWS; i--) {
      const record = state.requests[i];
      if (!matches(record)) continue;
      fragment.append(requestRow(record));
      shown++;
    }
    requestsBody.textContent = "";
    requestsBody.append(fragment);
  } else {
    const fresh = dirty.newRequests.filter(matches);
    dirty.newRequests = [];
    if (fresh.length) {
      const fragment = document.createDocumentFragment();
      for (let i = fresh.length - 1; i >= 0; i--) fragment.append(requestRow(fresh[i]));
      requestsBody.insertBefore(fragment, requestsBody.firstChild);
      while (requestsBody.childElementCount > MAX_REQUEST_ROWS) requestsBody.lastElementChild.remove();
    }
  }
  const count = requestsBody.childElementCount;
  $("#requests-empty").hidden = count > 0;
  const filtered = filters.service || filters.status || filters.trace;
  setText(
    $("#requests-summary"),
    count ? `${count}${count >= MAX_REQUEST_ROWS ? "+" : ""} ${filtered ? "matching" : "shown"} · ${state.requests.length} kept` : "",
  );
}

function updateRequestServiceOptions() {
  const chooser = $("#req-service");
  const names = new Set([...state.services.keys(), ...knownRequestServices]);
  const sorted = [...names].sort();
  const key = sorted.join("|");
  if (chooser.dataset.key === key) return;
  chooser.dataset.key = key;
  const current = chooser.value;
  chooser.textContent = "";
  chooser.append(el("option", { value: "", text: "all services" }));
  for (const name of sorted) chooser.append(el("option", { value: name, text: name }));
  chooser.value = names.has(current) ? current : "";
}

function refilter() {
  filters.service = $("#req-service").value;
  filters.status = $("#req-status").value;
  filters.trace = $("#req-trace").value.trim().toLowerCase();
  dirty.requestsRebuild = true;
  schedule();
}
$("#req-service").addEventListener("change", refilter);
$("#req-status").addEventListener("change", refilter);
$("#req-trace").addEventListener("input", refilter);
$("#req-pause").addEventListener("click", () => {
  paused = !paused;
  pausedCount = 0;
  const button = $("#req-pause");
  button.setAttribute("aria-pressed", String(paused));
  setText(button, paused ? "Resume" : "Pause");
  dirty.requestsRebuild = true;
  schedule();
});

requestsBody.addEventListener("click", (event) => {
  const tr = event.target.closest("tr[data-id]");
  if (!tr) return;
  const traceCell = event.target.closest("td.c-trace");
  if (traceCell && traceCell.dataset.trace) {
    $("#req-trace").value = traceCell.dataset.trace;
    refilter();
    return;
  }
  showRequest(tr.dataset.id);
});

function showRequest(id) {
  const record = state.requestIndex.get(id);
  const panel = $("#request-detail");
  requestsBody.querySelector("tr.is-selected")?.classList.remove("is-selected");
  if (!record || selectedRequest === id) {
    selectedRequest = null;
    panel.hidden = true;
    return;
  }
  selectedRequest = id;
  requestsBody.querySelector(`tr[data-id="${CSS.escape(id)}"]`)?.classList.add("is-selected");
  panel.textContent = "";
  const status = record.status ?? 0;
  panel.append(
    el(
      "div",
      { class: "rd-head" },
      el("span", { class: `status k${String(status)[0]}`, text: String(status || "—") }),
      el("span", { class: "rd-title", title: record.path, text: `${record.method} ${record.path}` }),
      el("button", { class: "btn btn-ghost rd-close", type: "button", text: "Close", onclick: () => showRequest(id) }),
    ),
  );
  const grid = el("dl", { class: "rd-grid" });
  const row = (label, value) => {
    if (value === null || value === undefined || value === "") return;
    grid.append(el("dt", { text: label }), el("dd", {}, value));
  };
  const when = new Date(record.time * 1000);
  row("time", `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} ${fmtClock(record.time, true)}`);
  row("host", record.host);
  row("service", record.service);
  row("served by", [record.origin, record.endpoint, record.peer].filter(Boolean).join(" · "));
  row("duration", fmtMs(record.duration_ms));
  row("bytes", `${fmtBytes(record.request_bytes)} in · ${fmtBytes(record.response_bytes)} out`);
  if (record.trace_id) {
    row(
      "trace id",
      el("button", {
        class: "link-btn mono",
        type: "button",
        text: record.trace_id,
        title: "Show only this trace",
        onclick: () => {
          $("#req-trace").value = record.trace_id;
          refilter();
        },
      }),
    );
  }
  row("traceparent", record.traceparent);
  row("fault", record.fault);
  row("request id", String(record.id));
  panel.append(grid);
  const actions = el("div", { class: "rd-actions" });
  const replay = el("button", {
    class: "btn",
    type: "button",
    text: "Replay",
    "data-action": "replay",
    disabled: !token,
    title: token ? "Send this request again through the proxy, with its headers" : READ_ONLY_HINT,
  });
  replay.addEventListener("click", () => replayRequest(record, replay));
  actions.append(replay);
  panel.append(actions);
  const section = el("div", { class: "rd-section", text: "Request headers" });
  const table = el("table", { class: "rd-headers" });
  panel.append(section, table);
  panel.hidden = false;
  const fill = (headers) => {
    section.textContent = `Request headers (${headers.length})`;
    table.textContent = "";
    for (const [name, value] of headers) table.append(el("tr", {}, el("td", { text: name }), el("td", { text: value })));
  };
  if (record.request_headers) {
    fill(record.request_headers);
    return;
  }
  // The stream carries request summaries; the headers of one are read when it is opened.
  table.append(el("tr", {}, el("td", { class: "muted", text: "loading…" })));
  fetch(`/api/v1/requests/${encodeURIComponent(id)}`)
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(String(response.status)))))
    .then((full) => {
      record.request_headers = full.request_headers || [];
      if (selectedRequest === id) fill(record.request_headers);
    })
    .catch(() => {
      if (selectedRequest !== id) return;
      table.textContent = "";
      table.append(el("tr", {}, el("td", { text: "the agent no longer keeps this request" })));
    });
}

async function replayRequest(record, button) {
  if (!token) return;
  button.classList.add("is-busy");
  try {
    const response = await fetch(`/api/v1/requests/${encodeURIComponent(record.id)}/replay`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      toast(`Replayed ${record.method} ${record.path}: ${body.status} in ${fmtMs(body.duration_ms)}`);
    } else toast(body.error || `${response.status} ${response.statusText}`, true);
  } catch (error) {
    toast(`The agent did not answer: ${error.message || error}`, true);
  } finally {
    button.classList.remove("is-busy");
  }
}

// -- activity ----------------------------------------------------------------------------------------------

function renderActivity() {
  const list = $("#activity");
  const fresh = dirty.activity;
  dirty.activity = [];
  const fragment = document.createDocumentFragment();
  for (let i = fresh.length - 1; i >= 0; i--) {
    const entry = fresh[i];
    fragment.append(
      el(
        "li",
        { class: `${entry.cls} is-new` },
        el("time", { text: fmtClock(entry.time) }),
        el("span", { class: "a-text" }, ...entry.parts.map((p) => (p instanceof Node ? p.cloneNode(true) : p))),
      ),
    );
  }
  list.insertBefore(fragment, list.firstChild);
  while (list.childElementCount > MAX_ACTIVITY) list.lastElementChild.remove();
}

// -- keyboard ----------------------------------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, select, textarea");
  if (event.key === "/" && !typing) {
    event.preventDefault();
    serviceFilter.focus();
  } else if (event.key === "Escape") {
    if (typing) event.target.blur();
    else if (selectedRequest) showRequest(selectedRequest);
    else if (state.selected) select(null);
  }
});

$("#connection").addEventListener("click", () => {
  if (state.connection === "disconnected") reconnectNow();
});

// ---------------------------------------------------------------------------------------------------------

schedule();
connect();
