// The page's state, what changed since the last frame, and the frame that draws it.
//
// State comes ONLY from the events stream (stream.js): the `hello` message replaces everything, later events
// patch it. Rendering is keyed and incremental: events mark what changed in `dirty`, one
// requestAnimationFrame applies it (app.js's render) and clears it.

export const WINDOW = 60; // seconds of traffic kept for the charts and sparklines
export const MAX_REQUEST_ROWS = 200; // rows shown in the requests table

export const state = {
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
  faults: [], // every fault, as /api/v1/faults: config (on or off), run-time, those of running scenarios
  scenarios: [], // running scenarios: {name, started_at, ends_at, faults, partitioned}
  injected: {}, // fault name -> requests it touched (totals, from the traffic messages)
  skew: 0, // the agent's clock minus this page's, in seconds (from the messages' `time`)
};

// The agent's clock, as near as this page can tell: scenario countdowns are computed against it.
export function agentNow() {
  return Date.now() / 1000 + state.skew;
}

export const knownRequestServices = new Set(); // services seen in requests, for the requests filter

// What changed since the last frame: render() applies exactly this, then clears it.
export const dirty = {
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
  faults: true, // the faults panel and the services' fault badges
  injected: false, // only the faults' counts
  scenarios: true, // the running scenarios' banners
};

export const exposed = {
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


let frame = 0;
let draw = () => {};

// The function that applies `dirty`: app.js's render, set once at start.
export function onFrame(render) {
  draw = render;
}

export function schedule() {
  if (!frame) {
    frame = requestAnimationFrame(() => {
      frame = 0;
      draw();
    });
  }
}

// Which service the charts show (null: all); a click on a row, a node or a legend entry.
export function select(name) {
  state.selected = name;
  dirty.selection = dirty.traffic = true;
  schedule();
}
