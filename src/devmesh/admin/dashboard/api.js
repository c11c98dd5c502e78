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
  const result = await send(method, path, body);
  if (!result.ok && result.error && !result.shown) toast(result.error, true);
  return result.ok;
}

// The same request, for a form that shows what went wrong itself: {ok, error}. The token's own problems
// (none, refused) and an agent that does not answer are still toasts: `shown` says so.
export async function send(method, path, body) {
  if (!token) {
    toast(`Read-only: ${READ_ONLY_HINT}.`, true);
    return { ok: false, error: `Read-only: ${READ_ONLY_HINT}.`, shown: true };
  }
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    const message = `The agent did not answer: ${error.message || error}`;
    toast(message, true);
    return { ok: false, error: message, shown: true };
  }
  if (response.ok) return { ok: true, error: null };
  let message = `${response.status} ${response.statusText}`;
  try {
    message = problemText(await response.json()) || message;
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
    return { ok: false, error: message, shown: true };
  }
  return { ok: false, error: message };
}

// What an error answer says: the agent's {"error": "..."}, or the body checks' {"detail": [{loc, msg}]}.
function problemText(problem) {
  if (!problem) return "";
  if (problem.error) return String(problem.error);
  if (Array.isArray(problem.detail)) {
    return problem.detail
      .map((item) => {
        const where = (item.loc || []).filter((part) => part !== "body").join(".");
        const what = String(item.msg || "").replace(/^Value error, /, "");
        return where ? `${where}: ${what}` : what;
      })
      .join("; ");
  }
  return typeof problem.detail === "string" ? problem.detail : "";
}

export function toast(message, isError = false) {
  const node = el("div", { class: isError ? "toast is-error" : "toast" }, isError ? el("b", { text: "✕ " }) : null, message);
  $("#toasts").append(node);
  setTimeout(() => node.remove(), 6000);
}
