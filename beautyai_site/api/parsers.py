from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from beautyai_site.api import errors
from beautyai_site.api.jsonsafe import UntrustedJSONError, loads_untrusted


def refused_value(exc: UntrustedJSONError) -> errors.ValidationError:
    """The 400 for JSON that loads_untrusted refused, naming the path of the bad value."""
    if not exc.path:
        return errors.ValidationError(f"The JSON is refused: {exc.reason}.")
    return errors.ValidationError(str(exc), details={"fields": {exc.path: [exc.reason]}})


class StrictJSONParser(JSONParser):
    """JSON bodies must be objects nested at most jsonsafe.MAX_DEPTH deep, with numbers that can be stored:
    no NaN/Infinity, nothing that overflows to infinity (1e400), no integer of more than 20 digits."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        if not raw.strip():
            return {}
        try:
            data = loads_untrusted(raw.decode("utf-8"))
        except UntrustedJSONError as exc:
            raise refused_value(exc) from None
        except (ValueError, UnicodeDecodeError):
            raise ParseError("The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ParseError("The request body must be a JSON object.")
        return data
