// The recent requests: a table of the last ones (newest first, filtered by service, status class and trace
// id, paused on demand) and the details of one, with its headers and a replay button.

import { READ_ONLY_HINT, toast, token } from "./api.js";
import { $, el, setText } from "./dom.js";
import { fmtBytes, fmtClock, fmtMs, pad } from "./format.js";
import { MAX_REQUEST_ROWS, dirty, knownRequestServices, schedule, state } from "./state.js";

const requestsBody = $("#requests tbody");
const filters = { service: "", status: "", trace: "" };
let paused = false;
let pausedCount = 0;
let selectedRequest = null;

function matches(record) {
  if (filters.service && record.service !== filters.service) return false;
  if (filters.status === "fault") {
    if (!record.fault) return false;
  } else if (filters.status && String(record.status ?? 0)[0] !== filters.status) return false;
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
      record.fault ? el("span", { class: "fault-tag", title: `touched by the fault ${record.fault}`, text: `⚡ ${record.fault}` }) : null,
    ),
    el("td", { class: `c-num dur${duration > 1000 ? " is-very-slow" : duration > 250 ? " is-slow" : ""}`, text: fmtMs(duration) }),
    el("td", { class: "c-endpoint", title: `${record.origin || ""} ${record.endpoint || ""}`, text: servedBy }),
    el("td", { class: "c-trace", title: trace ? `${trace}\nclick: only this trace` : null, dataset: { trace }, text: trace.slice(0, 8) }),
  );
  if (record.fault) {
    tr.dataset.fault = record.fault; // the faults that touched it, as in X-DevMesh-Fault
    tr.classList.add("has-fault");
  }
  if (String(record.id) === selectedRequest) tr.classList.add("is-selected");
  return tr;
}

export function renderRequests() {
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

export function updateRequestServiceOptions() {
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

// Escape: close the details if they are open
export function closeRequest() {
  if (!selectedRequest) return false;
  showRequest(selectedRequest);
  return true;
}
