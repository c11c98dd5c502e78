// The faults panel: one keyed row per fault (the config's, those added at run time, those of running
// scenarios), with its switch, what it does, what it matches, where it comes from and how many requests it
// touched (live, from the traffic messages); the "add fault" form and "clear all". Everything shown comes
// from the events stream; the buttons act through the admin API and their results come back as events.

import { READ_ONLY_HINT, act, send, token } from "./api.js";
import { $, el, setAttr, setClass, setText } from "./dom.js";
import { dirty, exposed, state } from "./state.js";

const rows = new Map(); // source + name -> row handles (a config fault and its scenario copy share a name)
const faultsBody = $("#faults tbody");
const rowTemplate = document.createElement("template");
rowTemplate.innerHTML = `<tr>
<td class="c-switch"><button class="switch" type="button" role="switch" data-action="toggle-fault" aria-checked="false"><i></i></button></td>
<td class="c-name"><span class="fault-name" data-field="name"></span></td>
<td class="c-service" data-field="service"></td>
<td class="c-does" data-field="does"></td>
<td class="c-match" data-field="match"></td>
<td class="c-source"><span class="source" data-field="source"></span></td>
<td class="c-num" data-field="injected">0</td>
<td class="c-actions"><button class="btn" type="button" data-action="remove-fault">Remove</button></td>
</tr>`;

let drawn = false; // rows that appear after the first frame flash
const rowKey = (fault) => `${fault.source}\u0000${fault.name}`;

// requests a fault touched: the traffic messages' totals, or the fault event's when it is newer
export function injectedCount(fault) {
  return Math.max(fault.injected || 0, state.injected[fault.name] || 0);
}

// what a fault matches: methods, paths, headers; "every request" when it does not choose
export function matching(fault) {
  const parts = [];
  if (fault.methods?.length) parts.push(fault.methods.join(" "));
  if (fault.paths?.length) parts.push(fault.paths.join(", "));
  for (const [name, value] of Object.entries(fault.headers || {})) parts.push(`${name}: ${value}`);
  return parts.join(" · ");
}

function createRow(fault) {
  const tr = rowTemplate.content.firstElementChild.cloneNode(true);
  tr.dataset.fault = fault.name;
  tr.dataset.source = fault.source;
  const field = (f) => tr.querySelector(`[data-field="${f}"]`);
  const row = {
    key: rowKey(fault),
    tr,
    toggle: tr.querySelector('[data-action="toggle-fault"]'),
    name: field("name"),
    service: field("service"),
    does: field("does"),
    match: field("match"),
    source: field("source"),
    injected: field("injected"),
    remove: tr.querySelector('[data-action="remove-fault"]'),
    fault,
    count: null,
  };
  setText(row.name, fault.name);
  return row;
}

function updateRow(row, fault) {
  row.fault = fault;
  const on = Boolean(fault.enabled);
  row.tr.dataset.enabled = String(on);
  row.tr.classList.toggle("is-off", !on);
  setAttr(row.toggle, "aria-checked", String(on));
  setText(row.service, fault.service);
  setText(row.does, fault.does);
  const match = matching(fault);
  setText(row.match, match || "every request");
  row.match.classList.toggle("muted", !match);
  setAttr(row.match, "title", match || null);
  const scenario = fault.source.startsWith("scenario:") ? fault.source.slice("scenario:".length) : null;
  setText(row.source, scenario ? `scenario ${scenario}` : fault.source);
  setClass(row.source, `source src-${scenario ? "scenario" : fault.source}`);
  updateCount(row);
  updateActions(row);
}

function updateCount(row) {
  const count = injectedCount(row.fault);
  if (row.count === count) return;
  const grew = row.count !== null && count > row.count;
  row.count = count;
  setText(row.injected, count.toLocaleString("en-US"));
  row.injected.dataset.count = String(count);
  row.injected.classList.toggle("is-hot", count > 0);
  if (grew) row.injected.animate([{ color: "#eef2f8" }, { color: "" }], { duration: 700, easing: "ease-out" });
}

