// The peers panel: the teammates' agents this one follows, alive or not, and what each serves.

import { $, el, setText } from "./dom.js";
import { fmtMs } from "./format.js";
import { dirty, state } from "./state.js";

export function renderPeers() {
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
  const cut = new Map(); // peer -> the scenario that cuts this agent off from it
  for (const scenario of state.scenarios) for (const peer of scenario.partitioned || []) cut.set(peer, scenario.name);
  for (const peer of state.peers) {
    const card = el(
      "div",
      { class: "peer", dataset: { peer: peer.peer } },
      el(
        "div",
        { class: "peer-head" },
        el("span", { class: `pill ${peer.alive === false ? "v-down" : "v-alive"}`, text: peer.alive === false ? "down" : "alive" }),
        el("span", { class: "peer-id", text: peer.peer }),
        cut.has(peer.peer)
          ? el("span", { class: "peer-cut", title: `the scenario ${cut.get(peer.peer)} cuts this agent off from it`, text: "⚡ partitioned" })
          : null,
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
