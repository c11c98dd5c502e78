// Chaos scenarios: a banner for each running one, counting down to its end every second (on the page, from
// its `ends_at`: the agent owns the timer and says on the stream when the scenario ended), with a Stop
// button; and the "run a scenario" form. The scenarios that can be run are not on the stream: the form reads
// them (GET /api/v1/scenarios) when the user opens it.

import { READ_ONLY_HINT, act, send, token } from "./api.js";
import { $, el, setAttr, setText } from "./dom.js";
import { closeForms } from "./faults.js";
import { fmtSeconds } from "./format.js";
import { agentNow, dirty, state } from "./state.js";

const DEFAULT_DURATION = "30s";
const banners = new Map(); // name -> banner handles
const box = $("#scenarios");
let ticker = 0;

// what a running scenario does, from the faults it brought and the peers it cuts this agent off from
function describeRunning(scenario) {
  const parts = state.faults
    .filter((f) => f.source === `scenario:${scenario.name}`)
    .map((f) => `${f.service}: ${f.does}`);
  for (const peer of scenario.partitioned || []) parts.push(`cut off from peer ${peer}`);
  return parts.join(" · ");
}

function createBanner(scenario) {
  const remaining = el("b", { dataset: { field: "remaining" } });
  const leftLabel = el("span", { dataset: { field: "left-label" }, text: "left" });
  const bar = el("i", { dataset: { field: "progress" } });
  const stop = el("button", { class: "btn", type: "button", "data-action": "stop-scenario", text: "Stop" });
  const what = el("span", { class: "scenario-what", dataset: { field: "what" } });
  const node = el(
    "div",
    { class: "scenario", dataset: { scenario: scenario.name } },
    el("span", { class: "scenario-bolt", "aria-hidden": "true", text: "⚡" }),
    el("span", { class: "scenario-title" }, "Scenario ", el("b", { text: scenario.name })),
    what,
    el("span", { class: "scenario-bar", "aria-hidden": "true" }, bar),
    el("span", { class: "scenario-left" }, remaining, " ", leftLabel),
    stop,
  );
  stop.addEventListener("click", () => {
    stop.classList.add("is-busy");
    stop.disabled = true;
    act("DELETE", `/api/v1/scenarios/${encodeURIComponent(scenario.name)}`).then(() => {
      stop.classList.remove("is-busy");
      stop.disabled = !token;
    });
  });
  return { node, remaining, leftLabel, bar, stop, what, scenario, shown: null };
}

export function renderScenarios() {
  dirty.scenarios = false;
  const running = new Set(state.scenarios.map((s) => s.name));
  for (const [name, banner] of banners) {
    if (!running.has(name)) {
      banner.node.remove();
      banners.delete(name);
    }
  }
  for (const scenario of state.scenarios) {
    let banner = banners.get(scenario.name);
    if (!banner) {
      banner = createBanner(scenario);
      banners.set(scenario.name, banner);
      box.append(banner.node);
    }
    if (banner.scenario.ends_at !== scenario.ends_at) banner.shown = null; // run again: a new clock
    banner.scenario = scenario;
    banner.node.dataset.endsAt = String(scenario.ends_at);
    setText(banner.what, describeRunning(scenario));
    banner.stop.disabled = !token || banner.stop.classList.contains("is-busy");
    setAttr(banner.stop, "title", token ? `Stop ${scenario.name} now` : READ_ONLY_HINT);
  }
  tick();
}

// Once a second (on the second of each countdown): the time left and the bar. No request: the clock is
// the page's, set to the agent's by the stream's messages.
function tick() {
  clearTimeout(ticker);
  ticker = 0;
  if (!banners.size) return;
  const now = agentNow();
  let next = 1000;
  for (const banner of banners.values()) {
    const { started_at: started, ends_at: ends } = banner.scenario;
    const left = Math.min(ends - now, ends - started); // never more than its whole length
    const seconds = Math.max(0, Math.ceil(left));
    if (banner.shown !== seconds) {
      banner.shown = seconds;
      setText(banner.remaining, fmtSeconds(seconds));
      banner.remaining.dataset.seconds = String(seconds);
      setText(banner.leftLabel, seconds > 0 ? "left" : "· ending");
      banner.node.classList.toggle("is-ending", seconds === 0);
    }
    const total = Math.max(0.001, ends - started);
    const done = Math.min(1, Math.max(0, (now - started) / total));
    banner.bar.style.transform = `scaleX(${(1 - done).toFixed(4)})`;
    if (left > 0) next = Math.min(next, (left - Math.floor(left)) * 1000 || 1000);
  }
  ticker = setTimeout(tick, Math.max(40, next + 15));
}

// -- the "run a scenario" form -------------------------------------------------------------------------------

const form = $("#scenario-form");
const openButton = $("#scenario-open");
let available = []; // as GET /api/v1/scenarios answered when the form was opened
let durationTouched = false;

function formError(message) {
  const errorBox = form.querySelector('[data-field="error"]');
  setText(errorBox, message || "");
  errorBox.hidden = !message;
}

