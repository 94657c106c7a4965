// taskstream dashboard: every page reads the HTTP API through api(); data goes into the DOM as text only.
// No innerHTML with data anywhere in this file: el() and svg() build nodes, strings become text nodes.
"use strict";

const KEY_STORAGE = "taskstream.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "upstream_failed"]);

// ------------------------------------------------------------------ the one way to the API

class ApiError extends Error {
  constructor(status, problem) {
    const text = problem && (problem.detail || problem.title) || `HTTP ${status}`;
    super(text);
    this.status = status;
    this.problem = problem || {};
  }
}

// Every request of the dashboard goes through here, so authentication is added in one place.
async function api(path, { method = "GET", body, headers = {}, okStatuses = [] } = {}) {
  const h = { Accept: "application/json, application/problem+json", ...headers };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) h.Authorization = key.includes(" ") ? key : `Bearer ${key}`;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body),
                                credentials: "same-origin", cache: "no-store" });
  let data = null;
  const type = r.headers.get("content-type") || "";
  if (type.includes("json")) {
    try { data = await r.json(); } catch (e) { data = null; }
  }
  if (r.status === 401 || r.status === 403) {
    notice(`The API answered ${r.status} (${(data && (data.detail || data.title)) || "unauthorised"}): type an API key with the right role in the header.`, "warn");
  }
  if (!r.ok && !okStatuses.includes(r.status)) throw new ApiError(r.status, data);
  return { status: r.status, data };
}

// ------------------------------------------------------------------ DOM helpers (text only)

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "class") node.setAttribute("class", v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function $(id) { return document.getElementById(id); }
function clear(node) { node.replaceChildren(); return node; }
function setText(id, value) { const n = $(id); if (n) n.textContent = value === null || value === undefined ? "–" : String(value); }

function showProblem(id, err) {
  const box = $(id);
  if (!box) return;
  if (!err) { box.hidden = true; clear(box); return; }
  box.hidden = false;
  const p = err.problem || {};
  clear(box).append(el("strong", { text: p.title || (err.status ? `HTTP ${err.status}` : "Error") }), " ",
                    el("span", { class: "detail", text: err.message }));
}

function notice(text, kind = "info") {
  const n = $("notice");
  n.hidden = !text;
  n.className = `notice ${kind}`;
  n.textContent = text || "";
}

function pretty(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

function fmtTime(iso) {
  if (!iso) return "—";
  return iso.replace("T", " ").replace(/\.(\d{3})\d*Z$/, ".$1Z");
}

function ago(iso) {
  if (!iso) return "—";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 1) return "now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function badge(status) { return el("span", { class: `badge status-${status}`, text: status }); }
function taskLink(id, text) { return el("a", { href: `/ui/tasks/${encodeURIComponent(id)}`, class: "id", text: text || id }); }
function shortId(id) { return id && id.length > 12 ? `${id.slice(0, 8)}…` : id; }

// Run fn now and every ms milliseconds while the page is visible; never two at once.
function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); } catch (e) { console.error(e); } finally { busy = false; }
  };
  tick();
  return setInterval(tick, ms);
}

function stamp() { setText("updated", new Date().toISOString().slice(11, 19) + " UTC"); }

// ------------------------------------------------------------------ header: key field and readiness

function initHeader() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  const save = () => {
    const v = input.value.trim();
    if (v) sessionStorage.setItem(KEY_STORAGE, v); else sessionStorage.removeItem(KEY_STORAGE);
  };
  input.addEventListener("change", save);
  $("key-form").addEventListener("submit", (e) => { e.preventDefault(); save(); location.reload(); });
}

async function readiness() {
  const { status, data } = await api("/readyz", { okStatuses: [503] });
  const dot = $("ready");
  const ok = status === 200;
  dot.className = `ready ${ok ? "is-ok" : "is-bad"}`;
  dot.textContent = ok ? "ready" : "not ready";
  dot.title = ok ? "GET /readyz: ready" : (data && data.detail) || "not ready";
  return { ok, data };
}

// ------------------------------------------------------------------ charts (hand-drawn SVG)

const STATUS_COLORS = {
  pending: "#9aa5b1", scheduled: "#7c8fd6", queued: "#4c9be8", running: "#f0a030",
  succeeded: "#2e9e5b", failed: "#d64545", cancelled: "#6b6b6b", upstream_failed: "#b0568f",
};
const PRIORITY_COLORS = { high: "#d9534f", medium: "#4c9be8", low: "#9aa5b1" };

// Horizontal bars: rows of [label, value, color].
function barChart(container, rows, { unit = "" } = {}) {
  const width = 420, rowH = 22, labelW = 120, valueW = 60;
  const max = Math.max(1, ...rows.map((r) => r[1] || 0));
  const g = svg("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 4}`, class: "bars", role: "img" });
  rows.forEach(([label, value, color], i) => {
    const y = i * rowH + 2;
    const w = Math.round(((value || 0) / max) * (width - labelW - valueW));
    g.append(svg("text", { x: labelW - 6, y: y + 15, "text-anchor": "end", class: "axis", text: label }),
             svg("rect", { x: labelW, y: y + 3, width: Math.max(w, value ? 2 : 0), height: rowH - 6, fill: color || "#4c9be8",
                           "data-label": label, "data-value": value ?? "" },
                 svg("title", { text: `${label}: ${value ?? "unknown"}${unit}` })),
             svg("text", { x: labelW + w + 6, y: y + 15, class: "value", text: value === null || value === undefined ? "?" : `${value}${unit}` }));
  });
  clear(container).append(g);
}

// Vertical bars: columns of [label, value]; every nth label drawn.
function columnChart(container, cols, { color = "#4c9be8", labelEvery = 1, unit = "" } = {}) {
  const width = 420, height = 150, bottom = 20, top = 14;
  const max = Math.max(...cols.map((c) => c[1] || 0), 0);
  const colW = (width - 10) / Math.max(cols.length, 1);
  const g = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "columns", role: "img" });
  g.append(svg("line", { x1: 5, x2: width - 5, y1: height - bottom, y2: height - bottom, class: "baseline" }));
  cols.forEach(([label, value], i) => {
    const h = max ? Math.round(((value || 0) / max) * (height - bottom - top)) : 0;
    const x = 5 + i * colW;
    g.append(svg("rect", { x: x + 1, y: height - bottom - h, width: Math.max(colW - 2, 1), height: h, fill: color },
                 svg("title", { text: `${label || `column ${i + 1}`}: ${value}${unit}` })));
    if (label && i % labelEvery === 0) g.append(svg("text", { x: x + colW / 2, y: height - 5, "text-anchor": "middle", class: "axis", text: label }));
  });
  g.append(svg("text", { x: 6, y: 11, class: "axis", text: `max ${max}${unit}` }));
  clear(container).append(g);
}

// ------------------------------------------------------------------ overview