function updateActions(row) {
  const fault = row.fault;
  const scenario = fault.source.startsWith("scenario:") ? fault.source.slice("scenario:".length) : null;
  const busy = row.toggle.classList.contains("is-busy");
  row.toggle.disabled = !token || Boolean(scenario) || busy;
  let title;
  if (!token) title = READ_ONLY_HINT;
  else if (scenario) title = `Part of the scenario ${scenario}: it ends with it (Stop on its banner)`;
  else title = fault.enabled ? `Switch ${fault.name} off` : `Switch ${fault.name} on`;
  setAttr(row.toggle, "title", title);
  setAttr(row.toggle, "aria-label", `${fault.name} on`);
  row.remove.hidden = fault.source !== "runtime";
  row.remove.disabled = !token || row.remove.classList.contains("is-busy");
  setAttr(row.remove, "title", token ? `Remove ${fault.name}` : READ_ONLY_HINT);
}

export function renderFaults() {
  dirty.faults = false;
  dirty.injected = false;
  const seen = new Set();
  let previous = null;
  for (const fault of state.faults) {
    const key = rowKey(fault);
    if (seen.has(key)) continue;
    seen.add(key);
    let row = rows.get(key);
    const fresh = !row;
    if (fresh) {
      row = createRow(fault);
      rows.set(key, row);
    }
    updateRow(row, fault);
    const expected = previous ? previous.nextSibling : faultsBody.firstChild;
    if (row.tr !== expected) faultsBody.insertBefore(row.tr, expected);
    previous = row.tr;
    if (fresh && drawn) {
      // in the document first: an animation started on a detached row can leave its colour behind
      row.tr.animate([{ backgroundColor: "rgba(227, 179, 65, 0.16)" }, { backgroundColor: "transparent" }], {
        duration: 1200,
        easing: "ease-out",
      });
    }
  }
  for (const [key, row] of rows) {
    if (!seen.has(key)) {
      row.tr.remove();
      rows.delete(key);
    }
  }
  drawn = exposed.hellos > 0;
  $("#faults-empty").hidden = rows.size > 0;
  renderFaultsSummary();
  updateClear();
}

// the traffic messages moved the counts: only those cells change
export function renderInjected() {
  dirty.injected = false;
  for (const row of rows.values()) updateCount(row);
}

function renderFaultsSummary() {
  const summary = $("#faults-summary");
  summary.textContent = "";
  const on = state.faults.filter((f) => f.enabled).length;
  if (!state.faults.length && !state.scenarios.length) {
    summary.append("none in force");
    return;
  }
  summary.append(el("b", { text: String(state.faults.length) }), state.faults.length === 1 ? " fault" : " faults");
  summary.append(" · ", on ? el("span", { class: "s-warn", text: `${on} on` }) : "none on");
  const running = state.scenarios.length;
  if (running) summary.append(" · ", el("span", { class: "s-warn", text: `${running} scenario${running === 1 ? "" : "s"} running` }));
}

// Which services enabled faults touch: name -> [fault]. The services table's badges.
export function enabledFaultsByService() {
  const found = new Map();
  for (const fault of state.faults) {
    if (!fault.enabled) continue;
    if (!found.has(fault.service)) found.set(fault.service, []);
    found.get(fault.service).push(fault);
  }
  return found;
}

// -- the switches and the remove buttons ------------------------------------------------------------------

faultsBody.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  const tr = event.target.closest("tr[data-fault]");
  if (!button || !tr) return;
  const row = [...rows.values()].find((r) => r.tr === tr);
  if (!row) return;
  const name = encodeURIComponent(row.fault.name);
  let request;
  if (button.dataset.action === "toggle-fault") {
    request = act("POST", `/api/v1/faults/${name}/${row.fault.enabled ? "disable" : "enable"}`);
  } else if (button.dataset.action === "remove-fault") {
    request = act("DELETE", `/api/v1/faults/${name}`);
  } else return;
  button.classList.add("is-busy");
  button.disabled = true;
  request.then(() => {
    button.classList.remove("is-busy");
    updateActions(row);
  });
});

// -- clear all: a second click within 3 s confirms --------------------------------------------------------

const clearButton = $("#faults-clear");
let clearArmed = 0;

function updateClear() {
  const nothing = !state.faults.some((f) => f.enabled || f.source === "runtime") && !state.scenarios.length;
  clearButton.disabled = !token || nothing || clearButton.classList.contains("is-busy");
  setAttr(
    clearButton,
    "title",
    token ? "Remove the run-time faults, switch the config's off and stop every scenario" : READ_ONLY_HINT,
  );
  if (nothing) disarmClear();
}

function disarmClear() {
  clearTimeout(clearArmed);
  clearArmed = 0;
  clearButton.classList.remove("is-armed");
  setText(clearButton, "Clear all");
}

