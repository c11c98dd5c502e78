// The top bar: the mesh's name, the agent's facts, the config-error banner, the page title, and the badge
// that says whether the events stream is live.

import { $, el, setClass, setText } from "./dom.js";
import { dirty, state } from "./state.js";

export function renderHeader() {
  dirty.header = false;
  setText($("#mesh-name"), state.mesh || "…");
  const meta = $("#agent-meta");
  meta.textContent = "";
  const agent = state.agent;
  if (agent) {
    const item = (label, value, cls, title) =>
      el(
        "span",
        { class: cls || null, title: title || null, dataset: { meta: label } },
        `${label} `,
        el("b", { text: value }),
      );
    meta.append(
      item("pid", String(agent.pid), null, `the agent's process (${agent.config})`),
      item("rev", String(agent.revision)), // kept current by the `service` events
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

export function updateTitle() {
  let bad = 0;
  for (const s of state.services.values()) if (s.state === "crashed" || s.health === "unhealthy") bad++;
  const prefix = bad ? `(${bad} down) ` : "";
  const title = `${prefix}${state.mesh || "devmesh"} · devmesh`;
  if (document.title !== title) document.title = title;
}

let countdown = 0;
export function setConnection(kind, delay = 0) {
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

const heartbeat = $("#connection i");
export function beat() {
  // one blip of the badge's dot per traffic message: the stream is alive (transform/opacity: composited)
  heartbeat.animate(
    [
      { transform: "scale(1.7)", opacity: 0.5 },
      { transform: "scale(1)", opacity: 1 },
    ],
    { duration: 450, easing: "ease-out" },
  );
}
