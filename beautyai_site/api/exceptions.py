"""The one exception handler: every error, DRF's and Django's included, becomes the envelope."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions as drf
from rest_framework.response import Response

from beautyai_site.api import errors
from beautyai_site.api.envelope import error_body

logger = logging.getLogger("beautyai.errors")


# The database went away (restart, network, too many connections): the request may be retried, so
# this is a 503, not a bug. Django reconnects on the next request by itself.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


def database_unavailable() -> errors.ServiceUnavailableError:
    return errors.ServiceUnavailableError("The database is not reachable right now; retry shortly.")


def _first_message(detail) -> str:
    """A readable sentence naming the first bad field, e.g. "temperature: must be at most 2"."""
    if isinstance(detail, dict):
        for field, inner in detail.items():
            text = _first_message(inner)
            return text if field == "non_field_errors" else f"{field}: {text}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def _as_api_error(exc) -> errors.APIError | None:
    if isinstance(exc, errors.APIError):
        return exc
    if isinstance(exc, drf.ValidationError):
        return errors.ValidationError(_first_message(exc.detail), details={"fields": exc.detail})
    if isinstance(exc, (drf.ParseError, drf.UnsupportedMediaType)):
        return errors.ValidationError(str(exc.detail))
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        return errors.AuthenticationError(str(exc.detail))
    if isinstance(exc, (drf.PermissionDenied, DjangoPermissionDenied)):
        return errors.PermissionDeniedError(getattr(exc, "detail", None) and str(exc.detail))
    if isinstance(exc, (drf.NotFound, Http404)):
        return errors.NotFoundError()
    if isinstance(exc, drf.MethodNotAllowed):
        return errors.MethodNotAllowedError(str(exc.detail))
    if isinstance(exc, drf.NotAcceptable):
        return errors.ValidationError(str(exc.detail))
    if isinstance(exc, drf.Throttled):
        return errors.RateLimitError(details={"retry_after_seconds": exc.wait})
    if isinstance(exc, RequestDataTooBig):
        return errors.PayloadTooLargeError()
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return database_unavailable()
    return None


def error_response(request, error: errors.APIError) -> Response:
    response = Response(
        error_body(request, code=error.error_code, message=error.message, details=error.details),
        status=error.status_code,
    )
    response.error_code = error.error_code  # read by the audit middleware
    return response


def envelope_exception_handler(exc, context):
    request = context.get("request")
    error = _as_api_error(exc)
    if error is None:
        # No internals leave the server: the traceback goes to the log, the caller gets a plain SystemError.
        logger.exception("unhandled error in %s", getattr(request, "path", "?"))
        error = errors.SystemError()
    response = error_response(request, error)
    if isinstance(exc, drf.Throttled) and exc.wait is not None:
        response["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    elif getattr(exc, "retry_after", None):
        response["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed) and request is not None:
        authenticators = getattr(request, "authenticators", None)
        if authenticators:
            response["WWW-Authenticate"] = authenticators[0].authenticate_header(request)
    return response
