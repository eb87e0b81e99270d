from __future__ import annotations

import logging
import threading
import weakref

from django.db import connection
from django.utils import timezone

from accounts.models import APIKey
from system_app.models import AuditEvent

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
            try:
                fields = self._fields(request, response)
            except Exception:  # an audit failure must not turn a served request into an error
                logger.exception("could not write an audit event")
                return response
            if response.streaming:
                self._record_when_closed(response, fields)
            else:
                self._record(fields)
        return response

    @staticmethod
    def _record_when_closed(response, fields: dict) -> None:
        """A stream's first byte (a chat's first token) must not wait for the insert, so its row,
        stamped with this moment, is written when the stream closes (ended or left by the client).

        A client that leaves before the first byte makes Django drop the response without closing
        it: then the row is written from a thread (the event loop's thread may not use the ORM)
        when the response is collected. Whichever comes first detaches the other. Django runs a
        response's resource closers in close() and offers no public hook for them.
        """
        dropped = weakref.finalize(response, AuditMiddleware._record_in_thread, fields)
        dropped.atexit = False

        def on_close():
            if dropped.detach() is not None:
                AuditMiddleware._record(fields)

        response._resource_closers.append(on_close)

    @staticmethod
    def _record_in_thread(fields: dict) -> None:
        threading.Thread(target=AuditMiddleware._record, args=(fields,), kwargs={"close": True},
                         name="audit-record", daemon=True).start()

    @staticmethod
    def _fields(request, response) -> dict:
        match = getattr(request, "resolver_match", None)
        user = getattr(request, "user", None)
        user = user if user is not None and user.is_authenticated else None
        api_key = getattr(request, "auth", None)
        kwargs = match.kwargs if match else {}
        return {
            "created_at": timezone.now(),
            "user": user,
            "username": user.get_username() if user else "",
            "api_key": api_key if isinstance(api_key, APIKey) else None,
            "client_ip": client_ip(request),
            "method": request.method,
            "route": f"/{match.route}" if match and match.route else request.path[:255],
            "action": (match.url_name or "")[:100] if match else "",
            "target": str(next(iter(kwargs.values()), ""))[:255],
            "status_code": response.status_code,
            "error_code": getattr(response, "error_code", "") or "",
            "request_id": getattr(request, "request_id", ""),
        }

    @staticmethod
    def _record(fields: dict, close: bool = False) -> None:
        try:
            AuditEvent.objects.create(**fields)
        except Exception:  # an audit failure must not turn a served request into an error
            logger.exception("could not write an audit event")
        finally:
            if close:
                connection.close()
