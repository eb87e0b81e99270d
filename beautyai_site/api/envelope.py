"""The response envelope every route answers with, success and error alike."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from rest_framework.response import Response


def iso(moment: datetime | float | None) -> str | None:
    """The one timestamp format of every answer: ISO 8601 in UTC with milliseconds and ``Z``.

    Takes an aware datetime, a Unix time, or None (answered as null).
    """
    if moment is None:
        return None
    if isinstance(moment, (int, float)):
        moment = datetime.fromtimestamp(moment, tz=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def elapsed_ms(request) -> float | None:
    # The DRF request wraps Django's; the start time is stamped on Django's by RequestContextMiddleware.
    django_request = getattr(request, "_request", request)
    started = getattr(django_request, "beautyai_started", None)
    return None if started is None else round((time.perf_counter() - started) * 1000, 3)


def ok_body(request, *, data=None, **fields) -> dict:
    body = {"success": True, "data": data}
    body.update(fields)
    body["timestamp"] = now_iso()
    body["execution_time_ms"] = elapsed_ms(request)
    return body


def ok(request, *, data=None, status: int = 200, **fields) -> Response:
    """A success answer: typed-response fields go in ``fields`` (top level), APIResponse payloads in ``data``."""
    return Response(ok_body(request, data=data, **fields), status=status)


def error_body(request, *, code: str, message: str, details=None) -> dict:
    return {
        "success": False,
        "data": None,
        "error_code": code,
        "error_message": message,
        "error_details": details,
        "timestamp": now_iso(),
        "execution_time_ms": elapsed_ms(request) if request is not None else None,
    }


# The OpenAI-compatible routes answer errors in OpenAI's shape, so that its clients can read them.
OPENAI_PREFIX = "/v1/"
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "invalid_request_error", 429: "rate_limit_error"}
OPENAI_ERROR_CODES = {"AuthenticationError": "invalid_api_key", "ModelNotFoundError": "model_not_found",
               "RateLimitError": "rate_limit_exceeded"}

def openai_error(status: int, code: str, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": OPENAI_ERROR_CODES.get(code, code)}}



# The Anthropic-compatible routes (/v1/messages...) answer errors in Anthropic's shape.
ANTHROPIC_PREFIX = "/v1/messages"
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 503: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict:
    """Statuses Anthropic has no type for (405, 409) are invalid requests; other 5xx are api errors."""
    return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"), "message": message}}


def error_body_for_path(path: str, request, *, status: int, code: str, message: str, details=None) -> dict:
    """The error body a route answers with: Anthropic's shape under /v1/messages, OpenAI's under
    the rest of /v1/, the envelope elsewhere."""
    if path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/"):
        return anthropic_error(status, message)
    if path.startswith(OPENAI_PREFIX):
        return openai_error(status, code, message)
    return error_body(request, code=code, message=message, details=details)
