// Lull's dashboard: reads /api/v1/pool, then applies the server-sent events of
// /api/v1/stream. Details (a job's tasks, a page at a time; a task's attempts and logs; an
// agent's pauses and evictions) are fetched when opened. Plain script, no build step.
"use strict";

const AGENT_WINDOW_MS = 10 * 60 * 1000;
const LOG_LIMIT = 64 * 1024;
const POOL_JOBS = 100;

// The pool as last heard, with each agent's history kept here between events.
// taskPage is the page of a job's tasks on show: the job, the state they are filtered by ("" for
// all), where the page starts, and where the pages before it started (for "previous").
const view = {
  pool: null, history: new Map(), minutes: [], span: "hour", updates: 0, lastEventMs: 0,
  taskPage: { job: null, state: "", offset: 0, before: [] },
};

// ---- the API -------------------------------------------------------------------------------

function token() {
  return localStorage.getItem("lull-token") || "";
}

function headers() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

class NeedsToken extends Error {}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (res.status === 401) {
    const body = await res.json().catch(() => null);
    askForToken(body && body.error ? body.error.message : "");
    throw new NeedsToken("a token is needed");
  }
  if (!res.ok) {
    const body = await res.json().catch(() => null);
    const message = body && body.error ? body.error.message : res.status + " " + res.statusText;
    throw new Error(path + ": " + message);
  }
  return res;
}

async function json(path) {
  return (await api(path)).json();
}

function askForToken(why) {
  document.getElementById("login-why").textContent = token()
    ? "The token kept in this browser was refused: " + why
    : "";
  document.getElementById("login").hidden = false;
  document.getElementById("login-token").focus();
}

document.getElementById("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("lull-token", document.getElementById("login-token").value.trim());
  document.getElementById("login").hidden = true;
  start();
});

// ---- small helpers -------------------------------------------------------------------------

// An element with attributes and children (strings become text: nothing is parsed as HTML).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function pct(fraction) {
  return Math.round(fraction * 100) + " %";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(ms).toLocaleString();
}

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "–";
}

function stateBadge(state) {
  return h("span", { class: "badge state-" + state.replace(/[^a-z_]/g, "") }, state.replace(/_/g, " "));
}

// ---- the overview --------------------------------------------------------------------------

function applyPool(pool, replace) {
  const present = new Set();
  for (const a of pool.agents) {
    present.add(a.id);
    const kept = replace ? [] : view.history.get(a.id) || [];
    // Only what is newer than what the page holds (a reconnect may repeat a sample).
    const last = kept.length ? kept[kept.length - 1].at_ms : -Infinity;
    const fresh = a.history.filter((x) => x.at_ms > last);
    const merged = kept.concat(fresh).filter((x) => x.at_ms >= pool.now_ms - AGENT_WINDOW_MS);
    view.history.set(a.id, merged);
  }
  for (const id of [...view.history.keys()]) if (!present.has(id)) view.history.delete(id);
  if (replace) {
    view.minutes = pool.harvest.minutes.slice();
  } else {
    for (const m of pool.harvest.minutes) {
      const last = view.minutes[view.minutes.length - 1];
      if (last && last.at_ms === m.at_ms) last.core_seconds = m.core_seconds;
      else if (!last || m.at_ms > last.at_ms) view.minutes.push({ ...m });
    }
  }
  view.pool = pool;
  view.lastEventMs = Date.now();
  render();
}

function render() {
  const pool = view.pool;
  if (!pool) return;
  renderTiles(pool);
  renderHarvest(pool.now_ms);
  renderAgents(pool);
  renderShares(pool);
  renderJobs(pool);
}

// Accounting: the ten largest users and lenders, read every ten seconds.
async function refreshAccounting() {
  try {
    const acc = await json("/api/v1/accounting");
    const rows = (list) => list.slice(0, 10).map((u) =>
      h("tr", { "data-name": u.name },
        h("td", {}, h("span", { class: "name" }, u.name)),
        h("td", {}, (u.core_seconds / 3600).toFixed(3))));
    document.querySelector("#accounting-users tbody").replaceChildren(...rows(acc.users));
    document.querySelector("#accounting-lenders tbody").replaceChildren(...rows(acc.lenders));
    document.getElementById("accounting-lenders").hidden = acc.lenders.length === 0;
    document.getElementById("accounting-panel").hidden = acc.users.length + acc.lenders.length === 0;
  } catch (e) {
    if (!(e instanceof NeedsToken)) console.warn("accounting:", e);
  }
}

