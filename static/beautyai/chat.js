// The chat page: streams replies over /ws/chat/ (the session cookie authenticates the socket).
// User text goes into the page through textContent only; model text (answer and reasoning) as
// sanitized Markdown (markdown.js), never as raw HTML.
import { api, el, errorText, formatNumber, isolate } from "./api.js";
import { renderMarkdown, streamMarkdown } from "./markdown.js";

const root = document.getElementById("chat");
const log = document.getElementById("messages");
const composer = document.getElementById("composer");
const input = composer.elements.message;
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const modelSelect = document.getElementById("model");
const connection = document.getElementById("connection");

let sessionId = root.dataset.sessionId || null;
let socket = null;
let ready = false;
let current = null; // the reply being streamed: { requestId, title, view }
let retryMs = 500;

const FINISH_REASONS = {
  length: pgettext("finish reason", "length"),
  cancelled: pgettext("finish reason", "cancelled"),
  error: pgettext("finish reason", "error"),
};

function formatStats(stats) {
  const tokens = stats.tokens_generated ?? 0;
  const rate = formatNumber(stats.tokens_per_second ?? 0, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const ttft = stats.time_to_first_token_ms == null ? "–"
    : interpolate(gettext("%s ms"), [formatNumber(Math.round(stats.time_to_first_token_ms), { useGrouping: false })]);
  const parts = [interpolate(ngettext("%s token", "%s tokens", tokens), [formatNumber(tokens)]),
    interpolate(gettext("%s tok/s"), [rate]), interpolate(gettext("TTFT %s"), [ttft])];
  if (stats.finish_reason && stats.finish_reason !== "stop") {
    parts.push(FINISH_REASONS[stats.finish_reason] || stats.finish_reason);
  }
  return parts.join(" · ");
}

// The title the server gives a new chat (inference_app.services.session_title), shown until a reload.
function sessionTitle(text) {
  const line = [...text.split(/\s+/).filter(Boolean).join(" ")];
  if (line.length <= 60) return line.join("");
  let cut = line.slice(0, 59);
  const space = cut.lastIndexOf(" ");
  if (line[59] !== " " && space >= 30) cut = cut.slice(0, space);
  return `${cut.join("").replace(/[ ,.;:،؛]+$/, "")}…`;
}

function addUserMessage(text) {
  const article = el("article", "message user");
  article.append(el("header", "role", gettext("You")));
  const body = el("div", "text", text);
  body.dir = "auto";
  article.append(body);
  log.append(article);
  return article;
}

// A reply: reasoning in a collapsed <details> of its own, the answer, and a stats line.
function addReply(modelName) {
  const article = el("article", "message assistant");
  article.append(el("header", "role", modelName || gettext("Model")));
  const reasoning = el("details", "reasoning");
  reasoning.hidden = true;
  reasoning.append(el("summary", null, gettext("Reasoning")));
  const thoughts = el("div", "text markdown");
  thoughts.dir = "auto";
  reasoning.append(thoughts);
  const answer = el("div", "text markdown answer");
  answer.dir = "auto";
  const stats = el("p", "stats");
  article.append(reasoning, answer, stats);
  log.append(article);
  return { article, reasoning, thoughts, answer, stats };
}

function fillReply(view, { content, reasoning, stats }) {
  renderMarkdown(view.answer, content);
  renderMarkdown(view.thoughts, reasoning || "");
  view.reasoning.hidden = !reasoning;
  if (stats) view.stats.textContent = formatStats(stats);
}

function streamReply(view) {
  return { ...view, answerStream: streamMarkdown(view.answer), thoughtStream: streamMarkdown(view.thoughts) };
}

// Once a frame, after markdown.js has rendered that frame's tokens (its frame was asked for first).
let scrollFrame = 0;
function scrollToEnd() {
  scrollFrame ||= requestAnimationFrame(() => {
    scrollFrame = 0;
    log.scrollTop = log.scrollHeight;
  });
}

function setBusy(busy) {
  sendButton.disabled = busy || !ready || modelSelect.disabled;
  stopButton.disabled = true; // enabled by "start": before it the server has nothing to cancel
  root.classList.toggle("streaming", busy);
}

// `reply` is the server's final event; without one (error, lost connection) what arrived stands.
function finish(state, reply = {}) {
  if (!current) return;
  current.view.answerStream.finish(reply.response);
  current.view.thoughtStream.finish(reply.reasoning);
  current.view.article.dataset.state = state;
  current.view.article.classList.remove("pending");
  current = null;
  setBusy(false);
  input.focus();
}

function newRequestId() {
  return `r${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
}

function generationConfig() {
  const config = {};
  const maxTokens = composer.elements.max_tokens.value;
  const temperature = composer.elements.temperature.value;
  if (maxTokens !== "") config.max_tokens = Number(maxTokens);
  if (temperature !== "") config.temperature = Number(temperature);
  return config;
}

function send() {
  const text = input.value;
  if (!text.trim() || current || !ready) return;
  document.getElementById("placeholder")?.remove();
  addUserMessage(text);
  const view = streamReply(addReply(modelSelect.value));
  view.article.classList.add("pending");
  current = { requestId: newRequestId(), title: sessionTitle(text), view };
  socket.send(JSON.stringify({
    type: "chat",
    request_id: current.requestId,
    message: text,
    model_name: modelSelect.value || null,
    session_id: sessionId,
    generation_config: generationConfig(),
  }));
  input.value = "";
  setBusy(true);
  scrollToEnd();
}

function rememberSession(id, title) {
  if (sessionId === id) return;
  sessionId = id;
  root.dataset.sessionId = id;
  // The address names the chat, so a reload or a shared link resumes it.
  history.replaceState(null, "", `/chat/${id}/`);
  const list = document.getElementById("sessions");
  list.querySelector(".empty")?.remove();
  const item = el("li");
  const link = el("a", null, title);
  link.href = `/chat/${id}/`;
  link.dir = "auto";
  item.append(link);
  item.setAttribute("aria-current", "true");
  list.querySelectorAll("[aria-current]").forEach((node) => node.removeAttribute("aria-current"));
  list.prepend(item);
}

function onEvent(event) {
  if (event.type === "ready") {
    ready = true;
    retryMs = 500;
    connection.textContent = gettext("Connected");
    setBusy(Boolean(current));
    return;
  }
  if (!current || event.request_id !== current.requestId) {
    if (event.type === "error" && !event.request_id) connection.textContent = errorText(event);
    return;
  }
  const view = current.view;
  switch (event.type) {
    case "start":
      rememberSession(event.session_id, current.title);
      stopButton.disabled = false;
      break;
    case "delta":
      view.article.classList.remove("pending");
      view.answerStream.append(event.content);
      break;
    case "reasoning":
      view.article.classList.remove("pending");
      view.reasoning.hidden = false;
      view.thoughtStream.append(event.content);
      break;
    case "done":
      view.reasoning.hidden = !event.reasoning;
      view.stats.textContent = formatStats(event.generation_stats);
      finish(event.generation_stats.finish_reason, event);
      break;
    case "error":
      view.stats.textContent = errorText(event);
      view.stats.classList.add("error");
      finish("error");
      break;
  }
  scrollToEnd();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/chat/`);
  socket.addEventListener("message", (message) => onEvent(JSON.parse(message.data)));
  socket.addEventListener("close", () => {
    ready = false;
    if (current) {
      // The server cancels what a closed socket started; the partial reply is kept in the session.
      current.view.stats.textContent = gettext("Connection lost; the reply was stopped.");
      current.view.stats.classList.add("error");
      finish("error");
    }
    setBusy(false);
    connection.textContent = gettext("Reconnecting…");
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  });
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
stopButton.addEventListener("click", () => {
  if (!current) return;
  socket.send(JSON.stringify({ type: "cancel", request_id: current.requestId }));
  stopButton.disabled = true;
});

document.getElementById("delete-session")?.addEventListener("submit", (event) => {
  if (!confirm(gettext("Delete this chat and all its messages?"))) event.preventDefault();
});

// Export: the current chat to a session file in the user's folder on the server.
const exportForm = document.getElementById("export");
exportForm?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("manage-status");
  const name = exportForm.elements.output_file.value.trim();
  try {
    const saved = await api("POST", "/inference/sessions/save", {
      session_id: exportForm.dataset.sessionId,
      ...(name ? { output_file: name } : {}),
    });
    status.textContent = interpolate(gettext("Saved as %(file)s (%(bytes)s bytes)."),
      { file: isolate(saved.file_path), bytes: formatNumber(saved.file_size_bytes) }, true);
    loadFiles();
  } catch (error) {
    status.textContent = interpolate(gettext("Export failed: %s"), [error.message]);
  }
});

