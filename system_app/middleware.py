from __future__ import annotations

import logging

from django.utils import timezone

from system_app.models import APIKey, AuditEvent

logger = logging.getLogger(__name__)

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def client_ip(request) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is set by the client unless a trusted proxy rewrites it.
    return request.META.get("REMOTE_ADDR") or None


class AuditMiddleware:
    """Writes an AuditEvent for every mutating request and every 401/403. Bodies are never copied."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.method in MUTATING or response.status_code in (401, 403):
            if response.streaming:
                # A stream's first byte (a chat's first token) must not wait for the insert: the row is
                # written when the stream closes (ended or left by the client), stamped with this moment.
                # Django runs a response's resource closers in close(); it offers no public hook.
                answered_at = timezone.now()
                response._resource_closers.append(lambda: self._record_safely(request, response, answered_at))
            else:
                self._record_safely(request, response)
        return response

    @classmethod
    def _record_safely(cls, request, response, created_at=None) -> None:
        try:
            cls._record(request, response, created_at or timezone.now())
        except Exception:  # an audit failure must not turn a served request into an error
            logger.exception("could not write an audit event")

    @staticmethod
    def _record(request, response, created_at) -> None:
        match = getattr(request, "resolver_match", None)
        user = getattr(request, "user", None)
        user = user if user is not None and user.is_authenticated else None
        api_key = getattr(request, "auth", None)
        kwargs = match.kwargs if match else {}
        AuditEvent.objects.create(
            created_at=created_at,
            user=user,
            username=user.get_username() if user else "",
            api_key=api_key if isinstance(api_key, APIKey) else None,
            client_ip=client_ip(request),
            method=request.method,
            route=f"/{match.route}" if match and match.route else request.path[:255],
            action=(match.url_name or "")[:100] if match else "",
            target=str(next(iter(kwargs.values()), ""))[:255],
            status_code=response.status_code,
            error_code=getattr(response, "error_code", "") or "",
            request_id=getattr(request, "request_id", ""),
        )
