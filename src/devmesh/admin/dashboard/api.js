// Acting on the agent: the write token, the authenticated requests the buttons send, and the toasts that
// report what went wrong. Results of actions come back as events, not from here.

import { $, el } from "./dom.js";
import { dirty, schedule } from "./state.js";

const TOKEN_KEY = "devmesh.token";
export const READ_ONLY_HINT = "run `devmesh dashboard` to act";

// the write token: from the URL fragment (#token=...), kept in sessionStorage, fragment removed
function takeToken() {
  let token = "";
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    token = decodeURIComponent(match[1]);
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      /* storage may be disabled: the token lives for this page only */
    }
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    try {
      token = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      token = "";
    }
  }
  return token;
}

export let token = takeToken(); // "" when read-only

export async function act(method, path, body) {
  if (!token) {
    toast(`Read-only: ${READ_ONLY_HINT}.`, true);
    return false;
  }
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.ok) return true;
    let message = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      if (problem && problem.error) message = problem.error;
    } catch {
      /* not JSON */
    }
    if (response.status === 401) {
      token = "";
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch {
        /* ignore */
      }
      dirty.readOnly = true;
      schedule();
      toast(`The agent refused the token: ${READ_ONLY_HINT}.`, true);
    } else toast(message, true);
  } catch (error) {
    toast(`The agent did not answer: ${error.message || error}`, true);
  }
  return false;
}

export function toast(message, isError = false) {
  const node = el("div", { class: isError ? "toast is-error" : "toast" }, isError ? el("b", { text: "✕ " }) : null, message);
  $("#toasts").append(node);
  setTimeout(() => node.remove(), 6000);
}
