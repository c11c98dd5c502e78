// devmesh dashboard. Plain ES modules, no build step, no network beyond the agent's own admin API.
//
// State comes ONLY from the WebSocket /api/v1/events (stream.js): the `hello` message replaces everything,
// later events patch it (faults and scenarios included: `fault`, `scenario`, and the traffic messages' counts
// of injected faults). Nothing polls; the only read besides the stream is the list of scenarios that can be
// run, when the user opens that form. Actions are fetch POST/DELETE with the write token (api.js); their
// results come back as events. Rendering is keyed and incremental: events mark what changed (state.js's
// `dirty`), one requestAnimationFrame applies it: render() below.

import { renderActivity } from "./activity.js";
import { token } from "./api.js";
import { renderCharts, renderScope, renderSparklines, trafficWindow } from "./charts.js";
import { $ } from "./dom.js";
import { closeForms, refreshFaultActions, renderFaults, renderInjected } from "./faults.js";
import { beat, renderHeader } from "./header.js";
import { renderPeers } from "./peers.js";
import { closeRequest, renderRequests } from "./requests.js";
import { refreshScenarioActions, renderScenarios } from "./scenarios.js";
import { focusFilter, refreshActions, renderSelectedRow, renderServiceFaults, renderServices, rows } from "./services.js";
import { dirty, exposed, onFrame, schedule, select, state } from "./state.js";
import { connect, reconnectNow } from "./stream.js";
import { renderSelectedNode, renderTopology } from "./topology.js";

function render() {
  exposed.renders++;
  const started = performance.now();
  if (dirty.readOnly) renderReadOnly();
  if (dirty.header) renderHeader();
  if (dirty.removed.size || dirty.services.size || dirty.serviceSet) renderServices();
  if (dirty.faults) {
    renderFaults();
    renderServiceFaults();
  } else if (dirty.injected) renderInjected();
  if (dirty.scenarios) renderScenarios();
  if (dirty.selection) renderSelection();
  if (dirty.traffic) renderTraffic();
  if (dirty.topology) renderTopology();
  if (dirty.peers) renderPeers();
  if (dirty.requestsRebuild || dirty.newRequests.length) renderRequests();
  if (dirty.activity.length) renderActivity();
  exposed.renderMs = performance.now() - started;
  if (exposed.renderMs > exposed.maxRenderMs) exposed.maxRenderMs = exposed.renderMs;
}

function renderReadOnly() {
  dirty.readOnly = false;
  $("#readonly").hidden = Boolean(token);
  document.body.classList.toggle("is-read-only", !token);
  refreshActions();
  refreshFaultActions();
  refreshScenarioActions();
}

// the service the charts show: its row, its node, the charts' scope
function renderSelection() {
  dirty.selection = false;
  renderSelectedRow();
  renderScope();
  renderSelectedNode();
}

function renderTraffic() {
  dirty.traffic = false;
  if (state.connection === "live") beat();
  const win = trafficWindow();
  renderSparklines(win, rows);
  renderCharts(win);
}

// -- keyboard ----------------------------------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, select, textarea");
  if (event.key === "/" && !typing) {
    event.preventDefault();
    focusFilter();
  } else if (event.key === "Escape") {
    if (typing) event.target.blur();
    else if (!closeRequest() && !closeForms() && state.selected) select(null);
  }
});

$("#connection").addEventListener("click", () => {
  if (state.connection === "disconnected") reconnectNow();
});

// ---------------------------------------------------------------------------------------------------------

onFrame(render);
schedule();
connect();
