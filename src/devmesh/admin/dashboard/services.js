// The services table: one keyed row per service, updated in place; its filter, its buttons (restart, stop,
// start) and its route menu. Clicking a row shows that service in the charts.

import { READ_ONLY_HINT, act, token } from "./api.js";
import { setColorOrder } from "./charts.js";
import { $, el, setAttr, setClass, setText } from "./dom.js";
import { enabledFaultsByService, matching, updateFaultServiceOptions } from "./faults.js";
import { updateTitle } from "./header.js";
import { updateRequestServiceOptions } from "./requests.js";
import { updateScenarioTargets } from "./scenarios.js";
import { dirty, select, state } from "./state.js";

export const rows = new Map(); // name -> row handles
const servicesBody = $("#services tbody");
const rowTemplate = document.createElement("template");
rowTemplate.innerHTML = `<tr>
<td class="c-name"><a class="svc-name" data-field="name" target="_blank" rel="noopener"></a><span class="svc-pin" data-field="pin"></span><span class="svc-fault" data-field="faults" hidden>⚡</span><span class="svc-detail" data-field="detail"></span></td>
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
    faults: field("faults"),
    detail: field("detail"),
    state: field("state"),
    health: field("health"),
    origin: field("origin"),
    version: field("version"),
    endpoints: field("endpoints"),
    restarts: field("restarts"),
    pid: field("pid"),
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
  const source = { docker: "a Docker container", kubernetes: "a Kubernetes Service" }[s.origin] || `a ${s.origin}`;
  const why = managed ? null : `${s.name} is served by ${source}: nothing to start or stop here`;
  for (const button of [row.restart, row.stop, row.start]) {
    const busy = button.classList.contains("is-busy");
    button.disabled = !token || !managed || busy;
    setAttr(button, "title", readOnlyTitle || why || `${button.dataset.action} ${s.name}`);
  }
  row.select.disabled = !token;
  setAttr(row.select, "title", readOnlyTitle || "Where requests for this service go");
}

export function renderServices() {
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
    updateFaultServiceOptions();
    updateScenarioTargets();
    renderServiceFaults();
    applyServiceFilter();
    dirty.traffic = true; // new rows need their sparkline
  }
  renderServicesSummary();
  updateTitle();
}

// the ⚡ badge of the services that an enabled fault touches, with the faults in its tooltip
export function renderServiceFaults() {
  const touched = enabledFaultsByService();
  for (const row of rows.values()) {
    const faults = touched.get(row.name) || [];
    row.faults.hidden = !faults.length;
    row.tr.classList.toggle("has-fault", faults.length > 0);
    const names = faults.map((f) => f.name).join(",");
    if (row.faults.dataset.faults === names) continue;
    row.faults.dataset.faults = names;
    setText(row.faults, faults.length > 1 ? `⚡${faults.length}` : "⚡");
    const lines = faults.map((f) => {
      const match = matching(f);
      return `${f.name}: ${f.does}${match ? ` (${match})` : ""}`;
    });
    setAttr(row.faults, "title", faults.length ? `Faults on ${row.name}:\n${lines.join("\n")}` : null);
    setAttr(row.faults, "aria-label", faults.length ? `faults: ${names}` : null);
  }
}

function orderRows() {
  const names = [...rows.keys()].sort((a, b) => a.localeCompare(b));
  setColorOrder(names);
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

// after the token changed: every row's buttons say whether they can act
export function refreshActions() {
  for (const row of rows.values()) updateActions(row, state.services.get(row.name));
}

let selectedRow = null;
export function renderSelectedRow() {
  if (selectedRow) selectedRow.classList.remove("is-selected");
  selectedRow = state.selected ? rows.get(state.selected)?.tr || null : null;
  if (selectedRow) selectedRow.classList.add("is-selected");
}

export function focusFilter() {
  serviceFilter.focus();
}