// The fair share of the clusters where more than one user has a standing.
function renderShares(pool) {
  const shares = pool.shares || [];
  const users = {};
  for (const s of shares) users[s.cluster] = (users[s.cluster] || 0) + 1;
  const shown = shares.filter((s) => users[s.cluster] > 1);
  document.getElementById("shares-panel").hidden = shown.length === 0;
  document.querySelector("#shares tbody").replaceChildren(...shown.map((s) =>
    h("tr", { "data-user": s.user },
      h("td", {}, s.cluster),
      h("td", {}, h("span", { class: "name" }, s.user)),
      h("td", {}, s.running_cores.toFixed(1) + " cores"),
      h("td", {}, s.recent_cores.toFixed(1) + " cores"),
      h("td", {}, (s.usage_core_seconds / 3600).toFixed(2)),
      h("td", {}, String(s.waiting)))));
}

function renderTiles(pool) {
  const byState = {};
  let guestCores = 0, cores = 0;
  for (const a of pool.agents) {
    byState[a.status.state] = (byState[a.status.state] || 0) + 1;
    guestCores += a.status.guest_cpu * a.capacity.cores;
    cores += a.capacity.cores;
  }
  document.getElementById("tile-agents").textContent = pool.agents.length;
  document.getElementById("tile-agents-sub").textContent =
    Object.entries(byState).map(([k, n]) => n + " " + k.replace(/_/g, " ")).join(", ") || "none connected";
  document.getElementById("tile-cpu").textContent = guestCores.toFixed(1) + " cores";
  document.getElementById("tile-cpu-sub").textContent = "of " + cores + " in the pool";
  document.getElementById("tile-harvest").textContent = (pool.harvest.core_seconds / 3600).toFixed(3);
  const t = pool.tasks;
  document.getElementById("tile-tasks").textContent = t.running + " running";
  document.getElementById("tile-tasks-sub").textContent =
    t.pending + " pending, " + t.succeeded + " succeeded, " + t.failed + " failed, " + t.cancelled + " cancelled";
}

// The harvest chart's spans: bars of a minute over an hour, or of an hour over a day. A bar's
// height is the CPU-time harvested in it over its length: the cores used on average.
const SPANS = {
  hour: { bar: 60 * 1000, bars: 60, ago: "60 min ago", unit: "core-minutes", empty: "nothing harvested in the last hour" },
  day: { bar: 60 * 60 * 1000, bars: 24, ago: "24 h ago", unit: "core-hours", empty: "nothing harvested in the last day" },
};

function renderHarvest(now) {
  const span = SPANS[view.span] || SPANS.hour;
  for (const b of document.querySelectorAll("#harvest-span button")) {
    b.classList.toggle("on", b.dataset.span === view.span);
  }
  const box = document.getElementById("harvest-chart");
  // Drawn at the box's own width, so that text keeps its size and bars reach both ends.
  const width = Math.max(300, box.clientWidth), height = 110, pad = 18;
  const end = now - (now % span.bar);
  const start = end - (span.bars - 1) * span.bar;
  const seconds = new Map();
  for (const m of view.minutes) {
    const t = m.at_ms - (m.at_ms % span.bar);
    seconds.set(t, (seconds.get(t) || 0) + m.core_seconds);
  }
  const cores = (t) => (seconds.get(t) || 0) / (span.bar / 1000);
  let max = 0;
  for (let t = start; t <= end; t += span.bar) max = Math.max(max, cores(t));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height + pad}`, role: "img", "aria-label": "harvested CPU" });
  const bar = width / span.bars;
  let i = 0;
  for (let t = start; t <= end; t += span.bar, i++) {
    const v = cores(t);
    const barHeight = max > 0 ? (v / max) * (height - 4) : 0;
    const rect = s("rect", { x: i * bar + 1, y: height - barHeight, width: bar - 2, height: barHeight, class: "bar" });
    const title = s("title");
    title.textContent = new Date(t).toLocaleTimeString() + ": " + v.toFixed(2) + " " + span.unit;
    rect.append(title);
    svg.append(rect);
  }
  const axis = (x, text, anchor) => {
    const label = s("text", { x, y: height + pad - 4, "text-anchor": anchor, class: "axis" });
    label.textContent = text;
    svg.append(label);
  };
  axis(0, span.ago, "start");
  axis(width, "now", "end");
  axis(width / 2, max > 0 ? "highest: " + max.toFixed(2) + " cores on average" : span.empty, "middle");
  box.replaceChildren(svg);
}

for (const b of document.querySelectorAll("#harvest-span button")) {
  b.addEventListener("click", () => { view.span = b.dataset.span; if (view.pool) renderHarvest(view.pool.now_ms); });
}

// CPU over the last minutes: the owner's programs at the bottom, the guests on top.
function sparkline(id, now) {
  const samples = view.history.get(id) || [];
  const width = 200, height = 36;
  const x = (t) => ((t - (now - AGENT_WINDOW_MS)) / AGENT_WINDOW_MS) * width;
  const y = (f) => height - Math.min(1, Math.max(0, f)) * height;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", preserveAspectRatio: "none" });
  svg.append(s("rect", { x: 0, y: 0, width, height, class: "spark-bg" }));
  if (samples.length > 0) {
    const area = (lower, upper, cls) => {
      const top = samples.map((p) => `${x(p.at_ms).toFixed(1)},${y(upper(p)).toFixed(1)}`);
      const bottom = samples.slice().reverse().map((p) => `${x(p.at_ms).toFixed(1)},${y(lower(p)).toFixed(1)}`);
      svg.append(s("polygon", { points: top.concat(bottom).join(" "), class: cls }));
    };
    area(() => 0, (p) => p.incumbent_cpu, "incumbent");
    area((p) => p.incumbent_cpu, (p) => p.incumbent_cpu + p.guest_cpu, "guest");
    // Paused stretches are shaded.
    for (const p of samples) {
      if (p.state === "paused" || p.state === "evicting") {
        svg.append(s("rect", { x: x(p.at_ms) - 1, y: 0, width: 2, height, class: "spark-paused" }));
      }
    }
  }
  const last = samples[samples.length - 1];
  const title = s("title");
  title.textContent = last
    ? `owner ${pct(last.incumbent_cpu)}, guests ${pct(last.guest_cpu)} of the machine's CPU`
    : "no report yet";
  svg.append(title);
  return svg;
}

