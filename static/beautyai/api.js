// Calls the JSON API as the signed-in browser user: the session cookie authenticates, and every
// request carries the CSRF token that Django's SessionAuthentication demands for unsafe methods.
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error_message) || `HTTP ${status}`);
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
