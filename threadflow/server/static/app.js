// The threadflow dashboard: a live table of runs (GET /runs/feed), a run's events (its /events SSE),
// Cancel buttons and a start form. Plain JavaScript, no build step. Text from runs is only ever set
// with textContent, never parsed as HTML.

const TERMINAL = new Set(["completed", "cancelled", "error"]);
const ENDINGS = new Set(["workflow_completed", "workflow_cancelled", "workflow_error"]);
const STORED_EVENTS = 2000; // per run, in sessionStorage, so that a reload resumes where it was

const state = { csrf: null, workflows: [], routes: new Map(), runs: new Map(), feed: null, run: null };

const byId = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// -- talking to the server ------------------------------------------------------

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.csrf) headers["X-Threadflow-CSRF"] = state.csrf;
  const answer = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (answer.status === 401) location.reload(); // the session has ended: back to the login form
  const body = await answer.json().catch(() => null);
  if (!answer.ok) throw new Error((body && typeof body.detail === "string" && body.detail) || `HTTP ${answer.status}`);
  return body;
}

function runPath(info) {
  const route = state.routes.get(info.workflow_id);
  return route === undefined ? null : `/workflows/${enc(route)}/runs/${enc(info.run_id)}`;
}

async function cancelRun(info, reason) {
  const path = runPath(info);
  const body = reason ? { reason } : {};
  return api(`${path}/cancel`, { method: "POST", body: JSON.stringify(body) });
}

// -- formatting -------------------------------------------------------------------

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function duration(info) {
  const start = info.started_at || info.created_at;
  const end = info.ended_at || Date.now() / 1000;
  const total = Math.max(0, end - start);
  if (total < 60) return `${total.toFixed(1)} s`;
  const minutes = Math.floor(total / 60);
  return minutes < 60 ? `${minutes} min ${Math.floor(total % 60)} s` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function causeText(info) {
  if (info.status === "error") return [info.error_type, info.error].filter(Boolean).join(": ");
  return [info.cause, info.reason].filter(Boolean).join(": ");
}

function setStatus(element, status) {
  element.textContent = status;
  element.className = `status status-${status}`;
}

// -- the table of runs ------------------------------------------------------------

const COLUMNS = ["Run", "Workflow", "Status", "Step", "Started", "Duration", "Cause / reason"];

function newRow(info) {
  const row = document.createElement("tr");
  row.dataset.runId = info.run_id;
  for (const label of COLUMNS) {
    const cell = document.createElement("td");
    cell.dataset.label = label;
    row.append(cell);
  }
  const actions = document.createElement("td");
  actions.className = "actions";
  row.append(actions);
  return row;
}

function cancelControls(info) {
  const form = document.createElement("form");
  const reason = document.createElement("input");
  reason.name = "reason";
  reason.placeholder = "reason";
  reason.setAttribute("aria-label", `Reason for cancelling run ${info.run_id}`);
  const button = document.createElement("button");
  button.type = "submit";
  button.className = "danger";
  button.textContent = "Cancel";
  button.setAttribute("aria-label", `Cancel run ${info.run_id}`);
  form.append(reason, button);
  form.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    button.disabled = true;
    try {
      await cancelRun(state.runs.get(info.run_id) || info, reason.value.trim());
    } catch (failure) {
      button.disabled = false;
      button.title = failure.message;
    }
  });
  return form;
}

function fillRow(row, info) {
  const [run, workflow, status, step, started, took, cause, actions] = row.children;
  const path = runPath(info);
  run.replaceChildren();
  if (path) {
    const link = document.createElement("a");
    link.href = `#/run/${enc(state.routes.get(info.workflow_id))}/${enc(info.run_id)}`;
    link.textContent = info.run_id;
    run.append(link);
  } else {
    run.textContent = info.run_id;
  }
  workflow.textContent = info.workflow_name || info.workflow_id;
  setStatus(status, info.status);
  step.textContent = info.step_name || "";
  started.textContent = when(info.started_at || info.created_at);
  took.textContent = duration(info);
  cause.textContent = causeText(info);
  const active = !TERMINAL.has(info.status) && path !== null;
  if (!active) actions.replaceChildren();
  else if (!actions.firstChild) actions.append(cancelControls(info));
}