function renderAgents(pool) {
  const body = document.querySelector("#agents tbody");
  document.getElementById("agents-empty").hidden = pool.agents.length > 0;
  document.getElementById("agents").hidden = pool.agents.length === 0;
  body.replaceChildren(...pool.agents.map((a) => {
    const samples = view.history.get(a.id) || [];
    const last = samples[samples.length - 1];
    const memory = last ? last.memory_used : 1 - a.capacity.memory_available / Math.max(1, a.capacity.memory_total);
    const state = a.draining_until_ms ? "draining" : a.status.state;
    const labels = Object.entries(a.capacity.labels || {}).map(([k, v]) => h("span", { class: "label-chip" }, k + "=" + v));
    if (a.cluster && a.cluster !== "default") labels.unshift(h("span", { class: "label-chip cluster" }, "cluster " + a.cluster));
    return h("tr", { "data-agent": a.id, "data-state": state, class: "clickable", onclick: () => go("#/agents/" + encodeURIComponent(a.id)) },
      h("td", {}, h("div", { class: "name" }, a.name), h("div", { class: "muted small" }, a.id)),
      h("td", {}, stateBadge(state), h("div", { class: "muted small reason" }, a.status.reason || "")),
      h("td", {}, sparkline(a.id, pool.now_ms),
        h("div", { class: "muted small" }, `owner ${pct(a.status.incumbent_cpu)} · guests ${pct(a.status.guest_cpu)} · ${a.capacity.cores} cores`)),
      h("td", {}, h("div", { class: "meter" }, h("div", { style: `width:${(memory * 100).toFixed(1)}%` })),
        h("div", { class: "muted small" }, pct(memory) + " of " + bytes(a.capacity.memory_total))),
      h("td", {}, a.running + " / " + a.capacity.slots),
      h("td", {}, labels.length ? labels : h("span", { class: "muted" }, "–")));
  }));
}

function progressBar(fraction) {
  return h("div", { class: "progress", "data-progress": fraction.toFixed(4) },
    h("div", { class: "meter" }, h("div", { style: `width:${(fraction * 100).toFixed(1)}%` })),
    h("span", { class: "small" }, (fraction * 100).toFixed(fraction < 1 ? 1 : 0) + " %"));
}

