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

async function refreshRegistry() {
  const rows = [...root.querySelectorAll("tr[data-model]")];
  await Promise.all(rows.map(refreshRow));
  try {
    const list = await api("GET", "/models/?limit=100");
    const defaults = new Set(list.models.filter((m) => m.is_default).map((m) => m.model_name));
    for (const row of rows) row.querySelector(".default-badge").hidden = !defaults.has(row.dataset.model);
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
    const body = await api("POST", button.dataset.url);
    actionStatus.textContent = `${row.dataset.model}: ${action.done(body)}`;
    actionStatus.classList.remove("error");
  } catch (error) {
    actionStatus.textContent = `${row.dataset.model}: ${error.message}`;
    actionStatus.classList.add("error");
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
