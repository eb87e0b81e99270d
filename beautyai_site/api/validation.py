"""Request data through a DRF serializer, or a 400 naming the fields; shared by every app's views."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError as DRFValidationError


def parse(serializer_class, data):
    """The validated data of ``data``; a DRF ValidationError (answered as the envelope's 400) otherwise.

    Each call validates afresh: validated data is the caller's to fill in, so nothing is shared
    between requests (a cached copy of the defaults once was, and leaked one request's values into
    the next).
    """
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise DRFValidationError(serializer.errors)
    return serializer.validated_data
