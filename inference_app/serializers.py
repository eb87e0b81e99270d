from __future__ import annotations

import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from beautyai_site.api.fields import StrictCharField, StrictBooleanField, StrictFloatField, StrictIntegerField, StrictSerializer
from models_app.services import ConstraintError, check_schema
from models_app.serializers import ModelNameField

MAX_MESSAGE_CHARS = 100_000
MAX_HISTORY = 200


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON_SCHEMA_KEYS = {"name", "schema", "strict", "description"}


@extend_schema_field({
    "type": "object", "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": _SCHEMA_NAME.pattern}, "description": {"type": "string"},
            "schema": {"type": "object"}, "strict": {"type": "boolean", "nullable": True}}},
    },
    "description": "OpenAI's response_format: the reply is constrained to JSON (see docs/api.md for the "
                   "supported schema keywords).",
})
class ResponseFormatField(serializers.Field):
    """OpenAI's ``response_format``, as the engines' constraint (``GenerationParams.constraint``).

    ``text`` is no constraint (None); ``json_object`` any JSON object; ``json_schema`` a JSON value
    matching its schema. ``strict: false`` is constrained all the same: an answer that does not
    follow the schema is of no use to a caller who sent one. The schema is checked here, before
    anything is stored or submitted; the runner compiles it.
    """

    def to_internal_value(self, data):
        if not isinstance(data, dict) or "type" not in data:
            raise serializers.ValidationError("must be an object with a type: text, json_object or json_schema")
        kind = data["type"]
        if kind not in ("text", "json_object", "json_schema"):
            raise serializers.ValidationError(f"type: unknown response format {str(kind)[:40]!r}; "
                                              "use text, json_object or json_schema")
        allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
        extra = sorted(set(data) - allowed)
        if extra:
            raise serializers.ValidationError(f"{extra[0]}: not allowed with type {kind}")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"schema": None, "prefix": "", "suffix": ""}
        spec = data.get("json_schema")
        if not isinstance(spec, dict):
            raise serializers.ValidationError("json_schema: required, an object with name and schema")
        extra = sorted(set(spec) - _JSON_SCHEMA_KEYS)
        if extra:
            raise serializers.ValidationError(f"json_schema.{extra[0]}: unknown field")
        if not isinstance(spec.get("name"), str) or not _SCHEMA_NAME.match(spec["name"]):
            raise serializers.ValidationError("json_schema.name: required, 1 to 64 letters, digits, _ or -")
        if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
            raise serializers.ValidationError("json_schema.strict: must be a boolean")
        if spec.get("description") is not None and not isinstance(spec["description"], str):
            raise serializers.ValidationError("json_schema.description: must be a string")
        schema = spec.get("schema")
        if schema is None:
            return {"schema": None, "prefix": "", "suffix": ""}
        try:
            schema = check_schema(schema, field="json_schema.schema")
        except ConstraintError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return {"schema": schema, "prefix": "", "suffix": ""}

    def to_representation(self, value):
        return value


class GenerationConfigSerializer(StrictSerializer):
    max_tokens = StrictIntegerField(min_value=1, max_value=32768, required=False)
    temperature = StrictFloatField(min_value=0.0, max_value=2.0, required=False)
    top_p = StrictFloatField(min_value=0.0, max_value=1.0, required=False)
    top_k = StrictIntegerField(min_value=0, max_value=1000, required=False)
    repetition_penalty = StrictFloatField(min_value=0.01, max_value=10.0, required=False)
    seed = StrictIntegerField(min_value=0, max_value=2**32 - 1, required=False)
    stop = serializers.ListField(child=StrictCharField(min_length=1, max_length=64, trim_whitespace=False),
                                 max_length=4, required=False)
    do_sample = StrictBooleanField(required=False)
    enable_thinking = StrictBooleanField(required=False)
    response_format = ResponseFormatField(required=False, allow_null=True)

    def validate_top_p(self, value):
        if value <= 0:
            raise serializers.ValidationError("must be greater than 0")
        return value


class ChatTurnSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=["user", "assistant", "system"])
    content = StrictCharField(max_length=MAX_MESSAGE_CHARS, allow_blank=True, trim_whitespace=False)


class ChatRequestSerializer(StrictSerializer):
    model_name = ModelNameField(required=False, allow_null=True)
    message = StrictCharField(max_length=MAX_MESSAGE_CHARS, trim_whitespace=False)
    session_id = serializers.UUIDField(required=False, allow_null=True)
    chat_history = ChatTurnSerializer(many=True, required=False, max_length=MAX_HISTORY)
    generation_config = GenerationConfigSerializer(required=False)
    stream = StrictBooleanField(required=False, default=False)

    def validate_message(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be empty")
        return value


class GenerationStatsSerializer(serializers.Serializer):
    tokens_generated = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    inference_time_ms = serializers.FloatField()
    time_to_first_token_ms = serializers.FloatField(allow_null=True)
    tokens_per_second = serializers.FloatField()
    queue_time_ms = serializers.FloatField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length", "tool_calls", "cancelled", "error"])
    dropped_turns = serializers.IntegerField()


class ChatResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    data = serializers.JSONField(allow_null=True)
    response = StrictCharField()
    reasoning = StrictCharField(allow_blank=True)
    session_id = serializers.UUIDField()
    request_id = StrictCharField()
    model_name = StrictCharField()
    generation_stats = GenerationStatsSerializer()
    tool_calls = serializers.ListField(child=serializers.JSONField())  # always empty here: tools are /v1's
    timestamp = serializers.DateTimeField()
    execution_time_ms = serializers.FloatField(allow_null=True)