// Import: the user's session files, each loadable into a stored chat.
async function loadFiles() {
  const list = document.getElementById("file-list");
  if (!list) return;
  const status = document.getElementById("files-status");
  try {
    // Stored chats come first in this list; skip past them to the files.
    const counts = await api("GET", "/inference/sessions?limit=1");
    const page = await api("GET", `/inference/sessions?limit=100&offset=${counts.data.database_count}`);
    const files = page.data.sessions.filter((entry) => entry.source === "file");
    list.replaceChildren(...files.map(fileItem));
    status.textContent = files.length ? "" : gettext("No session files yet. Export a chat to create one.");
  } catch (error) {
    status.textContent = interpolate(gettext("Session files are unavailable: %s"), [error.message]);
  }
}

function fileItem(file) {
  const item = el("li");
  const label = el("span", "file-name", file.name);
  label.dir = "auto";
  const button = el("button", "small", gettext("Import"));
  button.type = "button";
  button.disabled = !file.valid;
  button.title = file.valid
    ? interpolate(ngettext("%s message", "%s messages", file.message_count), [formatNumber(file.message_count)])
    : gettext("Not a valid session file");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const loaded = await api("POST", "/inference/sessions/load", { input_file: file.name });
      location.assign(`/chat/${loaded.session_id}/`);
    } catch (error) {
      document.getElementById("files-status").textContent = interpolate(gettext("Import failed: %s"), [error.message]);
      button.disabled = false;
    }
  });
  item.append(label, button);
  return item;
}

for (const message of JSON.parse(document.getElementById("transcript").textContent)) {
  if (message.role === "assistant") fillReply(addReply(root.dataset.modelName), message);
  else if (message.role === "user") addUserMessage(message.content);
}
scrollToEnd();
loadFiles();
connect();