function placeRow(body, row, info) {
  // Newest first: before the first row created earlier than this run.
  for (const other of body.children) {
    if (other === row) continue;
    const theirs = state.runs.get(other.dataset.runId);
    if (theirs && theirs.created_at < info.created_at) {
      if (row.nextSibling !== other) body.insertBefore(row, other);
      return;
    }
  }
  if (row.parentNode !== body || row.nextSibling) body.append(row);
}

function showRun(info) {
  state.runs.set(info.run_id, info);
  const body = document.querySelector("#runs tbody");
  let row = body.querySelector(`tr[data-run-id="${CSS.escape(info.run_id)}"]`);
  if (!row) row = newRow(info);
  fillRow(row, info);
  placeRow(body, row, info);
  byId("no-runs").hidden = true;
}

function dropRun(runId) {
  state.runs.delete(runId);
  const row = document.querySelector(`#runs tbody tr[data-run-id="${CSS.escape(runId)}"]`);
  if (row) row.remove();
  byId("no-runs").hidden = state.runs.size > 0;
}

function openFeed() {
  if (state.feed) state.feed.close();
  state.runs.clear();
  document.querySelector("#runs tbody").replaceChildren();
  byId("no-runs").hidden = false;
  const query = new URLSearchParams();
  const status = byId("filter-status").value;
  const workflow = byId("filter-workflow").value;
  if (status) query.set("status", status);
  if (workflow) query.set("workflow", workflow);
  const feed = new EventSource(`/runs/feed?${query}`);
  feed.addEventListener("run", (message) => showRun(JSON.parse(message.data)));
  feed.addEventListener("gone", (message) => dropRun(JSON.parse(message.data).run_id));
  feed.addEventListener("open", () => (byId("live").textContent = "live"));
  feed.addEventListener("error", () => (byId("live").textContent = "reconnecting…"));
  state.feed = feed;
}

function tick() {
  for (const [runId, info] of state.runs) {
    if (TERMINAL.has(info.status)) continue;
    const row = document.querySelector(`#runs tbody tr[data-run-id="${CSS.escape(runId)}"]`);
    if (row) row.children[5].textContent = duration(info);
  }
  if (state.run && state.run.info && !TERMINAL.has(state.run.info.status)) {
    byId("run-duration").textContent = duration(state.run.info);
  }
}

// -- starting a run ---------------------------------------------------------------

function parseInput(text) {
  if (!text.trim()) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text; // plain text is a string input
  }
}

async function startRun(submitted) {
  submitted.preventDefault();
  byId("start-error").textContent = "";
  const route = byId("start-workflow").value;
  const body = { input: parseInput(byId("start-input").value) };
  try {
    const started = await api(`/workflows/${enc(route)}/runs`, { method: "POST", body: JSON.stringify(body) });
    location.hash = `#/run/${enc(route)}/${enc(started.run_id)}`;
  } catch (failure) {
    byId("start-error").textContent = failure.message;
  }
}

// -- one run's page ---------------------------------------------------------------

function stored(runId) {
  try {
    return JSON.parse(sessionStorage.getItem(`threadflow-events:${runId}`)) || [];
  } catch {
    return [];
  }
}

function store(run) {
  try {
    if (run.events.length <= STORED_EVENTS) sessionStorage.setItem(`threadflow-events:${run.runId}`, JSON.stringify(run.events));
    else sessionStorage.removeItem(`threadflow-events:${run.runId}`);
  } catch {
    // storage full or disabled: a reload then replays the run from its start
  }
}

function where(event) {
  const path = Array.isArray(event.step_path) ? event.step_path.join(" › ") : event.step_path;
  return path || event.step_name || "";
}

function eventLine(kind, label, text) {
  const item = document.createElement("li");
  if (kind) item.className = kind;
  const place = document.createElement("span");
  place.className = "where";
  place.textContent = label;
  item.append(place, document.createTextNode(text));
  return item;
}

function describe(event) {
  const name = event.event;
  if (name.startsWith("tool_call")) {
    const tool = event.tool_name || event.name || "";
    const detail = event.error || (event.result !== undefined ? JSON.stringify(event.result) : JSON.stringify(event.arguments ?? event.args ?? ""));
    return ["tool", `${name} ${tool} ${detail || ""}`.trim()];
  }
  if (name === "step_retrying") return ["retry", `retrying (attempt ${event.attempt}) after ${event.error_type}: ${event.error}`];
  if (name === "workflow_error" || name === "run_error") return ["error end", `${name}: ${event.error_type}: ${event.error}`];
  if (name === "workflow_cancelled") return ["end", `cancelled (${event.cause})${event.reason ? `: ${event.reason}` : ""}`];
  if (name === "workflow_completed") return ["end", "completed"];
  return ["", name];
}

