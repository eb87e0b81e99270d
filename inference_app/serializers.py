from __future__ import annotations

from rest_framework import serializers

from beautyai_site.api.fields import StrictCharField, StrictBooleanField, StrictFloatField, StrictIntegerField, StrictSerializer
from models_app.serializers import ModelNameField

MAX_MESSAGE_CHARS = 100_000
MAX_HISTORY = 200


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
