"""Request metrics: a Prometheus sample for every request, a RequestMetric row for every API request.

The row goes to the bounded background writer, so the database is never touched on the request
path and a failing database cannot fail a request.
"""

from __future__ import annotations

import time

from django.utils import timezone
from django.utils.functional import SimpleLazyObject, empty

from system_app import metrics
from system_app.logging import writer

UNMATCHED = "<unmatched>"
# Any token is a valid HTTP method: unknown ones are folded so a client cannot grow the label set.
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# Probes and scrapes arrive every few seconds and would swamp the averages of /system/performance.
NOT_STORED = {"healthz", "readyz", "metrics"}


def route_of(request) -> str:
    """The URL pattern that served the request, never the raw path (no client-chosen text, bounded labels)."""
    match = getattr(request, "resolver_match", None)
    return f"/{match.route}"[:255] if match is not None and match.route else UNMATCHED


def username_of(request) -> str:
    user = getattr(request, "user", None)
    if isinstance(user, SimpleLazyObject) and user._wrapped is empty:
        # Nobody looked at the user (a 404, a static file): resolving it now would read the session
        # table on the request path, only to label a metric.
        return ""
    return user.get_username() if user is not None and user.is_authenticated else ""


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        duration_s = time.perf_counter() - started
        route = route_of(request)
        method = request.method if request.method in METHODS else "OTHER"
        metrics.record_request(route=route, method=method, status=response.status_code, duration_s=duration_s)
        match = getattr(request, "resolver_match", None)
        if match is None or match.url_name not in NOT_STORED:
            writer.submit("system_app.RequestMetric", {
                "created_at": timezone.now(),
                "method": method,
                "route": route,
                "status_code": response.status_code,
                "duration_ms": round(duration_s * 1000, 3),
                "username": username_of(request),
            })
        return response
