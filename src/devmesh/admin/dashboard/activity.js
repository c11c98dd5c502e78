// The activity list: what happened to the mesh (services appearing, crashing, recovering; peers; routes;
// config reloads), newest first.

import { $, el } from "./dom.js";
import { fmtClock } from "./format.js";
import { dirty } from "./state.js";

const MAX_ACTIVITY = 80;

// parts: strings and nodes, the line's text
export function log(time, cls, parts) {
  const entry = { time: time || Date.now() / 1000, cls, parts };
  dirty.activity.push(entry);
  if (dirty.activity.length > MAX_ACTIVITY) dirty.activity.shift(); // a hidden tab does not render
}

export function renderActivity() {
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
