from __future__ import annotations

import math

from rest_framework.renderers import JSONRenderer


def _finite(value):
    """NaN and ±Infinity are not JSON; a measurement that produced one is reported as null, never a 500."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class EnvelopeJSONRenderer(JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        # Strict JSON (DRF's default) refuses NaN and Infinity with a ValueError; only then is the
        # payload walked to replace them, so a normal response is encoded once and never copied.
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except ValueError:
            return super().render(_finite(data), accepted_media_type, renderer_context)