clearButton.addEventListener("click", () => {
  if (!clearArmed) {
    clearButton.classList.add("is-armed");
    setText(clearButton, "Clear all faults?");
    clearArmed = setTimeout(disarmClear, 3000);
    return;
  }
  disarmClear();
  clearButton.classList.add("is-busy");
  act("DELETE", "/api/v1/faults").then(() => {
    clearButton.classList.remove("is-busy");
    updateClear();
  });
});

// after the token changed
export function refreshFaultActions() {
  for (const row of rows.values()) updateActions(row);
  updateClear();
  for (const button of [$("#fault-add"), $("#scenario-open")]) {
    button.disabled = !token;
    setAttr(button, "title", token ? null : READ_ONLY_HINT);
  }
}

// -- the "add fault" form -----------------------------------------------------------------------------------

const form = $("#fault-form");
const addButton = $("#fault-add");
const KINDS = {
  delay: { label: "Delay", placeholder: "300ms or 100ms..800ms", key: "delay" },
  abort: { label: "Status", placeholder: "503", key: "abort" },
  "outage-503": { label: "", placeholder: "", key: "outage", value: "503" },
  "outage-reset": { label: "", placeholder: "", key: "outage", value: "reset" },
  bandwidth: { label: "Rate of bytes", placeholder: "64KB/s", key: "bandwidth" },
};

// the services a fault can be for (this agent's and its peers'), kept current while the form is open
export function updateFaultServiceOptions() {
  const chooser = form.elements.service;
  const names = [...state.services.keys()].sort();
  const key = names.join("|");
  if (chooser.dataset.key === key) return;
  chooser.dataset.key = key;
  const current = chooser.value;
  chooser.textContent = "";
  for (const name of names) chooser.append(el("option", { value: name, text: name }));
  if (names.includes(current)) chooser.value = current;
  else if (state.selected && names.includes(state.selected)) chooser.value = state.selected;
}

function showKind() {
  const kind = KINDS[form.elements.kind.value];
  const label = form.querySelector('[data-field="value-label"]');
  label.hidden = !kind.label;
  setText(label.querySelector('[data-field="value-name"]'), kind.label);
  form.elements.value.placeholder = kind.placeholder;
}

function formError(target, message) {
  const box = target.querySelector('[data-field="error"]');
  setText(box, message || "");
  box.hidden = !message;
}

export function closeForms() {
  let closed = false;
  for (const [panel, button] of [
    [form, addButton],
    [$("#scenario-form"), $("#scenario-open")],
  ]) {
    if (!panel.hidden) closed = true;
    panel.hidden = true;
    button.setAttribute("aria-expanded", "false");
  }
  return closed;
}

addButton.addEventListener("click", () => {
  const opening = form.hidden;
  closeForms();
  if (!opening) return;
  updateFaultServiceOptions();
  showKind();
  formError(form, "");
  form.hidden = false;
  addButton.setAttribute("aria-expanded", "true");
  form.elements.name.focus();
});

form.elements.kind.addEventListener("change", showKind);
form.querySelector('[data-action="cancel"]').addEventListener("click", closeForms);

// the fault the form describes, as POST /api/v1/faults takes it; or a string saying what is missing
function faultBody() {
  const fields = form.elements;
  const name = fields.name.value.trim();
  if (!name) return "A fault needs a name (letters, digits, - _ . :).";
  if (!fields.service.value) return "There is no service to put a fault on.";
  const kind = KINDS[fields.kind.value];
  const body = { name, service: fields.service.value };
  if (kind.value) body[kind.key] = kind.value;
  else {
    const value = fields.value.value.trim();
    if (!value) return `${kind.label}: write a value, e.g. ${kind.placeholder.split(" or ")[0]}.`;
    body[kind.key] = kind.key === "abort" && /^\d+$/.test(value) ? Number(value) : value;
  }
  const rate = fields.rate.value.trim();
  if (rate !== "" && Number(rate) !== 1) body.rate = Number.isNaN(Number(rate)) ? rate : Number(rate);
  const paths = fields.path.value.split(/[\s,]+/).filter(Boolean);
  if (paths.length) body.paths = paths;
  return body;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = faultBody();
  if (typeof body === "string") {
    formError(form, body);
    return;
  }
  const submit = form.querySelector('button[type="submit"]');
  submit.classList.add("is-busy");
  formError(form, "");
  const result = await send("POST", "/api/v1/faults", body);
  submit.classList.remove("is-busy");
  if (result.ok) {
    form.elements.name.value = "";
    closeForms();
  } else if (!result.shown) formError(form, result.error);
});
