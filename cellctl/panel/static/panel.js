// The operator panel: plain JavaScript, no build step, no library.
// The server sends the whole view on every (re)connect of the event stream, then each
// change; commands go as the signed-in user with the session's CSRF token.
"use strict";

const $ = (id) => document.getElementById(id);
const HOUR = 3600;
let me = null;            // {user, csrf, may, cell}
let view = null;          // {online, devices, cell, plan, history}
let jobs = [];
let programs = [];        // the cell's program store (the `programs` query), newest first
let stream = null;
let jobsTimer = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function toast(text) {
  $("toast").textContent = text;
  clearTimeout(toast.t);
  toast.t = setTimeout(() => { $("toast").textContent = ""; }, 6000);
}

const may = (cmd) => !!(me && me.may && me.may[cmd]);

async function post(url, body, isForm) {
  const headers = { "X-CSRF-Token": me ? me.csrf : "" };
  if (!isForm) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method: "POST", headers, credentials: "same-origin",
                               body: isForm ? body : JSON.stringify(body) });
  let data = {};
  try { data = await r.json(); } catch (e) { /* an empty answer */ }
  return { ok: r.ok, status: r.status, data };
}

async function command(name, body, what) {
  const r = await post("/ui/command", { command: name, body });
  if (r.ok) toast(`${what || name}: done`);
  else toast(`${what || name} refused: ${r.data.reason || r.data.error || r.status}`);
  refreshJobs();
  return r;
}

// --- sign-in -----------------------------------------------------------

async function whoami() {
  const r = await fetch("/ui/me", { credentials: "same-origin" });
  me = await r.json();
  $("cell-name").textContent = me.cell || "";
  document.title = `cellctl ${me.cell || ""}`;
  if (me.user) showApp(); else showSignIn();
}

function showSignIn() {
  if (stream) { stream.close(); stream = null; }
  clearInterval(jobsTimer);
  // Nothing of the last user's page stays behind for the next one.
  view = null; jobs = []; programs = []; drawn.clear();
  for (const id of ["devices", "worklist", "library", "gantt", "chart", "series"]) $(id).replaceChildren();
  $("queue").tBodies[0].replaceChildren();
  $("app-view").hidden = true; $("signin-view").hidden = false;
  for (const id of ["who", "logout", "estop", "reset-all"]) $(id).hidden = true;
  $("link").textContent = "signed out"; $("link").className = "link";
  $("user").focus();
  $("user").select();  // the next user types over the last name
}

function showApp() {
  $("signin-view").hidden = true; $("app-view").hidden = false;
  $("who").hidden = false; $("who").textContent = me.user;
  $("logout").hidden = false;
  $("estop").hidden = !may("estop");
  $("upload").hidden = !may("submit");
  connect();
  refreshJobs();
  clearInterval(jobsTimer);
  jobsTimer = setInterval(refreshJobs, 5000);
}

$("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  const r = await post("/ui/login", { user: $("user").value, password: $("password").value });
  $("password").value = "";
  if (!r.ok) { $("signin-error").textContent = r.data.error || `refused (${r.status})`; return; }
  me = r.data;
  showApp();
});

$("logout").addEventListener("click", async () => {
  await post("/ui/logout", {});
  await whoami();
});

// --- the live view -------------------------------------------------------

function connect() {
  if (stream) stream.close();
  stream = new EventSource("/ui/events");
  stream.addEventListener("whole", (e) => { view = JSON.parse(e.data); renderAll(); link(true); refreshJobs(); });
  stream.addEventListener("device", (e) => {
    const d = JSON.parse(e.data);
    if (!view) return;
    view.devices[d.device] = d;
    remember(d);
    renderDevices(); renderWork(); renderChart();
  });
  stream.addEventListener("cell", (e) => { if (view) { view.cell = JSON.parse(e.data); renderWork(); refreshJobs(); } });
  stream.addEventListener("plan", (e) => { if (view) { view.plan = JSON.parse(e.data); renderGantt(); } });
  stream.addEventListener("status", (e) => { if (view) { view.online = JSON.parse(e.data).online; link(true); refreshJobs(); } });
  stream.onerror = () => {
    link(false);
    if (stream.readyState === EventSource.CLOSED) whoami();  // signed out: back to the form
  };
}

function link(up) {
  const l = $("link");
  if (!up) { l.textContent = "reconnecting…"; l.className = "link down"; return; }
  const online = view && view.online;
  l.textContent = online ? "cell online" : "cell offline";
  l.className = "link " + (online ? "up" : "down");
}