function renderJobs(pool) {
  const body = document.querySelector("#jobs tbody");
  document.getElementById("jobs-empty").hidden = pool.jobs.length > 0;
  document.getElementById("jobs").hidden = pool.jobs.length === 0;
  // The pool lists the newest jobs only.
  document.getElementById("jobs-more").hidden = pool.jobs.length < POOL_JOBS;
  body.replaceChildren(...pool.jobs.map((j) => {
    const c = j.counts;
    const parts = [];
    if (c.running) parts.push(c.running + " running");
    if (c.pending) parts.push(c.pending + " pending");
    if (c.succeeded) parts.push(c.succeeded + " succeeded");
    if (c.failed) parts.push(c.failed + " failed");
    if (c.cancelled) parts.push(c.cancelled + " cancelled");
    return h("tr", { "data-job": j.id, class: "clickable", onclick: () => go("#/jobs/" + j.id) },
      h("td", {}, h("span", { class: "name" }, j.name), h("span", { class: "muted" }, " #" + j.id)),
      h("td", { class: "owner" }, j.owner || "–"),
      h("td", {}, stateBadge(j.state)),
      h("td", {}, progressBar(j.progress)),
      h("td", {}, j.count + " task" + (j.count === 1 ? "" : "s"), h("div", { class: "muted small" }, parts.join(", "))),
      h("td", { class: "muted" }, ago(j.created_ms)));
  }));
}

// ---- details -------------------------------------------------------------------------------

function go(hash) {
  if (location.hash === hash) showDetail();
  else location.hash = hash;
}

document.getElementById("detail-close").addEventListener("click", () => go("#/"));
window.addEventListener("hashchange", showDetail);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") go("#/"); });

async function showDetail() {
  const panel = document.getElementById("detail");
  const body = document.getElementById("detail-body");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  let content = null;
  try {
    if (parts[0] === "agents" && parts[1]) content = await agentDetail(parts[1]);
    else if (parts[0] === "jobs" && parts[1] && parts[2] === "tasks" && parts[3]) content = await taskDetail(parts[1], parts[3]);
    else if (parts[0] === "jobs" && parts[1]) content = await jobDetail(parts[1]);
  } catch (e) {
    if (e instanceof NeedsToken) return;
    content = h("p", { class: "error" }, String(e.message || e));
  }
  panel.hidden = content === null;
  if (content) body.replaceChildren(content);
}

