// The operations dashboard: polls the JSON API every few seconds and updates the page in place.
// Each panel fails on its own ("unavailable") so one missing route does not blank the page.
import { api, el } from "./api.js";

const root = document.getElementById("dashboard");
const REFRESH_MS = Number(root.dataset.refreshMs);
const CHART_POINTS = 120; // ten minutes at one sample every five seconds
const throughput = [];
const actionStatus = document.getElementById("action-status");
const windowSelect = document.getElementById("window");
const logLevel = document.getElementById("log-level");

function field(scope, name) {
  return scope.querySelector(`[data-field="${name}"]`);
}

function percent(value) {
  return value == null ? "–" : `${Math.round(value)}%`;
}

// value: a percentage, or a word ("none", "–") shown in place of one with an empty ring.
function gb(value) {
  return value == null ? "–" : value.toFixed(1);
}

function setGauge(key, value, detail) {
  const gauge = root.querySelector(`[data-gauge="${key}"]`);
  const clamped = typeof value === "number" ? Math.max(0, Math.min(100, value)) : 0;
  gauge.querySelector("circle.value").setAttribute("stroke-dasharray", `${clamped} 100`);
  gauge.classList.toggle("high", clamped >= 90);
  gauge.classList.toggle("empty", clamped === 0);
  gauge.querySelector("[data-value]").textContent = typeof value === "number" ? percent(value) : value;
  gauge.querySelector("[data-detail]").textContent = detail || "";
}

async function refreshResources() {
  try {
    const { data } = await api("GET", "/system/resources");
    setGauge("cpu", data.cpu.usage_percent, `${data.cpu.cores} cores`);
    setGauge("memory", data.memory.usage_percent, `${gb(data.memory.available_gb)} of ${gb(data.memory.total_gb)} GB free`);
    if (data.gpu.gpu_available) {
      setGauge("gpu", data.gpu.usage_percent, `memory ${percent(data.gpu.memory_usage_percent)}`);
    } else {
      setGauge("gpu", "none", "no GPU found");
    }
    setGauge("disk", data.disk.usage_percent, `${gb(data.disk.available_gb)} GB free`);
  } catch {
    for (const key of ["cpu", "memory", "gpu", "disk"]) setGauge(key, "–", "unavailable");
  }
}

async function refreshPerformance() {
  const tiles = document.getElementById("performance");
  try {
    const { data } = await api("GET", `/system/performance?window_minutes=${windowSelect.value}`);
    const m = data.metrics;
    field(tiles, "total_requests").textContent = m.total_requests;
    field(tiles, "error_rate_percent").textContent = `${m.error_rate_percent}%`;
    field(tiles, "avg_response_time_ms").textContent =
      m.avg_response_time_ms == null ? "–" : `${Math.round(m.avg_response_time_ms)} ms`;
    field(tiles, "throughput_requests_per_minute").textContent = `${m.throughput_requests_per_minute}/min`;
  } catch {
    tiles.querySelectorAll("dd").forEach((node) => { node.textContent = "unavailable"; });
  }
}

// One point per refresh: the requests of the last minute, which reads as a rate per minute.
async function sampleThroughput() {
  try {
    const { data } = await api("GET", "/system/performance?window_minutes=1");
    throughput.push(data.metrics.throughput_requests_per_minute);
    if (throughput.length > CHART_POINTS) throughput.shift();
  } catch {
    return;
  }
  drawChart();
}

function drawChart() {
  const svg = document.getElementById("throughput-chart");
  const width = 600;
  const height = 160;
  const top = Math.max(1, ...throughput);
  const step = width / (CHART_POINTS - 1);
  const offset = (CHART_POINTS - throughput.length) * step; // newest point on the right edge
  const points = throughput.map((value, index) =>
    `${(offset + index * step).toFixed(1)},${(height - 4 - (value / top) * (height - 12)).toFixed(1)}`);
  svg.querySelector("polyline.line").setAttribute("points", points.join(" "));
  const area = points.length ? [`${offset.toFixed(1)},${height}`, ...points, `${width},${height}`] : [];
  svg.querySelector("polyline.area").setAttribute("points", area.join(" "));
  document.getElementById("chart-max").textContent = `${top}/min`;
}

