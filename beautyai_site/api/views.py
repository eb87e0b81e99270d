"""Envelope answers for errors raised outside DRF views (unknown URLs, Django-level failures)."""

from __future__ import annotations

import sys

from django.http import JsonResponse

from beautyai_site.api import errors
from beautyai_site.api.envelope import error_body_for_path


def envelope_json(request, error: errors.APIError) -> JsonResponse:
    response = JsonResponse(
        error_body_for_path(request.path, request, status=error.status_code, code=error.error_code,
                            message=error.message, details=error.details),
        status=error.status_code,
    )
    response.error_code = error.error_code
    return response


def not_found(request, exception=None):
    return envelope_json(request, errors.NotFoundError("No route matches this URL."))


def server_error(request):
    from beautyai_site.api.exceptions import DATABASE_UNAVAILABLE, database_unavailable

    # Django calls handler500 inside its except block, so the failure is still at hand here.
    if isinstance(sys.exc_info()[1], DATABASE_UNAVAILABLE):
        return envelope_json(request, database_unavailable())
    return envelope_json(request, errors.SystemError())


def bad_request(request, exception=None):
    return envelope_json(request, errors.ValidationError("Bad request."))


def permission_denied(request, exception=None):
    return envelope_json(request, errors.PermissionDeniedError())


def csrf_failure(request, reason=""):
    return envelope_json(request, errors.PermissionDeniedError("CSRF verification failed."))