openButton.addEventListener("click", async () => {
  const opening = form.hidden;
  closeForms();
  if (!opening) return;
  form.hidden = false;
  openButton.setAttribute("aria-expanded", "true");
  formError("");
  durationTouched = false;
  form.elements.duration.value = DEFAULT_DURATION;
  const chooser = form.elements.scenario;
  chooser.textContent = "";
  chooser.append(el("option", { value: "", text: "loading…" }));
  chooser.disabled = true;
  try {
    const response = await fetch("/api/v1/scenarios");
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    available = await response.json();
  } catch (error) {
    available = [];
    formError(`Could not read the scenarios: ${error.message || error}`);
  }
  fillScenarios();
});

function fillScenarios() {
  const chooser = form.elements.scenario;
  const previous = chooser.dataset.chosen || "";
  chooser.textContent = "";
  chooser.disabled = false;
  const groups = { config: el("optgroup", { label: "from the config" }), builtin: el("optgroup", { label: "built-in" }) };
  for (const scenario of available) {
    const group = groups[scenario.source === "config" ? "config" : "builtin"];
    const label = scenario.source === "config" ? scenario.name : scenario.name.split(":")[0];
    group.append(el("option", { value: scenario.name, text: scenario.running ? `${label} (running)` : label }));
  }
  for (const group of Object.values(groups)) if (group.childElementCount) chooser.append(group);
  if (available.some((s) => s.name === previous)) chooser.value = previous;
  chooseScenario();
}

function chosen() {
  return available.find((s) => s.name === form.elements.scenario.value) || null;
}

// a built-in scenario needs a target: a service (slow, flaky, down, reset) or a peer (partition)
function chooseScenario() {
  const scenario = chosen();
  form.elements.scenario.dataset.chosen = scenario?.name || "";
  const builtin = scenario?.source === "builtin";
  const targetLabel = form.querySelector('[data-field="target-label"]');
  targetLabel.hidden = !builtin;
  if (builtin) updateScenarioTargets();
  if (!durationTouched) {
    const own = scenario?.source === "config" && scenario.duration_s ? `${scenario.duration_s}s` : "";
    form.elements.duration.value = own || DEFAULT_DURATION;
  }
  describeChoice();
}

// the services or peers a built-in scenario can aim at, kept current while the form is open
export function updateScenarioTargets() {
  const scenario = chosen();
  if (form.hidden || scenario?.source !== "builtin") return;
  const peer = scenario.name.startsWith("partition:");
  setText(form.querySelector('[data-field="target-name"]'), peer ? "Peer" : "Service");
  const names = peer
    ? state.peers.filter((p) => p.alive !== false).map((p) => p.peer).sort()
    : [...state.services.keys()].sort();
  const target = form.elements.target;
  const key = `${peer ? "peer" : "service"}|${names.join("|")}`;
  if (target.dataset.key !== key) {
    target.dataset.key = key;
    const current = target.value;
    target.textContent = "";
    if (!names.length) target.append(el("option", { value: "", text: peer ? "no peers" : "no services" }));
    for (const name of names) target.append(el("option", { value: name, text: name }));
    if (names.includes(current)) target.value = current;
    else if (!peer && state.selected && names.includes(state.selected)) target.value = state.selected;
  }
  target.disabled = !names.length;
}

function describeChoice() {
  const scenario = chosen();
  let text = "";
  if (scenario?.source === "builtin") {
    const target = form.elements.target.value;
    text = String(scenario.description || "").replace(/SERVICE|PEER/g, target || scenario.name.split(":")[1]);
  } else if (scenario) {
    const parts = [];
    if (scenario.faults?.length) parts.push(`faults ${scenario.faults.join(", ")} on`);
    if (scenario.outage?.length) parts.push(`${scenario.outage.join(", ")} answer 503`);
    text = parts.join(" · ");
  }
  setText(form.querySelector('[data-field="describe"]'), text);
  form.querySelector('button[type="submit"]').disabled =
    !scenario || (scenario.source === "builtin" && !form.elements.target.value);
}

form.elements.scenario.addEventListener("change", chooseScenario);
form.elements.target.addEventListener("change", describeChoice);
form.elements.duration.addEventListener("input", () => {
  durationTouched = true;
});
form.querySelector('[data-action="cancel"]').addEventListener("click", closeForms);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const scenario = chosen();
  if (!scenario) return;
  const name = scenario.source === "builtin" ? `${scenario.name.split(":")[0]}:${form.elements.target.value}` : scenario.name;
  const duration = form.elements.duration.value.trim();
  const submit = form.querySelector('button[type="submit"]');
  submit.classList.add("is-busy");
  formError("");
  const result = await send("POST", `/api/v1/scenarios/${encodeURIComponent(name)}/run`, duration ? { duration } : undefined);
  submit.classList.remove("is-busy");
  if (result.ok) closeForms();
  else if (!result.shown) formError(result.error);
});

// after the token changed
export function refreshScenarioActions() {
  for (const banner of banners.values()) {
    banner.stop.disabled = !token;
    setAttr(banner.stop, "title", token ? `Stop ${banner.scenario.name} now` : READ_ONLY_HINT);
  }
}
