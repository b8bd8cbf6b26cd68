// Madre's approval page (SPEC §17): sign in with an API token (kept in this
// tab's sessionStorage, sent only as the X-VX11-Token header), see the plans
// that wait, approve or reject them with a reason, and watch them run live
// through the event stream (read with fetch, so the token stays a header).
// Every text from a request is set as text, never as HTML.
"use strict";

const TOKEN_KEY = "madre.api_token";
const state = {
  apiToken: sessionStorage.getItem(TOKEN_KEY),
  me: null,
  plans: new Map(), // plan id -> its detail
  waiting: [], // plan ids, newest first
  selected: null,
  confirmTokens: new Map(), // plan id -> confirm token from an approve link
  lastEventId: null,
};

const $ = (id) => document.getElementById(id);

function setText(id, text) {
  $(id).textContent = text == null || text === "" ? "—" : String(text);
}

// An approve link: /ui/plans/{id}#token=… The token is taken from the
// fragment (which no browser sends to a server) and the fragment dropped.
function readLocation() {
  const match = location.pathname.match(/^\/ui\/plans\/([0-9a-fA-F-]{36})$/);
  if (match) {
    state.selected = match[1].toLowerCase();
    const hash = new URLSearchParams(location.hash.slice(1));
    const token = hash.get("token");
    if (token) {
      state.confirmTokens.set(state.selected, token);
      history.replaceState(null, "", location.pathname);
    }
  }
}

