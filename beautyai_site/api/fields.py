"""Strict scalar fields: no strings standing in for numbers, no booleans as numbers, no NaN/Infinity."""

from __future__ import annotations

import math

from rest_framework import serializers


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"invalid": "must be a number", "finite": "must be a finite number"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if not math.isfinite(data):
            self.fail("finite")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "must be an integer"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "must be true or false"}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictQueryBooleanField(serializers.BooleanField):
    """Query-string booleans: true/false/1/0 only."""

    default_error_messages = {"invalid": "must be true or false"}

    def to_internal_value(self, data):
        value = str(data).strip().lower()
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        self.fail("invalid")


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is an error instead of a silently ignored setting."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["must be a JSON object"]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """Text must arrive as a JSON string: DRF would otherwise turn 5 into "5"."""

    default_error_messages = {"invalid": "must be a string"}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)