function untilText(iso) {
  if (!iso) return "–";
  const at = new Date(iso);
  const minutes = Math.round((at - Date.now()) / 60000);
  const clock = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return minutes > 0 ? `${clock} (in ${minutes} min)` : `${clock} (due)`;
}

async function refreshRow(row) {
  const badge = field(row, "status");
  try {
    const { data } = await api("GET", row.dataset.statusUrl);
    badge.textContent = data.status;
    badge.className = `badge status-${data.status}`;
    field(row, "memory").textContent = data.memory_usage_mb ? `${Math.round(data.memory_usage_mb)} MB` : "–";
    field(row, "queue").textContent = `${data.active_requests} / ${data.queue_depth}`;
    field(row, "expires").textContent = untilText(data.expires_at);
    field(row, "last_error").textContent = data.last_error || "";
  } catch {
    badge.textContent = "unavailable";
    badge.className = "badge";
  }
}

// Downloads: a row whose files are downloading is followed by polling its JSON route every second,
// not by the event stream. Daphne speaks HTTP/1.1 only, where a browser opens at most six connections
// to the site; an EventSource holds one for as long as its download runs, so a few downloads at once
// would starve the dashboard's own requests. A poll holds none, and needs no reconnection logic when
// the server restarts (the job resumes there and the next poll simply sees it).
const DOWNLOAD_POLL_MS = 1000;
const ACTIVE_DOWNLOAD = new Set(["queued", "downloading", "verifying"]);
const following = new Set();

function bytes(count) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function progressText(job) {
  if (job.status === "queued") return `queued · ${bytes(job.bytes_total)}`;
  const parts = [`${bytes(job.bytes_done)} of ${bytes(job.bytes_total)}`];
  if (job.status === "verifying") {
    parts.push("verifying");
  } else {
    if (job.speed_bytes_per_second > 0) parts.push(`${bytes(job.speed_bytes_per_second)}/s`);
    if (job.eta_seconds != null) parts.push(`${duration(job.eta_seconds)} left`);
  }
  return parts.join(" · ");
}

// status: present | missing | downloading | failed. Download is offered for the last two only.
function setDownloadStatus(row, status) {
  const badge = field(row, "download_status");
  badge.textContent = status;
  badge.className = `badge files-${status}`;
  const button = row.querySelector('button[data-action="download"]');
  if (button) button.hidden = status !== "missing" && status !== "failed";
}

// A running job shows as a progress bar; an ended one by its message (the error, or how it was cancelled).
function showDownload(row, job) {
  const active = ACTIVE_DOWNLOAD.has(job.status);
  field(row, "download").hidden = !active;
  if (active) {
    setDownloadStatus(row, "downloading");
    const bar = field(row, "download").querySelector("progress");
    if (job.progress == null) bar.removeAttribute("value");
    else bar.value = job.progress;
    field(row, "download_progress").textContent = progressText(job);
  }
  const outcome = field(row, "download_outcome");
  outcome.textContent = active ? "" : job.error || "";
  outcome.classList.toggle("error", job.status === "failed");
}

// Polls until the job ends, then lets the registry say what the files are now. An error stops the
// polling; the next periodic refresh starts it again while the list still says downloading.
async function follow(row, job) {
  if (job) showDownload(row, job);
  if (following.has(row) || (job && !ACTIVE_DOWNLOAD.has(job.status))) return;
  following.add(row);
  try {
    for (;;) {
      await new Promise((resolve) => { setTimeout(resolve, DOWNLOAD_POLL_MS); });
      if (document.hidden) continue;
      const latest = (await api("GET", row.dataset.downloadUrl)).data;
      showDownload(row, latest);
      if (!ACTIVE_DOWNLOAD.has(latest.status)) break;
    }
  } catch (error) {
    field(row, "download_progress").textContent = `progress unavailable: ${error.message}`;
    return;
  } finally {
    following.delete(row);
  }
  await refreshRegistry();
}