async function api(path, options = {}) {
  const headers = { "X-VX11-Token": state.apiToken, ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function signIn(token) {
  state.apiToken = token;
  try {
    state.me = await api("/madre/whoami");
  } catch (error) {
    state.apiToken = null;
    sessionStorage.removeItem(TOKEN_KEY);
    throw error;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  setText("who", `${state.me.name} (${state.me.role})`);
  await refresh();
  follow();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.assign("/ui");
}

async function loadPlan(id) {
  const detail = await api(`/madre/plans/${encodeURIComponent(id)}`);
  state.plans.set(id, detail);
  return detail;
}

async function refresh() {
  const page = await api("/madre/plans?status=WAITING&limit=200");
  state.waiting = page.plans.map((p) => p.plan_id);
  await Promise.all(state.waiting.map((id) => loadPlan(id)));
  if (state.selected && !state.plans.has(state.selected)) {
    await loadPlan(state.selected);
  }
  render();
}

function approvalsText(detail) {
  const a = detail.approval;
  return a ? `${a.approvals}/${a.required}` : "";
}

function renderList() {
  const list = $("waiting");
  list.replaceChildren();
  const waiting = state.waiting
    .map((id) => state.plans.get(id))
    .filter((d) => d && d.plan.status === "WAITING");
  $("none-waiting").hidden = waiting.length > 0;
  for (const detail of waiting) {
    const item = document.createElement("li");
    item.tabIndex = 0;
    item.dataset.plan = detail.plan.plan_id;
    const risk = document.createElement("span");
    risk.className = "risk";
    risk.textContent = detail.intent ? detail.intent.risk : "";
    const text = document.createElement("span");
    text.textContent = requestText(detail);
    const approvals = document.createElement("span");
    approvals.className = "note";
    approvals.textContent = ` · ${approvalsText(detail)} approvals`;
    item.append(risk, text, approvals);
    item.addEventListener("click", () => select(detail.plan.plan_id));
    item.addEventListener("keydown", (e) => e.key === "Enter" && select(detail.plan.plan_id));
    list.append(item);
  }
}

function requestText(detail) {
  return detail.intent ? detail.intent.dsl.original_text : detail.plan.plan_id;
}

function renderDetail() {
  const detail = state.selected && state.plans.get(state.selected);
  $("detail").hidden = !detail;
  if (!detail) return;
  const plan = detail.plan;
  setText("plan-id", plan.plan_id);
  setText("plan-status", plan.status);
  $("plan-status").className = `status-${plan.status}`;
  setText("plan-text", requestText(detail));
  setText("plan-risk", detail.intent && detail.intent.risk);
  setText("plan-effect", detail.intent && detail.intent.dsl.effect);
  setText("plan-targets", detail.intent && detail.intent.targets.join(", "));
  setText("plan-requester", detail.approval && detail.approval.requested_by);
  setText("plan-approvals", approvalsText(detail));
  setText("plan-fingerprint", detail.fingerprint);
  const rows = plan.steps.map((step, i) => {
    const row = document.createElement("tr");
    for (const value of [i, step.type, step.status]) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.append(cell);
    }
    row.lastChild.className = `status-${step.status}`;
    return row;
  });
  $("plan-steps").replaceChildren(...rows);
  const mayDecide = state.me && state.me.role !== "viewer" && plan.status === "WAITING";
  $("decide").hidden = !mayDecide;
  const fromLink = state.confirmTokens.get(plan.plan_id);
  if (fromLink && !$("confirm-token").value) $("confirm-token").value = fromLink;
  renderCountdown();
}

function renderCountdown() {
  const detail = state.selected && state.plans.get(state.selected);
  if (!detail || !detail.approval || detail.plan.status !== "WAITING") {
    setText("plan-countdown", "");
    return;
  }
  const left = Math.max(0, Math.floor((Date.parse(detail.approval.expires_at) - Date.now()) / 1000));
  setText("plan-countdown", `${Math.floor(left / 60)}m ${left % 60}s`);
}

function render() {
  renderList();
  renderDetail();
}

async function select(id) {
  state.selected = id;
  history.replaceState(null, "", `/ui/plans/${id}`);
  $("decide-result").textContent = "";
  $("confirm-token").value = state.confirmTokens.get(id) || "";
  await loadPlan(id);
  render();
}

async function decide(action) {
  const detail = state.plans.get(state.selected);
  const body = {
    confirm_token: $("confirm-token").value.trim(),
    fingerprint: detail.fingerprint,
  };
  const reason = $("reason").value.trim();
  if (reason) body.reason = reason;
  const path = `/madre/plans/${state.selected}/${action === "reject" ? "reject" : "confirm"}`;
  try {
    const answer = await api(path, { method: "POST", body });
    $("decide-result").textContent =
      action === "reject" ? "Rejected." : `${answer.status} (${answer.approvals}/${answer.required})`;
    $("reason").value = "";
  } catch (error) {
    $("decide-result").textContent = error.message;
  }
  await loadPlan(state.selected);
  render();
}

// The event stream, read with fetch (EventSource cannot send the token as a
// header). Every event of a plan on the page reloads that plan; a plan that
// starts waiting reloads the list. It reconnects with Last-Event-ID.
async function follow() {
  for (;;) {
    try {
      const headers = { "X-VX11-Token": state.apiToken };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const response = await fetch("/madre/events", { headers, cache: "no-store" });
      if (!response.ok) throw new Error(`${response.status}`);
      setText("live", "live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          await onMessage(message);
        }
      }
    } catch (error) {
      setText("live", `reconnecting (${error.message})`);
    }
    setText("live", "reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function onMessage(message) {
  let data = null;
  for (const line of message.split("\n")) {
    if (line.startsWith("id: ")) state.lastEventId = line.slice(4);
    if (line.startsWith("data: ")) data = JSON.parse(line.slice(6));
  }
  if (!data) return; // a keep-alive
  if (data.type === "plan_waiting") {
    await refresh();
  } else if (state.plans.has(data.plan_id)) {
    await loadPlan(data.plan_id);
    render();
  }
}

function start() {
  readLocation();
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("sign-in-error").textContent = "";
    try {
      await signIn($("api-token").value.trim());
    } catch (error) {
      $("sign-in-error").textContent = `Sign-in failed: ${error.message}`;
    }
  });
  $("sign-out").addEventListener("click", signOut);
  $("decide").addEventListener("submit", (event) => {
    event.preventDefault();
    decide(event.submitter ? event.submitter.value : "approve");
  });
  setInterval(renderCountdown, 1000);
  if (state.apiToken) {
    signIn(state.apiToken).catch(() => {
      $("sign-in").hidden = false;
    });
  } else {
    $("sign-in").hidden = false;
  }
}

start();
