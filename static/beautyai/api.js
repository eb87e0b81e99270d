// Calls the JSON API as the signed-in browser user: the session cookie authenticates, and every
// request carries the CSRF token that Django's SessionAuthentication demands for unsafe methods.
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

// The page's language for numbers and dates. Latin digits in every language, like the numbers the
// server writes into the pages (Django's formats keep them), so one page never mixes two digit sets.
export const LOCALE = `${document.documentElement.lang || "en"}-u-nu-latn`;

export function formatNumber(value, options) {
  return new Intl.NumberFormat(LOCALE, options).format(value);
}

// What each error_code means, for pages in a language other than English: the API's error_message
// stays English (docs/i18n.md), so it follows as the detail.
const ERROR_SUMMARIES = {
  ValidationError: gettext("The request was not valid."),
  AuthenticationError: gettext("You are signed out. Sign in again."),
  PermissionDeniedError: gettext("You do not have permission to do this."),
  NotFoundError: gettext("It was not found."),
  ModelNotFoundError: gettext("This model is not in the registry."),
  ModelLoadError: gettext("The model could not be loaded."),
  ConflictError: gettext("This clashes with the server's current state."),
  PayloadTooLargeError: gettext("The request is too large."),
  RateLimitError: gettext("Too many requests. Wait a moment and try again."),
  ServiceUnavailableError: gettext("The server is busy or restarting. Try again shortly."),
  SystemError: gettext("The server could not complete the request."),
};

// Text of its own direction (a file name, an English detail) inside a right-to-left sentence:
// isolated (U+2068…U+2069) so that its order and the sentence's both hold.
export function isolate(text) {
  return document.documentElement.dir === "rtl" ? `\u2068${text}\u2069` : String(text);
}

// An error envelope (HTTP or WebSocket) as the page shows it.
export function errorText(body, status) {
  const detail = (body && body.error_message) || `HTTP ${status}`;
  if (document.documentElement.lang === "en") return detail;
  const summary = ERROR_SUMMARIES[body && body.error_code] || gettext("The request failed.");
  return `${summary} (${isolate(detail)})`;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(errorText(body, status));
    this.status = status;
    this.code = body && body.error_code;
    this.details = (body && body.error_details) || {};
  }
}

// Returns the envelope of a successful answer; throws ApiError for an error envelope or a non-JSON answer.
export async function api(method, url, body) {
  const headers = { Accept: "application/json", "X-CSRFToken": csrfToken };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let envelope = null;
  try {
    envelope = await response.json();
  } catch {
    // A proxy error page or an empty body: reported by status below.
  }
  if (!response.ok || !envelope || envelope.success !== true) throw new ApiError(response.status, envelope);
  return envelope;
}

// Builds an element whose text is set with textContent only: no model or user text is ever parsed as HTML.
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