async function overviewThroughput() {
  const { data } = await api("/ui/api/throughput?minutes=10");
  const n = data.columns.length;
  const cols = data.columns.map((c, i) => {
    const total = Object.values(c.by_status).reduce((a, b) => a + b, 0);
    const back = (n - 1 - i) * data.step_s;
    const label = back === 0 ? "now" : back % 120 === 0 ? `-${back / 60} min` : "";
    return [label, c.known ? Math.round((total / data.step_s) * 100) / 100 : 0];
  });
  columnChart($("chart-throughput"), cols, { unit: "/s" });
  const unknown = data.columns.filter((c) => !c.known).length;
  setText("throughput-caption", `Tasks finished per second, one column per ${data.step_s} s over the last 10 minutes` +
          (unknown ? ` (the API started ${Math.round((Date.now() / 1000 - data.since) / 60)} min ago: nothing before).` : "."));
}

async function overviewStats() {
  const { data } = await api("/api/v1/stats");
  const t = data.tasks;
  for (const node of document.querySelectorAll("[data-status-count]")) {
    node.textContent = String(t.by_status[node.dataset.statusCount] ?? 0);
  }
  setText("total-count", t.total);
  barChart($("chart-status"), Object.entries(t.by_status).map(([s, n]) => [s, n, STATUS_COLORS[s]]));
  barChart($("chart-priority"), Object.entries(t.by_priority).map(([p, n]) => [p, n, PRIORITY_COLORS[p]]));
  const depth = data.queue_depth;
  barChart($("chart-queue"), ["high", "medium", "low"].map((p) => [p, depth ? depth[p] : null, PRIORITY_COLORS[p]]));
  setText("throughput-text", `${data.throughput.per_second} tasks/s over the last ${data.throughput.window_s} s.`);
  const finished = Object.entries(data.throughput.by_status).map(([s, n]) => `${n} ${s}`).join(", ");
  setText("finished-60", `${data.throughput.finished}${finished ? ` (${finished})` : ""}`);
  const oq = data.oldest_queued;
  const oqNode = clear($("oldest-queued"));
  if (oq) oqNode.append(taskLink(oq.task_id, shortId(oq.task_id)), ` ${oq.priority}, ${oq.age_s} s`);
  else oqNode.textContent = "none";
  setText("read-model", data.read_model.caught_up ? "caught up" : "catching up");
  if (data.errors) notice(data.errors.join("; "), "warn"); else notice("");
}

async function overviewLatency() {
  const { data } = await api("/ui/api/latency?limit=500");
  const cols = data.buckets.map((b) => [b.le === null ? `>${data.buckets[data.buckets.length - 2].le}` : String(b.le), b.count]);
  columnChart($("chart-latency"), cols, { color: "#2e9e5b" });
  const t = data.total_s, r = data.run_s;
  setText("latency-text", data.count
    ? `Seconds from creation to success (a column counts tasks up to its bound) of the newest ${data.count} succeeded tasks: ` +
      `p50 ${t.p50} s, p95 ${t.p95} s, max ${t.max} s; running time p50 ${r.p50 ?? "–"} s, p95 ${r.p95 ?? "–"} s.`
    : "No succeeded task yet.");
}

async function overviewCluster() {
  const groups = clear($("groups")), beats = clear($("heartbeats"));
  try {
    const { data } = await api("/api/v1/cluster");
    for (const g of data.groups) {
      const members = g.members_reported ? String(g.members.length) : "unknown";
      groups.append(el("tr", {}, el("td", { class: "mono", text: g.group }), el("td", { text: g.role }),
                       el("td", { text: g.state }), el("td", { text: members })));
    }
    if (!data.heartbeats.length) beats.append(el("tr", {}, el("td", { colspan: 3, class: "hint", text: "no task heartbeat yet" })));
    for (const b of data.heartbeats) {
      beats.append(el("tr", {}, el("td", { class: "mono", text: b.executor }), el("td", { text: fmtTime(b.last_heartbeat) }),
                      el("td", { text: ago(b.last_heartbeat) })));
    }
  } catch (e) {
    groups.append(el("tr", {}, el("td", { colspan: 4, class: "error", text: e.message })));
  }
}

async function overviewLag() {
  try {
    const { data } = await api("/ui/api/lag");
    setText("processor-lag", `${data.lag} events`);
  } catch (e) {
    setText("processor-lag", `unknown (${e.message})`);
  }
}

async function overviewReady() {
  const { ok, data } = await readiness();
  const box = $("not-ready");
  box.hidden = ok;
  const list = clear($("ready-reasons"));
  if (!ok) for (const r of (data && data.reasons) || [data && data.detail || "unknown"]) list.append(el("li", { text: r }));
}

function pageOverview() {
  every(2000, async () => {
    const results = await Promise.allSettled([overviewStats(), overviewReady(), overviewCluster(), overviewLag()]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) notice(`Could not refresh: ${failed.reason.message}`, "warn");
    stamp();
  });
  every(10000, overviewLatency);
  every(5000, overviewThroughput);
}

// ------------------------------------------------------------------ tasks list

function filtersFromUrl() {
  const q = new URLSearchParams(location.search);
  const form = $("filters");
  for (const name of ["status", "priority", "prefix", "handler", "label", "limit"]) {
    if (q.has(name)) form.elements[name].value = q.get(name);
  }
}

