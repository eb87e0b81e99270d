// The operations dashboard: polls the JSON API every few seconds and updates the page in place.
// Each panel fails on its own ("unavailable") so one missing route does not blank the page.
import { LOCALE, api, el, formatNumber } from "./api.js";

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

// The runtime's and the file check's state words; the API sends them as English codes.
const MODEL_STATES = {
  loading: pgettext("model state", "loading"),
  loaded: pgettext("model state", "loaded"),
  unloaded: pgettext("model state", "unloaded"),
  error: pgettext("model state", "error"),
};
const FILE_STATES = {
  present: pgettext("model files", "present"),
  missing: pgettext("model files", "missing"),
  downloading: pgettext("model files", "downloading"),
  failed: pgettext("model files", "failed"),
};
const UNAVAILABLE = gettext("unavailable");
const clock = new Intl.DateTimeFormat(LOCALE, { hour: "2-digit", minute: "2-digit" });
const clockSeconds = new Intl.DateTimeFormat(LOCALE, { timeStyle: "medium" });
const relative = new Intl.RelativeTimeFormat(LOCALE, { numeric: "auto" });

function percent(value, digits = 0) {
  return value == null ? "–" : formatNumber(value / 100, { style: "percent", maximumFractionDigits: digits });
}

function perMinute(value) {
  return interpolate(gettext("%s/min"), [formatNumber(value)]);
}

function gb(value) {
  return value == null ? "–" : formatNumber(value, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
}

// value: a percentage, or a word ("none", "–") shown in place of one with an empty ring.

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
    setGauge("cpu", data.cpu.usage_percent,
      interpolate(ngettext("%s core", "%s cores", data.cpu.cores), [formatNumber(data.cpu.cores)]));
    setGauge("memory", data.memory.usage_percent, interpolate(gettext("%(free)s of %(total)s GB free"),
      { free: gb(data.memory.available_gb), total: gb(data.memory.total_gb) }, true));
    if (data.gpu.gpu_available) {
      setGauge("gpu", data.gpu.usage_percent, interpolate(gettext("memory %s"), [percent(data.gpu.memory_usage_percent)]));
    } else {
      setGauge("gpu", gettext("none"), gettext("no GPU found"));
    }
    setGauge("disk", data.disk.usage_percent, interpolate(gettext("%s GB free"), [gb(data.disk.available_gb)]));
  } catch {
    for (const key of ["cpu", "memory", "gpu", "disk"]) setGauge(key, "–", UNAVAILABLE);
  }
}