async function agentDetail(id) {
  const a = view.pool && view.pool.agents.find((x) => x.id === id);
  const events = await json("/api/v1/agents/" + encodeURIComponent(id) + "/events");
  const rows = events.events.map((e) => h("tr", {},
    h("td", { class: "muted" }, new Date(e.at_ms).toLocaleString()),
    h("td", {}, stateBadge(e.from), " → ", stateBadge(e.to)),
    h("td", {}, e.reason),
    h("td", {}, e.attempts.length ? e.attempts.map((x) => x.task.job + "." + x.task.index).join(", ") : "–")));
  return h("div", {},
    h("h2", {}, a ? a.name : id, " ", h("span", { class: "muted small" }, id)),
    a ? h("p", {}, stateBadge(a.status.state), " ", a.status.reason || "") : h("p", { class: "muted" }, "Not connected now."),
    a ? h("dl", { class: "facts" },
      h("dt", {}, "Machine"), h("dd", {}, `${a.capacity.cores} cores, ${bytes(a.capacity.memory_total)}, ${a.capacity.os}/${a.capacity.arch}`),
      h("dt", {}, "Slots"), h("dd", {}, `${a.running} of ${a.capacity.slots} in use; up to ${bytes(a.capacity.max_task_memory)} per task`),
      h("dt", {}, "Cluster"), h("dd", {}, a.cluster),
      h("dt", {}, "Connected"), h("dd", {}, ago(a.connected_ms)),
      h("dt", {}, "Draining"), h("dd", {}, a.draining_until_ms ? "until " + time(a.draining_until_ms) : "no")) : null,
    h("h3", {}, "Pauses, evictions and other changes"),
    rows.length
      ? h("table", { class: "events" }, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Change"), h("th", {}, "Why"), h("th", {}, "Tasks"))), h("tbody", {}, rows))
      : h("p", { class: "empty" }, "No state change recorded yet: the agent has not paused or evicted anything."));
}

// A job's tasks are shown this many at a time.
const TASK_PAGE = 100;
const TASK_STATES = ["pending", "running", "succeeded", "failed", "cancelled"];

function showTasks(job, state, offset, before) {
  view.taskPage = { job, state, offset, before };
  showDetail();
}

async function jobDetail(id) {
  let page = view.taskPage;
  if (page.job !== id) page = view.taskPage = { job: id, state: "", offset: 0, before: [] };
  const query = "?limit=" + TASK_PAGE + "&offset=" + page.offset + (page.state ? "&state=" + page.state : "");
  const job = await json("/api/v1/jobs/" + encodeURIComponent(id) + query);
  const rows = job.tasks.map((t) => h("tr", { class: "clickable", "data-task": t.index, onclick: () => go(`#/jobs/${job.id}/tasks/${t.index}`) },
    h("td", {}, String(t.index)),
    h("td", {}, stateBadge(t.state), t.waiting ? h("div", { class: "muted small" }, t.waiting) : null),
    h("td", {}, t.progress === null || t.progress === undefined ? h("span", { class: "muted" }, "–") : progressBar(t.progress)),
    h("td", {}, String(t.attempt)),
    h("td", { class: "muted small" }, t.agent || "–"),
    h("td", { class: "small" }, t.cause || "")));
  const of = page.state ? job.counts[page.state] : job.count;
  const which = page.state ? page.state + " " : "";
  const shown = job.tasks.length
    ? `Tasks ${job.tasks[0].index} to ${job.tasks[job.tasks.length - 1].index}: ${job.tasks.length} of ${of} ${which}task${of === 1 ? "" : "s"}`
    : `No ${which}task` + (page.offset > 0 ? " from task " + page.offset : "");
  const filter = h("select", { id: "task-state", "aria-label": "tasks in state",
    onchange: (e) => showTasks(id, e.target.value, 0, []) },
    h("option", { value: "" }, "every state"),
    TASK_STATES.map((st) => h("option", { value: st, selected: st === page.state }, st + " (" + job.counts[st] + ")")));
  const previous = h("button", { type: "button", id: "tasks-previous", disabled: page.before.length === 0,
    onclick: () => showTasks(id, page.state, page.before[page.before.length - 1], page.before.slice(0, -1)) }, "← previous");
  const next = h("button", { type: "button", id: "tasks-next", disabled: job.next_offset === undefined || job.next_offset === null,
    onclick: () => showTasks(id, page.state, job.next_offset, page.before.concat([page.offset])) }, "next →");
  return h("div", {},
    h("h2", {}, job.name, " ", h("span", { class: "muted" }, "#" + job.id)),
    h("p", {}, stateBadge(job.state), " ", job.count + " task" + (job.count === 1 ? "" : "s"), job.waiting_reason ? h("span", { class: "muted" }, " · waiting: " + job.waiting_reason) : null),
    h("div", { class: "pager" }, filter, previous, next, h("span", { id: "tasks-shown", class: "muted small" }, shown)),
    rows.length ? h("table", {}, h("thead", {}, h("tr", {}, ...["Task", "State", "Progress", "Attempt", "Agent", "Cause"].map((x) => h("th", {}, x)))), h("tbody", {}, rows)) : null);
}

// A blob's text, at most LOG_LIMIT bytes of it.
async function blobText(digest) {
  const res = await api("/api/v1/blobs/" + digest);
  const reader = res.body.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
    if (size >= LOG_LIMIT) { reader.cancel(); break; }
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) { all.set(c, at); at += c.length; }
  const text = new TextDecoder().decode(all.subarray(0, LOG_LIMIT));
  return size > LOG_LIMIT ? text + "\n… (the rest is cut here)" : text;
}

async function download(digest, name) {
  const res = await api("/api/v1/blobs/" + digest);
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: name.split("/").pop() });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function streamBlock(label, captured) {
  if (!captured) return null;
  if (captured.size === 0) return h("div", {}, h("h4", {}, label), h("p", { class: "muted small" }, "(empty)"));
  const text = await blobText(captured.digest).catch((e) => "could not read it: " + e.message);
  return h("div", {}, h("h4", {}, label, " ", h("span", { class: "muted small" }, bytes(captured.size) + (captured.truncated ? ", cut by the agent" : ""))), h("pre", { class: "log" }, text));
}