function render(run, event) {
  const list = byId("events");
  const label = where(event);
  if (event.event === "run_content") {
    const last = list.lastElementChild;
    if (last && last.dataset.tokens === label) {
      last.querySelector("pre").textContent += event.content;
      return;
    }
    const item = eventLine("", label, "");
    item.dataset.tokens = label;
    const text = document.createElement("pre");
    text.textContent = event.content;
    item.append(text);
    list.append(item);
    return;
  }
  const [kind, text] = describe(event);
  list.append(eventLine(kind, label, text));
}

function showFacts(info) {
  const run = state.run;
  if (run) run.info = info;
  byId("run-workflow").textContent = info.workflow_name || info.workflow_id;
  setStatus(byId("run-status"), info.status);
  byId("run-step").textContent = info.step_name || "";
  byId("run-started").textContent = when(info.started_at || info.created_at);
  byId("run-duration").textContent = duration(info);
  byId("run-cause").textContent = causeText(info);
  byId("run-cancel").hidden = TERMINAL.has(info.status);
}

async function refreshFacts(run) {
  try {
    const info = await api(run.path);
    if (state.run === run) showFacts(info);
  } catch (failure) {
    byId("run-error").textContent = failure.message;
  }
}

function follow(run) {
  const after = run.events.length ? run.events[run.events.length - 1].seq : 0;
  const source = new EventSource(`${run.path}/events?after_seq=${after}`);
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    const last = run.events.length ? run.events[run.events.length - 1].seq : 0;
    if (event.seq <= last) return; // already shown (a resumed stream)
    run.events.push(event);
    store(run);
    render(run, event);
    if (event.event === "step_started" && run.info) showFacts({ ...run.info, status: "running", step_name: event.step_name });
    if (ENDINGS.has(event.event)) {
      source.close();
      refreshFacts(run);
    }
  };
  run.source = source;
}

function openRun(route, runId) {
  closeRun();
  const run = { route, runId, path: `/workflows/${enc(route)}/runs/${enc(runId)}`, events: stored(runId), info: null, source: null };
  state.run = run;
  byId("run-id").textContent = runId;
  byId("run-error").textContent = "";
  byId("run-cancel-reason").value = "";
  byId("events").replaceChildren();
  for (const event of run.events) render(run, event);
  refreshFacts(run);
  if (!run.events.some((event) => ENDINGS.has(event.event))) follow(run);
}

function closeRun() {
  if (state.run && state.run.source) state.run.source.close();
  state.run = null;
}

async function cancelFromPage(submitted) {
  submitted.preventDefault();
  const run = state.run;
  if (!run) return;
  try {
    await cancelRun({ workflow_id: run.info.workflow_id, run_id: run.runId }, byId("run-cancel-reason").value.trim());
    refreshFacts(run);
  } catch (failure) {
    byId("run-error").textContent = failure.message;
  }
}

// -- the page ---------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/run\/([^/]+)\/(.+)$/);
  byId("table-view").hidden = Boolean(match);
  byId("run-view").hidden = !match;
  if (match) openRun(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
  else closeRun();
}

function option(value, text) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = text;
  return item;
}

async function logout() {
  await api("/session", { method: "DELETE" });
  location.reload();
}

async function main() {
  const session = await api("/session");
  state.csrf = session.csrf;
  byId("logout").hidden = !session.auth;
  state.workflows = await api("/workflows");
  for (const workflow of state.workflows) {
    state.routes.set(workflow.workflow_id, workflow.id);
    byId("start-workflow").append(option(workflow.id, workflow.name || workflow.id));
    byId("filter-workflow").append(option(workflow.workflow_id, workflow.name || workflow.id));
  }
  byId("start-form").addEventListener("submit", startRun);
  byId("run-cancel").addEventListener("submit", cancelFromPage);
  byId("filters").addEventListener("change", openFeed);
  byId("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  setInterval(tick, 1000);
  openFeed();
  route();
}

main();