function listQuery(form) {
  const q = new URLSearchParams();
  for (const name of ["status", "priority", "prefix", "handler", "limit"]) {
    const v = form.elements[name].value.trim();
    if (v) q.set(name, v);
  }
  for (const label of form.elements.label.value.split(",").map((s) => s.trim()).filter(Boolean)) q.append("label", label);
  return q;
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}:${v}`).join(" ");
}

// How long a task ran: from its attempt's start to its end, or to now while it runs ("" before it started).
function taskDuration(t) {
  if (!t.started_at) return "";
  const end = t.finished_at ? Date.parse(t.finished_at) : Date.now();
  const s = Math.max(0, (end - Date.parse(t.started_at)) / 1000);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function pageTasks() {
  filtersFromUrl();
  const form = $("filters");
  let cursors = [null];  // cursor of each page seen; the last is the current page's
  let next = null;

  async function load() {
    const q = listQuery(form);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    try {
      const { data } = await api(`/api/v1/tasks?${q}`);
      showProblem("list-error", null);
      next = data.next_cursor;
      const body = clear($("tasks"));
      if (!data.tasks.length) body.append(el("tr", {}, el("td", { colspan: 10, class: "hint", text: "no tasks" })));
      for (const t of data.tasks) {
        body.append(el("tr", { "data-id": t.id, "data-status": t.status },
          el("td", {}, taskLink(t.id)), el("td", { text: t.name || "" }), el("td", { text: t.handler }),
          el("td", {}, badge(t.status)), el("td", { text: t.priority }), el("td", { text: `${t.attempt}/${t.max_attempts}` }),
          el("td", { class: "duration", text: taskDuration(t) }), el("td", { text: fmtTime(t.created_at) }), el("td", { text: ago(t.updated_at) }),
          el("td", { class: "labels", text: labelsText(t.labels) })));
      }
      setText("page-no", `page ${cursors.length}`);
      setText("partial", data.partial ? "partial page: the scan budget ran out; Next continues" : "");
      $("next").disabled = !next;
      $("prev").disabled = cursors.length < 2;
    } catch (e) {
      showProblem("list-error", e);
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = listQuery(form);
    if (form.elements.label.value.trim()) { q.delete("label"); q.set("label", form.elements.label.value.trim()); }
    history.replaceState(null, "", `/ui/tasks${q.toString() ? `?${q}` : ""}`);
    cursors = [null];
    load();
  });
  $("first").addEventListener("click", () => { cursors = [null]; load(); });
  $("prev").addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); load(); } });
  $("next").addEventListener("click", () => { if (next) { cursors.push(next); load(); } });
  $("search").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("search-id").value.trim();
    if (!id) return;
    try {
      await api(`/api/v1/tasks/${encodeURIComponent(id)}`);
      location.href = `/ui/tasks/${encodeURIComponent(id)}`;
    } catch (err) {
      setText("search-error", err.message);
    }
  });
  every(3000, () => ($("live").checked ? load() : null));
}

// ------------------------------------------------------------------ task detail

const FIELD_ORDER = ["id", "name", "handler", "status", "priority", "attempt", "max_attempts", "timeout_s", "labels",
  "depends_on", "dependents", "key", "workflow_id", "upstream_keys", "run_at", "retry_at", "created_at", "updated_at",
  "started_at", "finished_at", "retry", "schedule_id", "scheduled_for", "version"];
const BIG_FIELDS = new Set(["payload", "result", "error", "checkpoint", "traceback"]);

function fieldValue(name, value) {
  if (value === null || value === undefined || value === "") return el("span", { class: "hint", text: "—" });
  if ((name === "depends_on" || name === "dependents") && Array.isArray(value)) {
    return el("span", {}, value.length ? value.flatMap((id) => [taskLink(id, shortId(id)), " "]) : "—");
  }
  if (name === "status") return badge(value);
  if (name === "schedule_id") return el("span", { class: "mono", text: value });
  // Why a pending task waits (paused:handler:<name>, concurrency:<key>): a reason, not a time like scheduled_for.
  if (name === "waiting_for") return el("span", { class: "mono", text: value });
  if (typeof value === "object") return el("code", { text: JSON.stringify(value) });
  if (/_at$|_for$/.test(name)) return el("span", { text: `${fmtTime(value)} (${ago(value)})` });
  return el("span", { text: String(value) });
}

function fillFields(tbody, task) {
  clear(tbody);
  const names = [...FIELD_ORDER, ...Object.keys(task).filter((k) => !FIELD_ORDER.includes(k) && !BIG_FIELDS.has(k))];
  for (const name of names) {
    if (!(name in task)) continue;
    tbody.append(el("tr", { "data-field": name }, el("th", { text: name }), el("td", {}, fieldValue(name, task[name]))));
  }
}

const EVENT_CLASS = {
  TaskFailed: "bad", TaskRetryScheduled: "retry", LeaseExpired: "retry", TaskDeadLettered: "bad", TaskRedriven: "redrive",
  TaskSucceeded: "good", TaskCancelled: "muted", TaskStarted: "run", TaskQueued: "run", TaskCreated: "start",
};
const EVENT_SKIP = new Set(["type", "occurred_at", "attempt", "producer", "event_id"]);

function eventDetails(ev) {
  const parts = [];
  for (const [k, v] of Object.entries(ev)) {
    if (EVENT_SKIP.has(k) || v === null || v === "" || (Array.isArray(v) && !v.length) ||
        (typeof v === "object" && !Array.isArray(v) && v !== null && !Object.keys(v).length)) continue;
    const text = typeof v === "string" ? v : JSON.stringify(v);
    parts.push(`${k}: ${text.length > 300 ? `${text.slice(0, 300)}…` : text}`);
  }
  return parts.join("  ·  ");
}

function pageTask() {
  const id = document.body.dataset.taskId;
  const enc = encodeURIComponent(id);
  let task = null;
  let events = [];
  let asOfTouched = false;

  async function loadTask() {
    try {
      const { data } = await api(`/api/v1/tasks/${enc}`);
      task = data;
      showProblem("task-error", null);
    } catch (e) {
      showProblem("task-error", e);
      return;
    }
    const st = $("status");
    st.className = `badge status-${task.status}`;
    st.textContent = task.status;
    fillFields($("fields"), task);
    for (const name of BIG_FIELDS) $(name).textContent = pretty(task[name]);
    $("traceback-box").hidden = !task.traceback;  // the handler's frames of the failure, collapsed until opened
    $("traceback-type").textContent = task.error_type || "";
    const wl = $("workflow-link");
    if (task.workflow_id) {
      wl.hidden = false;
      wl.href = `/ui/workflows/${encodeURIComponent(task.workflow_id)}`;
    }
    if (!asOfTouched) setSliderRange();
  }

  async function loadEvents() {
    try {
      const { data } = await api(`/api/v1/tasks/${enc}/events`);
      showProblem("events-error", null);
      if (data.events.length === events.length) return;
      events = data.events;
    } catch (e) {
      showProblem("events-error", e);
      return;
    }
    const list = clear($("timeline"));
    for (const ev of events) {
      list.append(el("li", { class: `event ${EVENT_CLASS[ev.type] || ""}`, "data-type": ev.type },
        el("a", { href: "#as-of", class: "time", text: fmtTime(ev.occurred_at), title: "show the task as of this event",
                  onclick: (e) => { e.preventDefault(); showAsOf(ev.occurred_at); } }),
        el("span", { class: "etype", text: ev.type }),
        el("span", { class: "attempt", text: ev.attempt === null || ev.attempt === undefined ? "" : `attempt ${ev.attempt}` }),
        el("span", { class: "producer", text: ev.producer }),
        el("div", { class: "edetails", text: eventDetails(ev) })));
    }
    if (!events.length) list.append(el("li", { class: "hint", text: "no events read yet" }));
  }

  function setSliderRange() {
    if (!task) return;
    const slider = $("as-of-slider");
    slider.min = Date.parse(task.created_at);
    slider.max = Math.max(Date.parse(task.updated_at), Date.parse(task.created_at) + 1);
    slider.step = 1;
    slider.value = slider.max;
    $("as-of-input").value = new Date(Number(slider.max)).toISOString();
  }

  async function showAsOf(iso) {
    asOfTouched = true;
    $("as-of-input").value = iso;
    const t = Date.parse(iso);
    if (!Number.isNaN(t)) $("as-of-slider").value = t;
    try {
      const { data } = await api(`/api/v1/tasks/${enc}?as_of=${encodeURIComponent(iso)}`);
      showProblem("as-of-error", null);
      setText("as-of-title", `As of ${fmtTime(iso)}: ${data.status}, attempt ${data.attempt}, version ${data.version}.`);
      fillFields($("as-of-fields"), { ...data, result: undefined });
      $("as-of-fields").append(el("tr", {}, el("th", { text: "error" }), el("td", {}, el("code", { text: data.error || "—" }))));
    } catch (e) {
      clear($("as-of-fields"));
      showProblem("as-of-error", e);
    }
    $("as-of").scrollIntoView({ block: "nearest" });
  }

  $("as-of-slider").addEventListener("input", (e) => {
    asOfTouched = true;
    $("as-of-input").value = new Date(Number(e.target.value)).toISOString();
  });
  $("as-of-slider").addEventListener("change", () => showAsOf($("as-of-input").value));
  $("as-of").addEventListener("submit", (e) => { e.preventDefault(); showAsOf($("as-of-input").value.trim()); });

  async function act(label, method, path) {
    if (!confirm(`${label} task ${id}?`)) return;
    const out = $("action-result");
    out.className = "";
    out.textContent = `${label}…`;
    try {
      const { data } = await api(path, { method });
      out.className = "ok";
      out.textContent = `${label}: accepted (status ${data.status})`;
    } catch (e) {
      out.className = "error";
      out.textContent = `${label} refused: ${e.message}`;
    }
    events = [];
    await Promise.allSettled([loadTask(), loadEvents()]);
  }
  // The buttons are always there: the API decides (409 with its reason), the page shows its answer.
  $("cancel").addEventListener("click", () => act("Cancel", "DELETE", `/api/v1/tasks/${enc}`));
  $("retry").addEventListener("click", () => act("Retry", "POST", `/api/v1/tasks/${enc}/retry`));

  every(2000, async () => {
    if (task && TERMINAL.has(task.status) && events.length) return;
    await loadTask();
    await loadEvents();
  });
  every(10000, async () => { await loadTask(); await loadEvents(); });
}

// ------------------------------------------------------------------ workflow graph

// Layered layout (Sugiyama, simply): a task's column is its longest path from a root; an edge that spans
// several columns goes through a virtual point in each column between, so it never runs under a node; rows
// are ordered by the mean row of their upstreams (a few sweeps) to keep crossings down.
function layout(tasks) {
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const depth = new Map();
  const visit = (t, stack = new Set()) => {
    if (depth.has(t.id)) return depth.get(t.id);
    if (stack.has(t.id)) return 0;  // a cycle cannot be submitted; stay safe anyway
    stack.add(t.id);
    let d = 0;
    for (const up of t.depends_on) if (byId.has(up)) d = Math.max(d, visit(byId.get(up), stack) + 1);
    stack.delete(t.id);
    depth.set(t.id, d);
    return d;
  };
  tasks.forEach((t) => visit(t));
  const cols = [];
  const ups = new Map();  // node id -> upstream node ids (virtual ones included)
  const add = (id, d) => { (cols[d] ||= []).push(id); ups.set(id, ups.get(id) || []); };
  for (const t of tasks) add(t.id, depth.get(t.id));
  const edges = [];  // each: the chain of node ids from upstream to dependent
  for (const t of tasks) {
    for (const up of t.depends_on) {
      if (!byId.has(up)) continue;
      const chain = [up];
      for (let d = depth.get(up) + 1; d < depth.get(t.id); d++) {
        const v = `~${up}>${t.id}@${d}`;
        add(v, d);
        ups.get(v).push(chain[chain.length - 1]);
        chain.push(v);
      }
      ups.get(t.id).push(chain[chain.length - 1]);
      chain.push(t.id);
      edges.push(chain);
    }
  }
  const name = (id) => (byId.has(id) ? byId.get(id).key || byId.get(id).name || id : id);
  cols.forEach((c) => c.sort((a, b) => name(a).localeCompare(name(b))));
  for (let sweep = 0; sweep < 4; sweep++) {
    const row = new Map();
    cols.forEach((c) => c.forEach((id, i) => row.set(id, i)));
    for (let d = 1; d < cols.length; d++) {
      const key = (id) => { const u = ups.get(id); return u.length ? u.reduce((a, x) => a + row.get(x), 0) / u.length : row.get(id); };
      cols[d].sort((a, b) => key(a) - key(b) || name(a).localeCompare(name(b)));
      cols[d].forEach((id, i) => row.set(id, i));
    }
  }
  return { cols, edges, byId };
}

function drawGraph(container, tasks) {
  const nodeW = 170, nodeH = 46, gapX = 70, gapY = 18, pad = 16;
  const { cols, edges } = layout(tasks);
  const pos = new Map();
  const rows = Math.max(...cols.map((c) => c.length), 1);
  cols.forEach((col, x) => col.forEach((id, y) => {
    const offset = ((rows - col.length) * (nodeH + gapY)) / 2;
    pos.set(id, { x: pad + x * (nodeW + gapX), y: pad + offset + y * (nodeH + gapY) });
  }));
  const width = pad * 2 + cols.length * nodeW + (cols.length - 1) * gapX;
  const height = pad * 2 + rows * nodeH + (rows - 1) * gapY;
  const g = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "dag", role: "img" });
  g.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
                                svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#888" }))));
  for (const chain of edges) {
    // leave each point at its right side, enter the next at its left; a virtual point is crossed straight
    let d = "";
    for (let i = 0; i + 1 < chain.length; i++) {
      const a = pos.get(chain[i]), b = pos.get(chain[i + 1]);
      const x1 = i === 0 ? a.x + nodeW : a.x + nodeW / 2, y1 = a.y + nodeH / 2;
      const last = i + 2 === chain.length;
      const x2 = last ? b.x : b.x + nodeW / 2, y2 = b.y + nodeH / 2;
      const mx = (x1 + x2) / 2;
      d += `${i === 0 ? `M ${x1} ${y1} ` : ""}C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2} `;
    }
    g.append(svg("path", { d, class: "edge", "marker-end": "url(#arrow)" }));
  }
  for (const t of tasks) {
    const p = pos.get(t.id);
    const label = t.key || t.name || shortId(t.id);
    const node = svg("a", { href: `/ui/tasks/${encodeURIComponent(t.id)}`, class: "node", "data-id": t.id, "data-key": t.key || "",
                            "data-status": t.status },
      svg("title", { text: `${label} (${t.handler}): ${t.status}` }),
      svg("rect", { x: p.x, y: p.y, width: nodeW, height: nodeH, rx: 6, fill: STATUS_COLORS[t.status] || "#ccc" }),
      svg("text", { x: p.x + 10, y: p.y + 19, class: "nkey", text: label.length > 22 ? `${label.slice(0, 21)}…` : label }),
      svg("text", { x: p.x + 10, y: p.y + 36, class: "nstatus", text: `${t.status} · ${t.handler}`.slice(0, 28) }));
    g.append(node);
  }
  clear(container).append(g);
}

// ------------------------------------------------------------------ workflow duration (Gantt-like)

// "1.234 s", "2 min 5 s", "1 h 3 min": a duration for people.
function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  return `${Math.floor(ms / 3600000)} h ${Math.round((ms % 3600000) / 60000)} min`;
}

const TICK_STEPS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000,
  300000, 600000, 900000, 1800000, 3600000, 7200000, 21600000, 43200000, 86400000];

// One row per task on the workflow's time axis: a light bar from creation to the start of its last attempt (the
// wait: dependencies, queue, retries), a solid bar in its status colour for the run (to now while it runs), a
// diamond at the end of a task that ended without running (upstream_failed, cancelled early).
function drawGantt(container, wf, now = Date.now()) {
  const tasks = wf.tasks;
  const t = (iso) => (iso ? Date.parse(iso) : null);
  const starts = tasks.map((x) => t(x.created_at)).concat([t(wf.created_at)]).filter((v) => v !== null);
  const t0 = Math.min(...starts);
  const ends = tasks.flatMap((x) => [t(x.finished_at), t(x.started_at)]).filter((v) => v !== null);
  let t1 = wf.status === "running" ? now : Math.max(t0, ...ends, t(wf.finished_at) || t0);
  if (t1 - t0 < 1) t1 = t0 + 1;
  const labelW = 170, chartW = 720, tailW = 90, rowH = 24, barH = 14, top = 26, pad = 8;
  const width = labelW + chartW + tailW, height = top + tasks.length * rowH + pad;
  const x = (ms) => labelW + ((ms - t0) / (t1 - t0)) * chartW;
  const g = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "gantt-chart", role: "img",
                         "data-t0": new Date(t0).toISOString(), "data-t1": new Date(t1).toISOString() });
  tasks.forEach((_, i) => { if (i % 2) g.append(svg("rect", { x: 0, y: top + i * rowH, width, height: rowH, class: "stripe" })); });
  const span = t1 - t0;
  const step = TICK_STEPS_MS.find((s) => span / s <= 8) || TICK_STEPS_MS[TICK_STEPS_MS.length - 1];
  for (let ms = 0; ms <= span; ms += step) {
    const px = x(t0 + ms);
    g.append(svg("line", { x1: px, x2: px, y1: top - 6, y2: height - pad, class: "tick" }),
             svg("text", { x: px, y: top - 10, class: "axis", "text-anchor": "middle", text: `+${fmtDuration(ms)}` }));
  }
  tasks.forEach((task, i) => {
    const y = top + i * rowH;
    const created = t(task.created_at), started = t(task.started_at), finished = t(task.finished_at);
    const terminal = TERMINAL.has(task.status);
    const label = task.key || task.name || shortId(task.id);
    const row = svg("a", { href: `/ui/tasks/${encodeURIComponent(task.id)}`, class: "gantt-row", "data-id": task.id,
                           "data-key": task.key || "", "data-status": task.status });
    const waitEnd = started !== null ? started : (finished !== null ? finished : now);
    const runEnd = started === null ? null : (terminal && finished !== null ? finished : now);
    const waitMs = created !== null ? waitEnd - created : null;
    const runMs = runEnd === null ? null : runEnd - started;
    row.append(svg("title", { text: `${label} (${task.handler}): ${task.status}` +
      `${runMs !== null ? `, ran ${fmtDuration(runMs)}${terminal ? "" : " so far"}` : ""}` +
      `${waitMs !== null ? `, waited ${fmtDuration(waitMs)}` : ""}, attempt ${task.attempt}/${task.max_attempts}` }));
    row.append(svg("text", { x: 4, y: y + rowH / 2 + 4, class: "glabel", text: label.length > 24 ? `${label.slice(0, 23)}…` : label }));
    if (created !== null) {
      row.append(svg("rect", { x: x(created), y: y + (rowH - barH) / 2 + 3, width: Math.max(1, x(waitEnd) - x(created)),
                               height: barH - 6, rx: 2, class: "wait" }));
    }
    if (runEnd !== null) {
      row.append(svg("rect", { x: x(started), y: y + (rowH - barH) / 2, width: Math.max(2, x(runEnd) - x(started)),
                               height: barH, rx: 3, class: `run${terminal ? "" : " open"}`, fill: STATUS_COLORS[task.status] || "#ccc",
                               "data-ms": Math.round(runMs) }));
    } else if (terminal && finished !== null) {
      const cx = x(finished), cy = y + rowH / 2;
      row.append(svg("path", { d: `M ${cx} ${cy - 6} L ${cx + 6} ${cy} L ${cx} ${cy + 6} L ${cx - 6} ${cy} Z`,
                               class: "ended", fill: STATUS_COLORS[task.status] || "#ccc" }));
    }
    const endX = Math.max(runEnd !== null ? x(runEnd) : 0, created !== null ? x(waitEnd) : 0, labelW);
    row.append(svg("text", { x: endX + 6, y: y + rowH / 2 + 4, class: "gdur",
                             text: runMs !== null ? fmtDuration(runMs) : task.status }));
    g.append(row);
  });
  clear(container).append(g);
}

function workflowDuration(wf) {
  if (!wf.started_at) return null;
  const end = wf.finished_at ? Date.parse(wf.finished_at) : Date.now();
  return end - Date.parse(wf.started_at);
}

function countsText(counts) {
  return Object.entries(counts || {}).map(([s, n]) => `${n} ${s}`).join(", ");
}

// A handler's or workflow's pause: POST /api/v1/{kind}s/{name}:pause|:resume, then ``done()``.
async function setPaused(kind, name, action, out, done) {
  try {
    await api(`/api/v1/${kind}s/${encodeURIComponent(name)}:${action}`, { method: "POST" });
    out.className = "ok";
    out.textContent = action === "pause" ? "paused" : "resumed";
  } catch (e) {
    out.className = "error";
    out.textContent = `${action} refused: ${e.message}`;
  }
  done();
}

async function pausedNames(kind) {
  const { data } = await api(`/api/v1/pauses?kind=${kind}`);
  return new Set(data.pauses.map((p) => p.name));
}

function pageWorkflow() {
  const wid = document.body.dataset.workflowId;
  let last = "";
  async function showPause() {
    const paused = (await pausedNames("workflow")).has(wid);
    $("wf-paused").hidden = !paused;
    $("wf-pause").disabled = paused;
    $("wf-resume").disabled = !paused;
  }
  $("wf-pause").addEventListener("click", () => setPaused("workflow", wid, "pause", $("wf-result"), showPause));
  $("wf-resume").addEventListener("click", () => setPaused("workflow", wid, "resume", $("wf-result"), showPause));
  every(2000, async () => {
    try {
      const { data } = await api(`/api/v1/workflows/${encodeURIComponent(wid)}`);
      await showPause();
      showProblem("wf-error", null);
      const st = $("wf-status");
      st.className = `badge status-${data.status}`;
      st.textContent = data.status;
      const took = workflowDuration(data);
      setText("wf-summary", `${data.task_count} tasks${data.truncated ? ` (the first ${data.tasks.length} shown)` : ""}: ` +
              `${countsText(data.counts)}. Created ${fmtTime(data.created_at)}` +
              (data.started_at ? `, started ${fmtTime(data.started_at)}` : ", not started yet") +
              (data.finished_at ? `, finished ${fmtTime(data.finished_at)} (${fmtDuration(took)}).` :
                took !== null ? `, running for ${fmtDuration(took)}.` : "."));
      drawGantt($("gantt"), data);  // redrawn every time: a running bar grows with the clock
      const sig = JSON.stringify(data.tasks.map((t) => [t.id, t.status]));
      if (sig !== last) { last = sig; drawGraph($("graph"), data.tasks); }
    } catch (e) {
      showProblem("wf-error", e);
    }
  });
}

// ------------------------------------------------------------------ workflow list

function pageWorkflows() {
  const select = $("wf-status");
  const q0 = new URLSearchParams(location.search);
  if (q0.has("status")) select.value = q0.get("status");
  let cursors = [null], next = null;

  async function load() {
    const q = new URLSearchParams({ limit: "50" });
    if (select.value) q.set("status", select.value);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    try {
      const { data } = await api(`/api/v1/workflows?${q}`);
      showProblem("wf-list-error", null);
      next = data.next_cursor;
      const body = clear($("workflows"));
      if (!data.workflows.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "hint", text: "no workflows" })));
      for (const w of data.workflows) {
        body.append(el("tr", { "data-id": w.id, "data-status": w.status },
          el("td", {}, el("a", { href: `/ui/workflows/${encodeURIComponent(w.id)}`, class: "id", text: w.id })),
          el("td", {}, badge(w.status)), el("td", { text: w.task_count }),
          el("td", { class: "labels", text: countsText(w.counts) }), el("td", { text: fmtTime(w.created_at) }),
          el("td", { text: fmtTime(w.started_at) }), el("td", { text: fmtDuration(workflowDuration(w)) })));
      }
      setText("page-no", `page ${cursors.length}`);
      $("next").disabled = !next;
      $("prev").disabled = cursors.length < 2;
    } catch (e) {
      showProblem("wf-list-error", e);
    }
  }

  select.addEventListener("change", () => {
    history.replaceState(null, "", `/ui/workflows${select.value ? `?status=${encodeURIComponent(select.value)}` : ""}`);
    cursors = [null];
    load();
  });
  $("first").addEventListener("click", () => { cursors = [null]; load(); });
  $("prev").addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); load(); } });
  $("next").addEventListener("click", () => { if (next) { cursors.push(next); load(); } });
  $("wf-search").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("wf-search-id").value.trim();
    if (!id) return;
    try {
      await api(`/api/v1/workflows/${encodeURIComponent(id)}`);
      location.href = `/ui/workflows/${encodeURIComponent(id)}`;
    } catch (err) {
      setText("wf-search-error", err.message);
    }
  });
  every(3000, () => ($("live").checked ? load() : null));
}

// ------------------------------------------------------------------ dead letters

function pageDeadLetters() {
  let cursors = [null], next = null;
  async function load() {
    const q = new URLSearchParams({ status: $("dl-status").value, limit: "50" });
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    try {
      const [{ data }, stats] = await Promise.all([api(`/api/v1/tasks?${q}`), api("/api/v1/stats").catch(() => null)]);
      showProblem("dl-error", null);
      next = data.next_cursor;
      $("next").disabled = !next;
      if (stats) {
        const by = stats.data.tasks.by_status;
        setText("dl-count", `in all: ${by.failed ?? 0} failed, ${by.upstream_failed ?? 0} upstream_failed`);
      }
      const selected = new Set([...document.querySelectorAll("input.pick:checked")].map((c) => c.value));
      const body = clear($("dead"));
      if (!data.tasks.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "hint", text: `no ${$("dl-status").value} tasks` })));
      for (const t of data.tasks) {
        body.append(el("tr", { "data-id": t.id },
          el("td", {}, el("input", { type: "checkbox", class: "pick", value: t.id, checked: selected.has(t.id) })),
          el("td", {}, taskLink(t.id, shortId(t.id))), el("td", { text: t.name || "" }), el("td", { text: t.handler }),
          el("td", { text: `${t.attempt}/${t.max_attempts}` }), el("td", { text: ago(t.finished_at) }),
          el("td", { class: "err", text: (t.error || "").slice(0, 200) }),
          el("td", {}, el("button", { type: "button", class: "redrive", text: "Redrive", onclick: () => redrive([t.id]) }))));
      }
    } catch (e) {
      showProblem("dl-error", e);
    }
  }
  async function redrive(ids) {
    if (!ids.length || !confirm(`Redrive ${ids.length} task(s)?`)) return;
    const out = $("dl-result");
    let ok = 0;
    const refused = [];
    for (const id of ids) {
      try { await api(`/api/v1/tasks/${encodeURIComponent(id)}/retry`, { method: "POST" }); ok++; }
      catch (e) { refused.push(`${shortId(id)}: ${e.message}`); }
    }
    out.className = refused.length ? "error" : "ok";
    out.textContent = `${ok} redriven${refused.length ? `; refused: ${refused.join("; ")}` : ""}`;
    $("select-all").checked = false;
    load();
  }
  $("dl-status").addEventListener("change", () => { cursors = [null]; load(); });
  $("select-all").addEventListener("change", (e) => document.querySelectorAll("input.pick").forEach((c) => { c.checked = e.target.checked; }));
  $("redrive-selected").addEventListener("click", () => redrive([...document.querySelectorAll("input.pick:checked")].map((c) => c.value)));
  $("first").addEventListener("click", () => { cursors = [null]; load(); });
  $("next").addEventListener("click", () => { if (next) { cursors.push(next); load(); } });
  every(3000, load);
}

// ------------------------------------------------------------------ schedules

function pageSchedules() {
  let cursors = [null], next = null;
  async function load() {
    const q = new URLSearchParams({ limit: "50" });
    if ($("sc-status").value) q.set("status", $("sc-status").value);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    try {
      const { data } = await api(`/api/v1/schedules?${q}`);
      showProblem("sc-error", null);
      next = data.next_cursor;
      $("next").disabled = !next;
      const body = clear($("schedules"));
      if (!data.schedules.length) body.append(el("tr", {}, el("td", { colspan: 11, class: "hint", text: "no schedules" })));
      for (const s of data.schedules) {
        body.append(el("tr", { "data-id": s.id },
          el("td", {}, el("a", { href: `/ui/schedules/${encodeURIComponent(s.id)}`, class: "id mono", text: shortId(s.id), title: s.id })),
          el("td", { text: s.name || "" }), el("td", { class: "mono", text: s.cron }), el("td", { text: s.timezone }),
          el("td", { text: s.task && s.task.handler || "" }), el("td", {}, el("span", { class: `badge sched-${s.status}`, text: s.status })),
          el("td", { text: s.next_fire_at ? `${fmtTime(s.next_fire_at)}` : "—" }), el("td", { text: ago(s.last_fire_at) }),
          el("td", {}, s.last_task_id ? taskLink(s.last_task_id, shortId(s.last_task_id)) : "—"), el("td", { text: s.fired }),
          el("td", {}, s.status === "deleted" ? "" : el("button", { type: "button", class: "danger", text: "Delete", onclick: () => del(s) }))));
      }
    } catch (e) {
      showProblem("sc-error", e);
    }
  }
  async function del(s) {
    if (!confirm(`Delete schedule ${s.name || s.id}? Tasks it already created stay.`)) return;
    const out = $("sc-result");
    try {
      await api(`/api/v1/schedules/${encodeURIComponent(s.id)}`, { method: "DELETE" });
      out.className = "ok";
      out.textContent = `deleted ${s.name || s.id}`;
    } catch (e) {
      out.className = "error";
      out.textContent = `delete refused: ${e.message}`;
    }
    load();
  }
  $("sc-status").addEventListener("change", () => { cursors = [null]; load(); });
  $("first").addEventListener("click", () => { cursors = [null]; load(); });
  $("next").addEventListener("click", () => { if (next) { cursors.push(next); load(); } });
  every(5000, load);
}

// ------------------------------------------------------------------ schedule detail

const SCHEDULE_FIELDS = ["id", "name", "status", "cron", "timezone", "next_fire_at", "last_fire_at", "last_task_id",
  "fired", "skipped", "misfire", "start_at", "end_at", "created_at", "updated_at", "version"];

function pageSchedule() {
  const id = document.body.dataset.scheduleId;
  setText("sc-id", id);
  async function load() {
    try {
      const { data: s } = await api(`/api/v1/schedules/${encodeURIComponent(id)}`);
      showProblem("sc-error", null);
      document.body.dataset.status = s.status;
      const body = clear($("sc-fields"));
      for (const name of SCHEDULE_FIELDS) {
        const v = s[name];
        let cell;
        if (v === null || v === undefined || v === "") cell = el("span", { class: "hint", text: "—" });
        else if (name === "last_task_id") cell = taskLink(v);
        else if (name === "status") cell = el("span", { class: `badge sched-${v}`, text: v });
        else if (/_at$/.test(name)) cell = el("span", { text: `${fmtTime(v)} (${ago(v)})` });
        else cell = el("span", { text: String(v) });
        body.append(el("tr", { "data-field": name }, el("th", { text: name }), el("td", {}, cell)));
      }
      $("sc-task").textContent = JSON.stringify(s.task, null, 2);
      $("sc-pause").disabled = s.status !== "active";
      $("sc-resume").disabled = s.status !== "paused";
      $("sc-run").disabled = s.status === "deleted";
    } catch (e) {
      showProblem("sc-error", e);
    }
  }
  async function act(action, done) {
    const out = $("sc-result");
    try {
      const { data } = await api(`/api/v1/schedules/${encodeURIComponent(id)}:${action}`, { method: "POST" });
      out.className = "ok";
      out.textContent = "";
      out.append(done(data));
    } catch (e) {
      out.className = "error";
      out.textContent = `${action} refused: ${e.message}`;
    }
    load();
  }
  $("sc-pause").addEventListener("click", () => act("pause", () => "paused"));
  $("sc-resume").addEventListener("click", () => act("resume", () => "resumed"));
  $("sc-run").addEventListener("click", () => act("run", (s) => el("span", {}, "created task ", taskLink(s.last_task_id))));
  $("bf-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = clear($("bf-result"));
    const when = (input) => new Date($(input).value).toISOString();
    const body = { start: when("bf-start"), end: when("bf-end"), overlap: $("bf-overlap").value };
    if ($("bf-max").value) body.max_concurrent = Number($("bf-max").value);
    try {
      const { data } = await api(`/api/v1/schedules/${encodeURIComponent(id)}:backfill`, { method: "POST", body });
      out.className = "ok";
      out.append(el("p", { text: `${data.count} task${data.count === 1 ? "" : "s"} for ${fmtTime(data.start)} to ${fmtTime(data.end)}` }),
        el("ul", { id: "bf-tasks" }, data.tasks.map((t) =>
          el("li", { "data-id": t.id }, taskLink(t.id), ` for ${fmtTime(t.scheduled_for)}`))));
    } catch (e) {
      out.className = "error";
      out.textContent = `backfill refused: ${e.message}`;
    }
  });
  load();
  every(5000, load);
}

// ------------------------------------------------------------------ workers

function partitionChips(partitions) {
  const byTopic = new Map();
  for (const p of partitions) {
    const topic = p.topic.split(".").slice(1).join(".");  // the prefix is the same for all
    if (!byTopic.has(topic)) byTopic.set(topic, []);
    byTopic.get(topic).push(p.partition);
  }
  return el("span", { class: "chips" }, [...byTopic.entries()].sort().map(([topic, ns]) =>
    el("span", { class: "chip", title: topic, text: `${topic}[${ns.sort((a, b) => a - b).join(",")}]` })));
}

function pageWorkers() {
  let paused = new Set();
  async function load() {
    const q = new URLSearchParams();
    if ($("wk-status").value) q.set("status", $("wk-status").value);
    try {
      paused = await pausedNames("handler");
      const { data } = await api(`/api/v1/workers${q.toString() ? `?${q}` : ""}`);
      showProblem("wk-error", data.problem ? { status: 0, message: data.problem, problem: { title: "Behind" } } : null);
      const alive = data.workers.filter((w) => w.status === "alive").length;
      setText("wk-count", `${alive} alive, ${data.workers.length - alive} gone`);
      const body = clear($("workers"));
      if (!data.workers.length) body.append(el("tr", {}, el("td", { colspan: 10, class: "hint", text: "no executor reports itself" })));
      for (const w of data.workers) {
        const running = el("span", { class: "chips" }, w.running.slice(0, 5).map((id) => taskLink(id, shortId(id))),
                           w.in_flight > 5 ? ` +${w.in_flight - 5}` : "");
        body.append(el("tr", { "data-id": w.id, "data-status": w.status },
          el("td", { class: "mono", text: w.id }),
          el("td", {}, el("span", { class: `badge worker-${w.status}`, text: w.status,
                                    title: `gone ${w.gone_after_s} s after its last report` })),
          el("td", { text: w.host }), el("td", { text: w.pid }),
          el("td", { class: "in-flight", text: `${w.in_flight}/${w.concurrency}` }), el("td", {}, running),
          el("td", { class: "partitions" }, partitionChips(w.partitions)),
          el("td", { class: "handlers" }, el("span", { class: "chips" }, w.handlers.map((h) => handlerChip(h)))),
          el("td", { text: fmtTime(w.started_at) }), el("td", { class: "last-seen", text: ago(w.last_seen), title: fmtTime(w.last_seen) })));
      }
      stamp();
    } catch (e) {
      showProblem("wk-error", e);
    }
  }
  // A handler chip: click to pause it, or to resume it while it is paused (badge ``paused``).
  function handlerChip(h) {
    const on = paused.has(h);
    const chip = el("button", { type: "button", class: on ? "chip handler-paused" : "chip", "data-handler": h,
                                text: on ? `${h} (paused)` : h, title: on ? "paused: click to resume" : "click to pause" });
    chip.addEventListener("click", () => setPaused("handler", h, on ? "resume" : "pause", $("wk-result"), load));
    return chip;
  }
  $("wk-status").addEventListener("change", load);
  every(2000, () => ($("live").checked ? load() : null));
}

// ------------------------------------------------------------------ limits

function pageLimits() {
  async function load() {
    const q = new URLSearchParams();
    if ($("lm-key").value.trim()) q.set("key", $("lm-key").value.trim());
    if ($("lm-active").checked) q.set("active", "true");
    try {
      const [{ data }, { data: pauses }] = await Promise.all([
        api(`/api/v1/limits${q.toString() ? `?${q}` : ""}`), api("/api/v1/pauses?kind=handler")]);
      const t = data.totals;
      setText("lm-count", `${t.keys} keys, ${t.holding} holding, ${t.waiting} waiting`);
      const body = clear($("limits"));
      if (!data.limits.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "hint", text: "no concurrency key" })));
      for (const k of data.limits) {
        const rate = k.rate === null ? "–" : `${k.rate_used}/${k.rate} per ${k.per_s} s`;
        const holders = el("span", { class: "chips" }, k.holders.slice(0, 5).map((h) => taskLink(h.task_id, shortId(h.task_id))),
                           k.holding > 5 ? ` +${k.holding - 5}` : "");
        const next = el("span", { class: "chips" }, k.waiting_tasks.slice(0, 5).map((id) => taskLink(id, shortId(id))),
                        k.waiting > 5 ? ` +${k.waiting - 5}` : "");
        body.append(el("tr", { "data-key": k.key, "data-blocked": k.blocked_by || "" },
          el("td", { class: "mono", text: k.key }),
          el("td", { class: "holding", text: k.limit === null ? `${k.holding}` : `${k.holding}/${k.limit}` }),
          el("td", { class: "waiting", text: k.waiting }),
          el("td", { class: "rate", text: rate }),
          el("td", {}, k.blocked_by ? el("span", { class: "badge status-pending", text: k.blocked_by }) : ""),
          el("td", { text: k.next_start_at ? fmtTime(k.next_start_at) : "" }),
          el("td", { class: "holders" }, holders), el("td", { class: "next" }, next)));
      }
      showHandlers(data.handlers, pauses.pauses);
      stamp();
    } catch (e) {
      showProblem("lm-error", e);
    }
  }
  // Every handler with a limit or a rate (GET /limits's ``handlers``) and every paused one, by name.
  function showHandlers(limits, pauses) {
    const byName = new Map(limits.map((h) => [h.name, { limit: h, pause: null }]));
    for (const p of pauses) byName.set(p.name, { limit: byName.get(p.name)?.limit || null, pause: p });
    const body = clear($("handler-limits"));
    if (!byName.size) body.append(el("tr", {}, el("td", { colspan: 4, class: "hint", text: "no handler limited or paused" })));
    for (const [name, { limit, pause }] of [...byName.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const rate = limit && limit.rate !== null ? `${limit.rate} per ${limit.per_s} s` : "–";
      const paused = pause ? el("span", { class: "chip handler-paused", text: "paused",
                                          title: `by ${pause.paused_by || "?"} at ${fmtTime(pause.paused_at)}${pause.reason ? `: ${pause.reason}` : ""}` }) : "";
      body.append(el("tr", { "data-handler": name, "data-paused": pause ? "true" : "false" },
        el("td", { class: "mono", text: name }),
        el("td", { class: "limit", text: limit && limit.limit !== null ? `${limit.limit}` : "–" }),
        el("td", { class: "rate", text: rate }), el("td", { class: "paused" }, paused)));
    }
  }
  $("lm-filter").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  $("lm-active").addEventListener("change", load);
  every(2000, () => ($("live").checked ? load() : null));
}

// ------------------------------------------------------------------ triggers

function pageTriggers() {
  async function act(name, action) {
    try {
      await api(`/api/v1/triggers/${encodeURIComponent(name)}:${action}`, { method: "POST" });
      load();
    } catch (e) {
      showProblem("tg-error", e);
    }
  }
  async function load() {
    const status = $("tg-status").value;
    try {
      const { data } = await api(`/api/v1/triggers${status ? `?status=${status}` : ""}`);
      setText("tg-count", `${data.triggers.length} triggers`);
      const body = clear($("triggers"));
      if (!data.triggers.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "hint", text: "no trigger" })));
      for (const t of data.triggers) {
        const buttons = el("span", {});
        if (t.status === "active") {
          buttons.append(el("button", { type: "button", class: "pause", text: "Pause", onclick: () => act(t.name, "pause") }));
        } else if (t.status === "paused") {
          buttons.append(el("button", { type: "button", class: "resume", text: "Resume", onclick: () => act(t.name, "resume") }));
        }
        const start = typeof t.start === "string" ? t.start : JSON.stringify(t.start);
        body.append(el("tr", { "data-name": t.name, "data-status": t.status },
          el("td", { class: "mono", text: t.name }),
          el("td", { class: "mono", text: t.topic }),
          el("td", {}, el("span", { class: `badge trigger-status status-${t.status === "active" ? "running" : t.status === "paused" ? "pending" : "cancelled"}`, text: t.status })),
          el("td", { class: "mono", text: (t.task && t.task.handler) || "" }),
          el("td", { class: "mono", text: t.filter === null ? "" : JSON.stringify(t.filter) }),
          el("td", { class: "mono", text: start }),
          el("td", { class: "mono", text: t.bootstrap_servers || "(this cluster)" }),
          el("td", { text: fmtTime(t.created_at) }),
          el("td", {}, buttons)));
      }
      stamp();
    } catch (e) {
      showProblem("tg-error", e);
    }
  }
  $("tg-filter").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  $("tg-status").addEventListener("change", load);
  every(2000, () => ($("live").checked ? load() : null));
}

// ------------------------------------------------------------------ start

const PAGES = {
  overview: pageOverview, tasks: pageTasks, task: pageTask, workflows: pageWorkflows, workflow: pageWorkflow,
  "dead-letters": pageDeadLetters, schedules: pageSchedules, schedule: pageSchedule, workers: pageWorkers,
  limits: pageLimits, triggers: pageTriggers,
};

document.addEventListener("DOMContentLoaded", () => {
  initHeader();
  if (document.body.dataset.page !== "overview") every(5000, readiness);
  const page = PAGES[document.body.dataset.page];
  if (page) page();
});