function renderAll() { drawn.clear(); $("devices").replaceChildren(); renderDevices(); renderWork(); renderGantt(); fillSeries(); renderChart(); }

const UNITS = { degC: "°C", pct: "%", percent: "%" };
function fmt(v, unit) {
  if (v === null || v === undefined) return "—";
  unit = UNITS[unit] || unit;
  if (typeof v === "number") v = Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  return unit ? `${v} ${unit}` : String(v);
}

function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${r} s` : `${r} s`;
}

// A card or list is rebuilt only when what it shows changed: a keyboard user's focus
// and a half-typed line number survive the updates that stream in every second.
const drawn = new Map();
function changed(key, value) {
  const text = JSON.stringify(value);
  if (drawn.get(key) === text) return false;
  drawn.set(key, text);
  return true;
}

function renderDevices() {
  const box = $("devices");
  const devs = Object.keys(view.devices).sort();
  const old = new Map([...box.children].map((c) => [c.dataset.device, c]));
  box.replaceChildren(...devs.map((id) => {
    const d = view.devices[id];
    if (old.has(id) && !changed(`device:${id}`, [d, me.may])) return old.get(id);
    drawn.set(`device:${id}`, JSON.stringify([d, me.may]));
    const state = d.state || "unknown";
    const card = el("article", { class: `device s-${state}`, "data-device": id, "data-state": state,
                                 "aria-label": `${id}: ${state}` });
    card.append(el("h3", {}, el("span", { text: id }), el("span", { class: "state", text: state })));
    if (d.reason) card.append(el("div", { class: "meta", text: d.reason }));
    const setup = Object.entries(d.setup || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    if (setup) card.append(el("div", { class: "meta", text: `setup: ${setup}` }));
    if (d.step) {
      card.append(el("div", { class: "meta", text: `step ${d.step.key} (${d.step.state})` }));
      const p = d.progress;
      if (p && typeof p.fraction === "number") {
        card.append(el("progress", { max: "1", value: String(p.fraction),
                                     "aria-label": `progress ${Math.round(p.fraction * 100)} %` }));
        const eta = p.remaining_s !== null && p.remaining_s !== undefined ? `, ETA ${duration(p.remaining_s)}` : "";
        card.append(el("div", { class: "meta", text: `${Math.round(p.fraction * 100)} %${eta}` }));
      }
    }
    const dl = el("dl", { class: "metrics" });
    for (const [name, m] of Object.entries(d.metrics || {}).sort()) {
      if (m.value === null || m.value === undefined || typeof m.value === "object") continue;
      dl.append(el("dt", { text: name }),
                el("dd", { class: m.quality && m.quality !== "good" ? "bad" : null,
                           text: fmt(m.value, m.unit) + (m.quality && m.quality !== "good" ? ` (${m.quality})` : "") }));
    }
    card.append(dl);
    const acts = el("div", { class: "actions" });
    if (may("pause") && state === "execute") acts.append(button("Pause", () => command("pause", { device: id }, `pause ${id}`), { "data-action": "pause" }));
    if (may("stop") && ["execute", "held", "suspended"].includes(state)) acts.append(button("Stop", () => command("stop", { device: id }, `stop ${id}`), { "data-action": "stop" }));
    if (may("resume") && (state === "held" || state === "suspended")) acts.append(button("Resume", () => command("resume", { device: id }, `resume ${id}`)));
    if (may("reset") && (state === "aborted" || state === "stopped")) acts.append(button("Reset", () => command("reset", { device: id }, `reset ${id}`)));
    if (acts.childElementCount) card.append(acts);
    return card;
  }));
  const stopped = devs.some((id) => ["aborted", "stopped"].includes(view.devices[id].state));
  $("reset-all").hidden = !(may("reset") && stopped);
}

function button(label, onclick, attrs) {
  return el("button", { type: "button", onclick, ...(attrs || {}) }, label);
}

function renderWork() {
  const list = $("worklist");
  const cell = view.cell || { requests: [], held: [] };
  if (!changed("work", [cell, me.may])) return;
  const held = cell.held || [];
  const heldKeys = new Set(held.map((h) => h.step));
  const items = [];
  for (const h of held) {
    const [job, index] = splitStep(h.step);
    const li = el("li", { "data-held": h.step },
      el("strong", { text: `held: ${h.step}` }), ` on ${h.device || "?"}`,
      el("div", { class: "meta", text: h.reason }));
    const req = (cell.requests || []).find((r) => r.step === h.step);
    if (req) li.append(el("div", { class: "meta", text: req.text }));
    if (may("answer_hold")) {
      const acts = el("div", { class: "actions" });
      const send = (action, extra) => command("answer_hold",
        { job, step: index, action, attempt: h.attempt, ...(extra || {}) }, `${action} ${h.step}`);
      acts.append(button("Retry", () => send("retry"), { "data-action": "retry" }));
      const line = el("input", { type: "number", min: "1", placeholder: "line", "aria-label": `resume ${h.step} from line` });
      acts.append(line, button("Resume from line", () => {
        const n = parseInt(line.value, 10);
        if (!(n > 0)) { toast("give the line to resume from"); line.focus(); return; }
        send("resume", { line: n });
      }, { "data-action": "resume" }));
      acts.append(button("Fail", () => send("fail"), { "data-action": "fail" }));
      acts.append(button("Done", () => send("done"), { "data-action": "done" }));
      li.append(acts);
    }
    items.push(li);
  }
  for (const r of cell.requests || []) {
    if (r.step && heldKeys.has(r.step)) continue;
    const det = r.details || {};
    if (det.withdrawn) continue;
    const li = el("li", { "data-request": r.kind, "data-device": r.device },
      el("strong", { text: r.kind.replace(/_/g, " ") }), ` on ${r.device}`,
      el("div", { class: "meta", text: r.text }));
    if (det.changeover_start) li.append(el("div", { class: "meta", text: `needed at ${clock(det.changeover_start)}` }));
    const acts = el("div", { class: "actions" });
    if (r.kind === "changeover" && may("answer")) {
      const load = el("input", { value: Object.entries(det.load || {}).map(([k, v]) => `${k}=${v}`).join(" "),
                                 "aria-label": `setup loaded on ${r.device}` });
      acts.append(load, button("Loaded", () => {
        const setup = {};
        for (const kv of load.value.split(/\s+/)) { const i = kv.indexOf("="); if (i > 0) setup[kv.slice(0, i)] = kv.slice(i + 1); }
        command("answer", { device: r.device, kind: r.kind, setup }, `changeover ${r.device}`);
      }, { "data-action": "answer" }));
    } else if (r.kind === "acknowledge" && may("resume")) {
      acts.append(button("Resume", () => command("resume", { device: r.device }, `resume ${r.device}`), { "data-action": "answer" }));
    } else if (may("answer")) {
      const label = { load_material: "Material loaded", clear_bed: "Bed cleared", change_tool: "Tool changed" }[r.kind] || "Done";
      const body = { device: r.device, kind: r.kind };
      if (r.step) body.step = r.step;
      acts.append(button(label, () => command("answer", body, `${label} (${r.device})`), { "data-action": "answer" }));
    }
    if (acts.childElementCount) li.append(acts);
    items.push(li);
  }
  list.replaceChildren(...(items.length ? items : [el("li", { class: "empty", text: "nothing to do" })]));
}

function splitStep(key) {
  const i = key.lastIndexOf("/");
  return [key.slice(0, i), parseInt(key.slice(i + 1), 10)];
}

function clock(t) {
  return t ? new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

// --- the queue and the library ---------------------------------------------

async function refreshJobs() {
  if (!me || !me.user || !view || !view.online) return;  // nobody to answer
  const r = await fetch("/ui/jobs", { credentials: "same-origin" });
  if (r.status === 401) { whoami(); return; }
  const data = await r.json();
  if (!r.ok) { toast(`queue: ${data.reason || data.error}`); return; }
  const res = data.result;
  jobs = Array.isArray(res) ? res : (res && res.jobs) || [];
  renderQueue();
  if (may("programs")) {
    const p = await fetch("/ui/programs", { credentials: "same-origin" });
    const got = await p.json();
    if (p.ok) programs = got.result || [];
    else toast(`library: ${got.reason || got.error}`);
  }
  renderLibrary();
}

const ENDED = new Set(["done", "failed", "cancelled"]);
const typedPriority = new Map();  // job → the priority typed, not yet sent

function renderQueue() {
  const body = $("queue").tBodies[0];
  if (!changed("queue", [jobs, me.may])) return;
  const shown = jobs.filter((j) => !ENDED.has(j.state)).concat(jobs.filter((j) => ENDED.has(j.state)).slice(-10));
  body.replaceChildren(...shown.map((j) => {
    const steps = j.steps.map((s) => `${s.process}${s.device ? "@" + s.device : ""}: ${s.state}`).join(", ");
    const acts = el("td", { class: "actions" });
    if (may("set_priority") && !ENDED.has(j.state)) {
      // What the user typed survives the queue's redraws until it is sent.
      const prio = el("input", { type: "number", min: "-1000", max: "1000",
                                 value: typedPriority.get(j.id) ?? String(j.priority),
                                 "data-priority": j.id, "aria-label": `priority of ${j.id}`,
                                 oninput: (e) => typedPriority.set(j.id, e.target.value) });
      acts.append(prio, button("Set priority", () => {
        const n = parseInt(prio.value, 10);
        if (!(n >= -1000 && n <= 1000)) { toast("a priority from -1000 to 1000"); prio.focus(); return; }
        typedPriority.delete(j.id);
        command("set_priority", { job: j.id, priority: n }, `priority of ${j.id}`);
      }, { "data-action": "priority", "aria-label": `set the priority of ${j.id}` }));
    }
    if (may("cancel") && !ENDED.has(j.state)) {
      acts.append(button("Cancel", () => {
        if (confirm(`Cancel job ${j.id}?`)) command("cancel", { job: j.id, reason: "cancelled from the panel" }, `cancel ${j.id}`);
      }, { "data-action": "cancel", "aria-label": `cancel ${j.id}` }));
    }
    return el("tr", { "data-job": j.id, "data-state": j.state },
      el("td", { text: j.id }), el("td", { text: j.state }),
      el("td", { text: j.due ? new Date(j.due * 1000).toLocaleString() : "" }),
      el("td", { text: String(j.priority) }), el("td", { text: steps }), acts);
  }));
}

function renderLibrary() {
  if (!changed("library", [programs, me.may])) return;
  const items = programs.map((p) => {
    const name = p.name || `sha256:${p.sha256.slice(0, 12)}…`;
    const when = new Date(p.stored * 1000).toLocaleString();
    const last = p.last_job ? `, last as ${p.last_job}` : "";
    const li = el("li", { "data-program": name, "data-sha256": p.sha256 }, el("strong", { text: name }),
                  el("div", { class: "meta", text: `${size(p.size)}, stored ${when}${last}` }));
    if (may("submit")) {
      li.append(el("div", { class: "actions" }, button("Print", async () => {
        const r = await post("/ui/print", { sha256: p.sha256, name: p.name, setup: p.setup || {} });
        const job = r.data.result && r.data.result.id;
        toast(r.ok ? `${name}: job ${job}` : `print refused: ${r.data.reason || r.data.error || r.status}`);
        refreshJobs();
      }, { "data-action": "print", "aria-label": `print ${name}` })));
    }
    return li;
  });
  $("library").replaceChildren(...(items.length ? items : [el("li", { class: "empty", text: "no programs yet" })]));
}

function size(n) {
  for (const unit of ["B", "kB", "MB"]) { if (n < 1000) return `${n} ${unit}`; n = Math.floor(n / 1000); }
  return `${n} GB`;
}

$("upload").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("print", ev.submitter && ev.submitter.value === "false" ? "false" : "true");
  const r = await post("/ui/upload", form, true);
  toast(r.ok ? `${file.name}: ${r.data.job ? "job " + r.data.job.id : "stored"}` : `upload refused: ${r.data.error || r.status}`);
  refreshJobs();
});

// --- the emergency stop ----------------------------------------------------------

async function estop() {
  const r = await post("/ui/command", { command: "estop", body: { reason: `panel: ${me.user}` } });
  const res = r.data.result || {};
  toast(r.ok ? `EMERGENCY STOP: stopped ${(res.stopped || []).join(", ") || "nothing"}` : `emergency stop failed: ${r.data.reason || r.data.error}`);
}
$("estop").addEventListener("click", estop);  // one click: no confirmation on purpose
document.addEventListener("keydown", (e) => { if (e.altKey && (e.key === "e" || e.key === "E") && !$("estop").hidden) { e.preventDefault(); estop(); } });

$("reset-all").addEventListener("click", async () => {
  const r = await post("/ui/reset-all", {});
  const parts = Object.entries(r.data.reset || {}).map(([d, a]) => `${d}: ${a.outcome}${a.reason ? " (" + a.reason + ")" : ""}`);
  toast(r.ok ? `reset: ${parts.join("; ") || "nothing to reset"}` : `reset refused: ${r.data.error}`);
});

// --- charts (SVG, drawn here) --------------------------------------------------------

function remember(d) {
  const series = (view.history[d.device] = view.history[d.device] || {});
  let added = false;
  for (const [name, m] of Object.entries(d.metrics || {})) {
    if (typeof m.value !== "number" || typeof m.ts !== "number") continue;
    const pts = (series[name] = series[name] || []);
    if (!pts.length) added = true;
    if (pts.length && pts[pts.length - 1][0] >= m.ts) continue;
    pts.push([m.ts, m.value]);
    while (pts.length && pts[0][0] < m.ts - HOUR) pts.shift();
  }
  if (added) fillSeries();
}

function fillSeries() {
  const sel = $("series");
  const was = sel.value;
  const names = [];
  for (const [dev, series] of Object.entries(view.history || {})) for (const name of Object.keys(series)) names.push(`${dev}/${name}`);
  names.sort();
  sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  const temp = names.find((n) => /hotend_temp$/.test(n)) || names.find((n) => /temp/.test(n));
  if (names.includes(was) && (fillSeries.chosen || !temp)) sel.value = was;
  else if (temp) sel.value = temp;
}
$("series").addEventListener("change", () => { fillSeries.chosen = true; renderChart(); });

function renderChart() {
  const box = $("chart");
  const [dev, ...rest] = ($("series").value || "").split("/");
  const name = rest.join("/");
  const pts = ((view.history || {})[dev] || {})[name] || [];
  const NS = "http://www.w3.org/2000/svg";
  const W = Math.max(400, Math.round(box.clientWidth || 800)), H = 220, L = 56, B = 24;  // 1 unit = 1 px
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  add("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B });
  add("line", { class: "axis", x1: L, y1: 0, x2: L, y2: H - B });
  const now = Date.now() / 1000;
  const t0 = now - HOUR;
  const shown = pts.filter((p) => p[0] >= t0);
  if (shown.length) {
    let lo = Math.min(...shown.map((p) => p[1])), hi = Math.max(...shown.map((p) => p[1]));
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const x = (t) => L + ((t - t0) / HOUR) * (W - L);
    const y = (v) => (H - B) - ((v - lo) / (hi - lo)) * (H - B - 8);
    let d = shown.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    d += ` L${x(now).toFixed(1)},${y(shown[shown.length - 1][1]).toFixed(1)}`;  // held until now
    add("path", { class: "line", d });
    add("text", { x: 4, y: 12 }, fmt(hi));
    add("text", { x: 4, y: H - B }, fmt(lo));
    box.setAttribute("aria-label", `${dev} ${name}: last ${fmt(shown[shown.length - 1][1])}, range ${fmt(lo)} to ${fmt(hi)} over the last hour`);
  } else {
    add("text", { x: L + 10, y: H / 2 }, "no values yet");
  }
  add("text", { x: L, y: H - 6 }, "−60 min");
  add("text", { x: W - 30, y: H - 6 }, "now");
  box.replaceChildren(svg);
}

// --- the plan (Gantt), when the planner publishes one ----------------------------------

function renderGantt() {
  const box = $("gantt");
  const plan = view && view.plan;
  if (!plan || !plan.devices || !Object.keys(plan.devices).length) { box.replaceChildren(); return; }
  const NS = "http://www.w3.org/2000/svg";
  const devs = Object.keys(plan.devices).sort();
  const all = devs.flatMap((d) => plan.devices[d]);
  const t0 = Math.min(...all.map((s) => Math.min(s.changeover_start, s.start)));
  const t1 = Math.max(...all.map((s) => s.end));
  const W = 800, L = 90, R = 26, H = devs.length * R + 20;
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("aria-label", "the plan: one lane per device");
  devs.forEach((d, i) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", 2); t.setAttribute("y", i * R + 17); t.textContent = d; svg.append(t);
    for (const s of plan.devices[d]) {
      if (s.changeover_s > 0) {
        const c = document.createElementNS(NS, "rect");
        Object.entries({ class: "change", x: x(s.changeover_start), y: i * R + 4, width: Math.max(1, x(s.start) - x(s.changeover_start)), height: R - 8 }).forEach(([k, v]) => c.setAttribute(k, v));
        svg.append(c);
      }
      const r = document.createElementNS(NS, "rect");
      Object.entries({ class: "job", x: x(s.start), y: i * R + 4, width: Math.max(1, x(s.end) - x(s.start)), height: R - 8 }).forEach(([k, v]) => r.setAttribute(k, v));
      const tip = document.createElementNS(NS, "title");
      tip.textContent = `${s.job} ${clock(s.start)}–${clock(s.end)}`;
      r.append(tip); svg.append(r);
    }
  });
  box.replaceChildren(svg);
}

setInterval(() => { if (view) renderChart(); }, 30000);  // the time axis moves on
whoami();
