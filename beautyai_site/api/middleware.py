from __future__ import annotations

import re
import time
import uuid

from django.conf import settings

from beautyai_site.api import errors
from beautyai_site.api.views import envelope_json

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestContextMiddleware:
    """Stamps each request with an id and a start time, and refuses oversized bodies before any parsing.

    The body limit is enforced here rather than left to DRF, because DRF's request.data reads the
    stream directly and so bypasses Django's DATA_UPLOAD_MAX_MEMORY_SIZE.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.beautyai_started = time.perf_counter()
        supplied = request.headers.get("X-Request-ID", "")
        request.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        response = self._check_body(request) or self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response

    @staticmethod
    def _check_body(request):
        limit = settings.MAX_REQUEST_BODY_BYTES
        too_large = envelope_json(
            request, errors.PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        )
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            if int(declared) > limit:
                return too_large
        except ValueError:
            return envelope_json(request, errors.ValidationError("Content-Length is not a number."))
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            # Read at most limit+1 bytes: a body sent without Content-Length cannot grow past the limit.
            body = request.read(limit + 1)
            if len(body) > limit:
                return too_large
            request._body = body
        return None
