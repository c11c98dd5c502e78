// The events stream (GET /api/v1/events, a WebSocket) and the state it builds: the `hello` message replaces
// everything, later events patch it and mark what changed for the next frame. Nothing polls. The socket
// reconnects by itself, with a backoff, when the agent goes away.

import { log } from "./activity.js";
import { el } from "./dom.js";
import { fmtSeconds } from "./format.js";
import { setConnection } from "./header.js";
import { MAX_REQUEST_ROWS, WINDOW, dirty, exposed, knownRequestServices, schedule, state } from "./state.js";

const MAX_REQUESTS = 2000; // records kept in memory
const WATCHDOG_MS = 10_000; // traffic arrives every second: a silent socket this long is dead
const CLOSE_BEHIND = 1013; // the agent's close code for a client that fell too far behind

let socket = null;
let attempt = 0;
let retryTimer = 0;
let watchdog = 0;
let trafficSeen = false;

function eventsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/v1/events`;
}

export function connect() {
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
    if (message.type === "overflow") {
      startOver(ws);
      return;
    }
    armWatchdog(ws);
    handle(message);
  };
  ws.onclose = (event) => {
    if (ws !== socket) return;
    if (event.code === CLOSE_BEHIND) {
      startOver(ws);
      return;
    }
    socket = null;
    scheduleReconnect();
  };
}

// The agent gives up on a client 2,000 messages behind: an `overflow` message, then a close with 1013. The
// state here misses what was dropped, and the agent is up: connect again at once, for a new hello, rather
// than after a backoff.
function startOver(ws) {
  socket = null;
  clearTimeout(watchdog);
  exposed.connected = false;
  ws.close();
  log(null, "a-warn", ["fell behind the events stream: reloading the state"]);
  schedule();
  attempt = 0;
  connect();
}

function armWatchdog(ws) {
  clearTimeout(watchdog);
  if (!trafficSeen) return;
  watchdog = setTimeout(() => {
    if (ws !== socket) return;
    socket = null;
    ws.close(); // without a code, close() never throws (a closed socket ignores it)
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

export function reconnectNow() {
  if (socket) return;
  attempt = 0;
  connect();
}

// -- messages ----------------------------------------------------------------------------------------------

function handle(message) {
  exposed.messages++;
  exposed.lastEventTime = message.time ?? null;
  exposed.lastEventAt = Date.now();
  exposed.lastEventType = message.type;
  followClock(message);
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
    case "fault":
      onFault(message);
      break;
    case "scenario":
      onScenario(message);
      break;
    case "traffic":
      onTraffic(message);
      break;
    default:
      return;
  }
  schedule();
}

// The agent's clock against this page's, for the scenarios' countdowns. A message's `time` is the agent's
// clock when it was sent, so time - arrival is the offset less the message's delay: the largest seen is the
// nearest. A hello starts over (maybe another agent), and a clearly lower one is the clock having moved.
function followClock(message) {
  if (typeof message.time !== "number") return;
  const offset = message.time - Date.now() / 1000;
  if (message.type === "hello" || offset > state.skew || offset < state.skew - 1) state.skew = offset;
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
  state.faults = status.faults || [];
  state.scenarios = status.scenarios || [];
  const traffic = message.traffic || [];
  state.injected = { ...(traffic.at(-1)?.faults_injected || {}) };
  state.traffic = traffic.slice(-WINDOW).map((t) => ({ time: t.time, services: t.services || {} }));
  state.requests = [];
  state.requestIndex.clear();
  for (const record of message.requests || []) addRequest(record);
  dirty.newRequests = [];
  dirty.requestsRebuild = true;
  dirty.header = dirty.serviceSet = dirty.traffic = dirty.topology = dirty.peers = dirty.selection = true;
  dirty.faults = dirty.scenarios = true;
  if (state.selected && !fresh.has(state.selected)) state.selected = null;
  const pid = state.agent ? ` (agent pid ${state.agent.pid})` : "";
  log(message.time, "a-info", reconnect ? ["reconnected", pid] : ["connected", pid]);
}

function onService(message) {
  followRevision(message);
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
  followRevision(message);
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

// `service` and `service_removed` carry the revision of the mesh snapshot they come from: the header's
// "rev" follows it (the hello's status has the revision as of connecting).
function followRevision(message) {
  if (typeof message.revision !== "number" || !state.agent || state.agent.revision === message.revision) return;
  state.agent = { ...state.agent, revision: message.revision };
  dirty.header = true;
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

// `fault` and `scenario` carry the whole list of faults and of running scenarios: they replace both.
function takeFaults(message) {
  state.faults = message.faults || [];
  const running = (message.scenarios || []).map((s) => s.name).join("|");
  if (running !== state.scenarios.map((s) => s.name).join("|")) dirty.peers = true; // partitions
  state.scenarios = message.scenarios || [];
  dirty.faults = dirty.scenarios = true;
}

function onFault(message) {
  takeFaults(message);
  const cls = message.event === "added" || message.event === "enabled" ? "a-warn" : "a-info";
  if (message.event === "cleared") log(message.time, "a-info", ["all faults cleared, scenarios stopped"]);
  else log(message.time, cls, ["fault ", el("b", { text: message.fault || "" }), ` ${message.event}`]);
}

function onScenario(message) {
  takeFaults(message);
  const name = el("b", { text: message.scenario || "" });
  if (message.event === "started") {
    const seconds = Math.max(0, Math.round((message.ends_at || 0) - (message.time || 0)));
    log(message.time, "a-warn", ["scenario ", name, ` started for ${fmtSeconds(seconds)}`]);
  } else log(message.time, "a-good", ["scenario ", name, ` ${message.event}`]);
}

function onTraffic(message) {
  exposed.samples++;
  trafficSeen = true;
  if (message.faults_injected) {
    const injected = message.faults_injected;
    const moved = Object.keys(injected).some((name) => injected[name] !== state.injected[name]);
    state.injected = { ...injected };
    if (moved) dirty.injected = true;
  }
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
