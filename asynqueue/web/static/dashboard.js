// The asynqueue dashboard page: draws the snapshots the server pushes.
// Everything shown is set as text (textContent) or drawn on a canvas:
// nothing the server sends is ever run or parsed as HTML.
"use strict";

const COLOURS = {
  done: "#2ca02c", failed: "#d62728", timedOut: "#ff7f0e",
  cancelled: "#7f7f7f", running: "#1f77b4",
};
const MAX_BARS = 3000;
const bars = new Map();      // id -> [id, worker, started, ended, state]
let running = [];
let latest = null;
let clockOffset = 0;         // server seconds minus local seconds
let updates = 0;

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function serverNow() { return performance.now() / 1000 + clockOffset; }

function fixed(x, digits) {
  return (typeof x === "number" && isFinite(x)) ? x.toFixed(digits) : "–";
}

function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
}

function cancelButton(id) {
  const button = el("button", "cancel", "cancel");
  button.type = "button";
  button.dataset.task = String(id);
  button.addEventListener("click", () => {
    button.disabled = true;
    fetch("cancel?id=" + encodeURIComponent(id), {
      method: "POST", credentials: "same-origin", headers: { "X-Dashboard": "cancel" },
    }).catch(() => { button.disabled = false; });
  });
  return button;
}

function showHeadline(s) {
  const h = s.headline;
  $("queue-name").textContent = s.queue;
  $("queue-open").textContent = s.open ? "running" : "shut down";
  for (const key of ["pending", "running", "done", "failed", "cancelled"]) {
    $("count-" + key).textContent = String(h[key]);
  }
  $("rate-now").textContent = fixed(h.rateNow, 1);
  $("rate-average").textContent = fixed(h.rateAverage, 1);
  if (h.expected === null || h.expected === undefined) {
    $("eta").textContent = "–";
    $("eta-label").textContent = "ETA (total unknown)";
  } else {
    $("eta").textContent = h.eta === null ? "?" : duration(h.eta);
    $("eta-label").textContent = "ETA, " + h.progress + " of " + h.expected;
  }
  const by = $("pending-by");
  by.replaceChildren();
  for (const [kind, counts] of Object.entries(h.pendingBy)) {
    const entries = Object.entries(counts);
    if (!entries.length) continue;
    entries.sort((a, b) => b[1] - a[1]);
    const parts = entries.slice(0, 8).map(([k, n]) => k + ": " + n);
    by.append(el("span", "pending by " + kind + " — " + parts.join(", ") + "  "));
  }
}

function showWorkers(s) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  const now = s.now;
  for (const w of s.workers) {
    const row = el("tr");
    row.dataset.worker = w.name;
    row.append(el("td", w.name), el("td", w.kind),
      el("td", w.host + (w.pid ? " / " + w.pid : "")),
      el("td", w.state, "state-" + w.state));
    const tasks = el("td");
    for (const t of w.tasks) {
      const line = el("div", t.name + " #" + t.id + " for " +
        duration(t.started === null ? null : now - t.started));
      if (s.control) line.append(cancelButton(t.id));
      tasks.append(line);
    }
    row.append(tasks, el("td", w.done, "num"), el("td", w.failed, "num"));
    const use = el("td");
    const meter = el("span", null, "meter");
    const fill = el("i");
    fill.style.width = Math.round(100 * w.utilisation) + "%";
    meter.append(fill);
    use.append(meter, document.createTextNode(Math.round(100 * w.utilisation) + " %"));
    row.append(use, el("td", w.restarts, "num"));
    body.append(row);
  }
}

function showFailures(s) {
  const list = $("failures");
  list.replaceChildren();
  for (const f of s.failures.slice().reverse()) {
    const item = el("li");
    item.dataset.task = String(f.id);
    const details = el("details");
    const summary = el("summary");
    summary.append(el("b", f.type), document.createTextNode(": " + f.message +
      " — " + f.name + " #" + f.id + (f.worker ? " on " + f.worker : "")));
    details.append(summary, el("pre", f.traceback, "traceback"));
    item.append(details);
    list.append(item);
  }
}

function showSlowest(s) {
  const body = $("slowest").tBodies[0];
  body.replaceChildren();
  for (const t of s.slowest) {
    const row = el("tr");
    row.append(el("td", fixed(t.runTime, 3), "num"), el("td", t.call), el("td", t.worker));
    body.append(row);
  }
  const pending = $("pending");
  pending.replaceChildren();
  for (const t of s.pendingTasks) {
    const item = el("li", t.name + " #" + t.id + " (priority " + t.priority + ")");
    if (s.control) item.append(cancelButton(t.id));
    pending.append(item);
  }
}

function takeBars(s) {
  if (s.stream.full) bars.clear();
  for (const bar of s.stream.ended) bars.set(bar[0], bar);
  running = s.stream.running;
  const since = s.now - s.window;
  for (const [id, bar] of bars) {
    if (bar[3] < since || bars.size > MAX_BARS) bars.delete(id);
    else break;  // in order of ending: the rest are newer
  }
}

function draw() {
  const canvas = $("stream");
  if (!latest) return;
  const lanes = latest.workers.map((w) => w.name);
  const height = Math.max(60, 24 + 22 * lanes.length);
  if (canvas.height !== height) canvas.height = height;
  const ctx = canvas.getContext("2d");
  const width = canvas.width, left = 140, top = 4;
  ctx.clearRect(0, 0, width, height);
  const now = serverNow(), window_ = latest.window;
  const x = (t) => left + (width - left - 4) * (1 - (now - t) / window_);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#444";
  lanes.forEach((name, i) => {
    ctx.fillText(name.length > 20 ? name.slice(0, 19) + "…" : name, 4, top + 22 * i + 15);
  });
  const laneOf = new Map(lanes.map((name, i) => [name, i]));
  let drawn = 0;
  const paint = (bar, end, state) => {
    const lane = laneOf.get(bar[1]);
    if (lane === undefined || bar[2] === null) return;
    const x0 = Math.max(left, x(bar[2])), x1 = x(end);
    if (x1 < left) return;
    ctx.fillStyle = COLOURS[state] || "#999";
    ctx.fillRect(x0, top + 22 * lane + 3, Math.max(2, x1 - x0), 16);
    drawn += 1;
  };
  for (const bar of bars.values()) paint(bar, bar[3], bar[4]);
  for (const bar of running) paint(bar, now, "running");
  ctx.strokeStyle = "#ccc";
  ctx.beginPath(); ctx.moveTo(left, 0); ctx.lineTo(left, height); ctx.stroke();
  ctx.fillStyle = "#888";
  ctx.fillText("-" + window_ + " s", left + 2, height - 4);
  ctx.fillText("now", width - 30, height - 4);
  canvas.dataset.bars = String(drawn);
}

function show(s) {
  latest = s;
  clockOffset = s.now - performance.now() / 1000;
  $("window-label").textContent = "(the last " + s.window + " s)";
  showHeadline(s);
  showWorkers(s);
  showFailures(s);
  showSlowest(s);
  takeBars(s);
  draw();
  updates += 1;
  document.body.dataset.updates = String(updates);
}

function connect() {
  const source = new EventSource("events" + window.location.search);
  source.addEventListener("open", () => {
    document.body.dataset.connected = "yes";
    $("connection").textContent = "live";
  });
  source.addEventListener("error", () => {
    document.body.dataset.connected = "no";
    $("connection").textContent = "reconnecting";
  });
  source.addEventListener("snapshot", (message) => {
    let snapshot;
    try { snapshot = JSON.parse(message.data); } catch (e) { return; }
    show(snapshot);
  });
}

connect();
setInterval(draw, 250);