async function taskDetail(jobId, index) {
  const t = await json(`/api/v1/jobs/${encodeURIComponent(jobId)}/tasks/${encodeURIComponent(index)}`);
  const attempts = [];
  for (const a of t.attempts.slice().reverse()) {
    const blocks = [];
    if (a.result) {
      for (const m of a.result.modules) {
        blocks.push(h("p", {}, h("strong", {}, m.name), ": ", outcomeText(m.outcome)));
        blocks.push(await streamBlock("stdout", m.stdout));
        blocks.push(await streamBlock("stderr", m.stderr));
      }
      if (a.result.outputs.length) {
        blocks.push(h("h4", {}, "Outputs"));
        blocks.push(h("ul", {}, a.result.outputs.map((o) => h("li", {},
          h("a", { href: "#", onclick: (e) => { e.preventDefault(); download(o.digest, o.path); } }, o.path),
          h("span", { class: "muted small" }, " " + bytes(o.size))))));
      }
    }
    attempts.push(h("section", { class: "attempt" },
      h("h3", {}, "Attempt " + a.attempt, " ", h("span", { class: "muted small" }, "on " + a.agent)),
      h("dl", { class: "facts" },
        h("dt", {}, "Assigned"), h("dd", {}, time(a.assigned_ms)),
        h("dt", {}, "Started"), h("dd", {}, time(a.started_ms) + (a.setup_us !== null && a.setup_us !== undefined ? ` (${(a.setup_us / 1000).toFixed(1)} ms after it reached the agent)` : "")),
        h("dt", {}, "Ended"), h("dd", {}, time(a.finished_ms)),
        h("dt", {}, "Outcome"), h("dd", {}, a.outcome || "running")),
      blocks));
  }
  const task = t.task;
  return h("div", {},
    h("h2", {}, `Task ${task.job}.${task.index}`),
    h("p", {}, stateBadge(task.state), task.cause ? " " + task.cause : ""),
    t.checkpoint ? h("p", { class: "muted" }, `Checkpoint: ${bytes(t.checkpoint.size)} from attempt ${t.checkpoint.attempt}` + (t.checkpoint.progress !== null ? ` at ${pct(t.checkpoint.progress)}` : "")) : null,
    attempts.length ? attempts : h("p", { class: "empty" }, "No attempt yet: the task waits for an agent."));
}

function outcomeText(o) {
  switch (o.kind) {
    case "exited": return "exited with code " + o.code;
    case "trapped": return "trapped: " + o.message;
    case "timed_out": return "timed out after " + o.limit_ms + " ms";
    case "memory_exceeded": return "went over its memory limit of " + bytes(o.limit);
    case "cancelled": return "cancelled: " + o.reason;
    case "refused": return "refused: " + o.reason;
    case "evicted": return "evicted: " + (o.reason || "");
    case "left": return "left: " + o.reason;
    case "disk_exceeded": return "disk cap reached: " + o.reason;
    case "unreportable": return "its result could not be reported: " + o.reason;
    default: return JSON.stringify(o);
  }
}

// ---- live updates --------------------------------------------------------------------------

function setLive(ok, text) {
  const el = document.getElementById("live");
  el.className = "live " + (ok ? "on" : "off");
  el.textContent = text;
}

// Follows /api/v1/stream; on any break, reloads the pool and follows again.
async function follow() {
  for (;;) {
    try {
      const pool = await json("/api/v1/pool");
      applyPool(pool, true);
      refreshAccounting();
      const me = await json("/api/v1/me");
      document.getElementById("who").textContent =
        me.user + " (" + me.role + (me.clusters ? ", " + me.clusters.join(", ") : "") +
        (me.groups && me.groups.length ? ", group " + me.groups.join(", ") : "") + ")";
      const res = await api("/api/v1/stream?since_ms=" + pool.now_ms, { headers: { Accept: "text/event-stream" } });
      setLive(true, "live");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          handleEvent(block);
        }
      }
    } catch (e) {
      if (e instanceof NeedsToken) return;
      console.warn("live updates broke off:", e);
    }
    setLive(false, "reconnecting…");
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function handleEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (name === "pool") {
    applyPool(JSON.parse(data.join("\n")), false);
    view.updates += 1;
    document.body.dataset.updates = String(view.updates);
    // An open job or task follows along.
    if (/^#\/jobs\/\d+$/.test(location.hash) && view.updates % 3 === 0) showDetail();
  } else if (name === "error") {
    setLive(false, "coordinator error: " + data.join(" "));
  }
}

window.addEventListener("resize", () => { if (view.pool) renderHarvest(view.pool.now_ms); });

setInterval(() => {
  if (view.lastEventMs && Date.now() - view.lastEventMs > 5000) setLive(false, "no update for " + ago(view.lastEventMs).replace(" ago", ""));
}, 1000);

async function start() {
  try {
    const info = await json("/api/v1/info");
    document.getElementById("cluster-kind").textContent =
      (info.dev ? "development cluster" : "coordinator") + " · version " + info.version;
  } catch (e) {
    if (e instanceof NeedsToken) return;
    setLive(false, String(e.message || e));
  }
  showDetail();
  follow();
  setInterval(refreshAccounting, 10000);
}

start();
