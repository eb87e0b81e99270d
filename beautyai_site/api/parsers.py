from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


class StrictJSONParser(JSONParser):
    """JSON bodies must be objects, and NaN/Infinity are refused (Python's json accepts them by default)."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError):
            raise ParseError("The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ParseError("The request body must be a JSON object.")
        return data