async function refreshPerformance() {
  const tiles = document.getElementById("performance");
  try {
    const { data } = await api("GET", `/system/performance?window_minutes=${windowSelect.value}`);
    const m = data.metrics;
    field(tiles, "total_requests").textContent = formatNumber(m.total_requests);
    field(tiles, "error_rate_percent").textContent = percent(m.error_rate_percent, 2);
    field(tiles, "avg_response_time_ms").textContent = m.avg_response_time_ms == null ? "–"
      : interpolate(gettext("%s ms"), [formatNumber(Math.round(m.avg_response_time_ms), { useGrouping: false })]);
    field(tiles, "throughput_requests_per_minute").textContent = perMinute(m.throughput_requests_per_minute);
  } catch {
    tiles.querySelectorAll("dd").forEach((node) => { node.textContent = UNAVAILABLE; });
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
  document.getElementById("chart-max").textContent = perMinute(top);
  // A line needs two points: until then the chart says what it is waiting for.
  document.getElementById("chart-waiting").hidden = throughput.length >= 2;
}

function untilText(iso) {
  if (!iso) return "–";
  const at = new Date(iso);
  const minutes = Math.round((at - Date.now()) / 60000);
  const when = minutes > 0 ? relative.format(minutes, "minute") : gettext("due");
  return `${clock.format(at)} (${when})`;
}

async function refreshRow(row) {
  const badge = field(row, "status");
  try {
    const { data } = await api("GET", row.dataset.statusUrl);
    badge.textContent = MODEL_STATES[data.status] || data.status;
    badge.className = `badge status-${data.status}`;
    field(row, "memory").textContent = data.memory_usage_mb
      ? interpolate(gettext("%s MB"), [formatNumber(Math.round(data.memory_usage_mb), { useGrouping: false })]) : "–";
    field(row, "queue").textContent = `${formatNumber(data.active_requests)} / ${formatNumber(data.queue_depth)}`;
    field(row, "expires").textContent = untilText(data.expires_at);
    field(row, "last_error").textContent = data.last_error || "";
  } catch {
    badge.textContent = UNAVAILABLE;
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

const BYTE_UNITS = [gettext("%s B"), gettext("%s kB"), gettext("%s MB"), gettext("%s GB"), gettext("%s TB")];

function bytes(count) {
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < BYTE_UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 ? 0 : 1;
  return interpolate(BYTE_UNITS[unit], [formatNumber(value, { minimumFractionDigits: digits, maximumFractionDigits: digits })]);
}

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return interpolate(gettext("%(s)s s"), { s }, true);
  if (s < 3600) return interpolate(gettext("%(m)s min %(s)s s"), { m: Math.floor(s / 60), s: s % 60 }, true);
  return interpolate(gettext("%(h)s h %(m)s min"), { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) }, true);
}

function progressText(job) {
  if (job.status === "queued") return interpolate(gettext("queued · %s"), [bytes(job.bytes_total)]);
  const parts = [interpolate(gettext("%(done)s of %(total)s"), { done: bytes(job.bytes_done), total: bytes(job.bytes_total) }, true)];
  if (job.status === "verifying") {
    parts.push(gettext("verifying"));
  } else {
    if (job.speed_bytes_per_second > 0) parts.push(interpolate(gettext("%s/s"), [bytes(job.speed_bytes_per_second)]));
    if (job.eta_seconds != null) parts.push(interpolate(gettext("%s left"), [duration(job.eta_seconds)]));
  }
  return parts.join(" · ");
}

// The server's texts for the two ways a download is cancelled, which the page knows in every language.
const DOWNLOAD_OUTCOMES = {
  "cancelled; partial data kept for a resume": gettext("cancelled; partial data kept for a resume"),
  "cancelled; partial data discarded": gettext("cancelled; partial data discarded"),
};

// status: present | missing | downloading | failed. Download is offered for the last two only.
function setDownloadStatus(row, status) {
  const badge = field(row, "download_status");
  badge.textContent = FILE_STATES[status] || status;
  badge.dataset.status = status;
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
  outcome.textContent = active ? "" : DOWNLOAD_OUTCOMES[job.error] || job.error || "";
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
    field(row, "download_progress").textContent = interpolate(gettext("progress unavailable: %s"), [error.message]);
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
  const before = field(row, "download_status").dataset.status;
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

// The log list reads left to right (English log text); its hints read in the page's direction.
function hint(text) {
  const item = el("li", "hint", text);
  item.dir = "auto";
  return item;
}

async function refreshLogs() {
  const list = document.getElementById("logs");
  if (!list) return;
  try {
    const { data } = await api("GET", `/system/logs?lines=50&level=${logLevel.value}`);
    const lines = data.logs.map((entry) => {
      const item = el("li", `level-${entry.level.toLowerCase()}`);
      item.append(el("time", null, clockSeconds.format(new Date(entry.timestamp))), el("span", "level", entry.level),
        el("span", "source", entry.source), el("span", "message", entry.message));
      return item;
    });
    list.replaceChildren(...(lines.length ? lines : [hint(gettext("No log lines at this level."))]));
  } catch (error) {
    list.replaceChildren(hint(interpolate(gettext("Logs are unavailable: %s"), [error.message])));
  }
}

const ACTIONS = {
  load: {
    busy: gettext("loading…"),
    done: (body) => interpolate(gettext("loaded (%(memory)s MB, %(seconds)s s)"), {
      memory: formatNumber(Math.round(body.memory_usage_mb), { useGrouping: false }),
      seconds: formatNumber(body.load_time_seconds ?? 0, { minimumFractionDigits: 1, maximumFractionDigits: 1 }),
    }, true),
  },
  download: {
    busy: null,
    done: (body, row) => {
      follow(row, body.data);
      return interpolate(gettext("download started (%s)"), [bytes(body.data.bytes_total)]);
    },
  },
  cancel: {
    method: "DELETE",
    busy: null,
    done: (body, row) => {
      showDownload(row, body.data);
      return gettext("download cancelled");
    },
  },
  unload: { busy: gettext("unloading…"), done: () => gettext("unloaded") },
  default: { busy: null, done: () => gettext("is now the default model") },
  validate: {
    busy: null,
    done: (body) => (body.data.valid ? gettext("configuration is valid")
      : interpolate(gettext("not valid: %s"), [body.data.errors.join("; ")])),
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
  document.getElementById("updated").textContent = interpolate(gettext("Updated %s"), [clockSeconds.format(new Date())]);
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