// A failure's message is on its job, which the list does not carry: fetched once per failure shown.
async function showLastFailure(row) {
  try {
    showDownload(row, (await api("GET", row.dataset.downloadUrl)).data);
  } catch {
    // The badge says failed; the message stays unknown.
  }
}

function applyDownloadStatus(row, status) {
  if (following.has(row)) return; // the job's own polls are newer than a list fetched meanwhile
  const before = field(row, "download_status").textContent;
  setDownloadStatus(row, status);
  if (!row.dataset.downloadUrl) return; // no model_load here: the download routes would refuse
  if (status === "downloading") follow(row);
  else if (status === "failed" && before !== "failed") showLastFailure(row);
}

async function refreshRegistry() {
  const rows = [...root.querySelectorAll("tr[data-model]")];
  await Promise.all(rows.map(refreshRow));
  try {
    const list = await api("GET", "/models/?limit=100");
    const byName = new Map(list.models.map((m) => [m.model_name, m]));
    for (const row of rows) {
      const model = byName.get(row.dataset.model);
      row.querySelector(".default-badge").hidden = !model?.is_default;
      if (model) applyDownloadStatus(row, model.download_status);
    }
  } catch {
    // The badges keep their last known state.
  }
}

async function refreshLogs() {
  const list = document.getElementById("logs");
  if (!list) return;
  try {
    const { data } = await api("GET", `/system/logs?lines=50&level=${logLevel.value}`);
    const lines = data.logs.map((entry) => {
      const item = el("li", `level-${entry.level.toLowerCase()}`);
      item.append(el("time", null, new Date(entry.timestamp).toLocaleTimeString()), el("span", "level", entry.level),
        el("span", "source", entry.source), el("span", "message", entry.message));
      return item;
    });
    list.replaceChildren(...(lines.length ? lines : [el("li", "hint", "No log lines at this level.")]));
  } catch (error) {
    list.replaceChildren(el("li", "hint", `Logs are unavailable: ${error.message}`));
  }
}

const ACTIONS = {
  load: { busy: "loading…", done: (body) => `loaded (${Math.round(body.memory_usage_mb)} MB, ${body.load_time_seconds?.toFixed(1)} s)` },
  download: {
    busy: null,
    done: (body, row) => {
      follow(row, body.data);
      return `download started (${bytes(body.data.bytes_total)})`;
    },
  },
  cancel: {
    method: "DELETE",
    busy: null,
    done: (body, row) => {
      showDownload(row, body.data);
      return "download cancelled";
    },
  },
  unload: { busy: "unloading…", done: (body) => body.data.message },
  default: { busy: null, done: () => "is now the default model" },
  validate: {
    busy: null,
    done: (body) => (body.data.valid ? "configuration is valid" : `invalid: ${body.data.errors.join("; ")}`),
  },
};

document.getElementById("registry").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const row = button.closest("tr");
  const action = ACTIONS[button.dataset.action];
  const buttons = row.querySelectorAll("button");
  buttons.forEach((node) => { node.disabled = true; });
  if (action.busy) {
    field(row, "status").textContent = action.busy;
    field(row, "status").className = "badge status-busy";
  }
  try {
    const body = await api(action.method || "POST", button.dataset.url);
    actionStatus.textContent = `${row.dataset.model}: ${action.done(body, row)}`;
    actionStatus.classList.remove("error");
  } catch (error) {
    actionStatus.textContent = `${row.dataset.model}: ${error.message}`;
    actionStatus.classList.add("error");
    if (error.details.download) follow(row, error.details.download); // someone else's download of it runs
  }
  buttons.forEach((node) => { node.disabled = false; });
  await refreshRegistry();
});

async function refresh() {
  await Promise.all([refreshResources(), refreshPerformance(), sampleThroughput(), refreshRegistry(), refreshLogs()]);
  document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

// A hidden tab skips its turns: nobody is watching, and the polling would only add to the traffic shown.
async function loop() {
  if (!document.hidden) await refresh();
  setTimeout(loop, REFRESH_MS);
}

windowSelect.addEventListener("change", refreshPerformance);
logLevel?.addEventListener("change", refreshLogs);
drawChart();
loop();
