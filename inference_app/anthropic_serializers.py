"""Requests of the Anthropic-compatible routes (/v1/messages, /v1/messages/count_tokens).

Content blocks are checked here, each refusal naming its place (``messages.1.content.0.type``);
``anthropic_api`` turns the checked request into the chat service's messages.
"""

from __future__ import annotations

import json

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from beautyai_site.api.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField, StrictSerializer
from inference_app.serializers import MAX_HISTORY, MAX_MESSAGE_CHARS
from inference_app.tool_serializers import MAX_TOOLS, MAX_TOOLS_BYTES, TOOL_CALL_ID, JSONSchemaField
from models_app.serializers import ModelNameField

TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
# Blocks Anthropic defines that these engines cannot take (they read text only).
UNSUPPORTED_BLOCKS = ("image", "document", "search_result", "container_upload", "server_tool_use",
                      "web_search_tool_result")
# Keys each block may carry; cache_control and citations are accepted and ignored (no prompt cache here).
BLOCK_KEYS = {
    "text": ({"type", "text"}, {"cache_control", "citations"}),
    "tool_use": ({"type", "id", "name", "input"}, {"cache_control"}),
    "tool_result": ({"type", "tool_use_id"}, {"content", "is_error", "cache_control"}),
    "thinking": ({"type", "thinking"}, {"signature"}),
    "redacted_thinking": ({"type", "data"}, set()),
}
# Which role may send which block: tool results answer the assistant's tool uses.
ROLE_BLOCKS = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}
_BLOCK_SCHEMA = {"type": "object", "properties": {"type": {"type": "string"}}, "required": ["type"]}


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise serializers.ValidationError({where: ["must be a string"]})
    if len(value) > MAX_MESSAGE_CHARS:
        raise serializers.ValidationError({where: [f"longer than {MAX_MESSAGE_CHARS} characters"]})
    return value


def _text_blocks(value, what: str) -> str:
    """A string, or text blocks joined: the form of ``system`` and of a tool result's ``content``."""
    if isinstance(value, str):
        return _checked_string(value)
    if not isinstance(value, list):
        raise serializers.ValidationError(f"must be a string or a list of text blocks ({what})")
    texts = []
    for index, block in enumerate(value):
        texts.append(_block(block, ("text",), str(index))["text"])
    return _checked_string("".join(texts))


def _checked_string(value: str) -> str:
    if len(value) > MAX_MESSAGE_CHARS:
        raise serializers.ValidationError(f"longer than {MAX_MESSAGE_CHARS} characters")
    return value


def _call_id(value, where: str) -> str:
    """A tool_use id, or the one a tool_result answers: stored as the chat's call ids (ChatMessage)."""
    value = _text(value, where)
    if not TOOL_CALL_ID.fullmatch(value):
        raise serializers.ValidationError({where: ["must be letters, digits, '_', '.', ':' or '-' (at most 64)"]})
    return value


def _block(block, allowed: tuple[str, ...], where: str) -> dict:
    """One content block, checked; errors are keyed by ``where`` (its index) and the bad key."""
    if not isinstance(block, dict):
        raise serializers.ValidationError({where: ["must be a content block object"]})
    kind = block.get("type")
    if kind in UNSUPPORTED_BLOCKS:
        raise serializers.ValidationError({where: {"type": [f"'{kind}' blocks are not supported: these models take text only"]}})
    if kind not in allowed:
        raise serializers.ValidationError({where: {"type": [f"must be one of {', '.join(allowed)}"]}})
    required, optional = BLOCK_KEYS[kind]
    for key in required - set(block):
        raise serializers.ValidationError({where: {key: ["this field is required"]}})
    for key in set(block) - required - optional:
        raise serializers.ValidationError({where: {key: ["unknown field"]}})
    checked = {"type": kind}
    try:
        if kind == "text":
            checked["text"] = _text(block["text"], "text")
        elif kind == "tool_use":
            checked["id"] = _call_id(block["id"], "id")
            checked["name"] = _text(block["name"], "name")
            if not isinstance(block["input"], dict):
                raise serializers.ValidationError({"input": ["must be an object"]})
            checked["input"] = block["input"]
        elif kind == "tool_result":
            checked["tool_use_id"] = _call_id(block["tool_use_id"], "tool_use_id")
            try:
                checked["content"] = _text_blocks(block.get("content", ""), "tool result")
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"content": exc.detail}) from None
            if not isinstance(block.get("is_error", False), bool):
                raise serializers.ValidationError({"is_error": ["must be true or false"]})
            checked["is_error"] = block.get("is_error", False)
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({where: exc.detail}) from None
    return checked


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": _BLOCK_SCHEMA}]})
class ContentField(serializers.Field):
    """A message's content: a string (one text block) or a list of content blocks, as checked dicts."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            return [{"type": "text", "text": _checked_string(data)}]
        if not isinstance(data, list) or not data:
            raise serializers.ValidationError("must be a string or a non-empty list of content blocks")
        return [_block(block, tuple(BLOCK_KEYS), str(index)) for index, block in enumerate(data)]

    def to_representation(self, value):
        return value


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": _BLOCK_SCHEMA}]})
class SystemField(serializers.Field):
    def to_internal_value(self, data):
        return _text_blocks(data, "system prompt")

    def to_representation(self, value):
        return value


class MessageSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = ContentField()

    def validate(self, attrs):
        allowed = ROLE_BLOCKS[attrs["role"]]
        seen = set()
        for index, block in enumerate(attrs["content"]):
            if block["type"] not in allowed:
                raise serializers.ValidationError({"content": {str(index): {"type": [
                    f"a {attrs['role']} message takes {', '.join(allowed)} blocks"]}}})
            key = block.get("id") or block.get("tool_use_id")
            if key is not None and key in seen:
                raise serializers.ValidationError({"content": {str(index): {
                    "id" if block["type"] == "tool_use" else "tool_use_id": ["appears twice in this message"]}}})
            seen.add(key)
        return attrs


class AnthropicToolSerializer(StrictSerializer):
    name = serializers.RegexField(TOOL_NAME, error_messages={"invalid": "must be 1 to 64 letters, digits, '_' or '-'"})
    description = StrictCharField(max_length=10_000, required=False, allow_blank=True)
    input_schema = JSONSchemaField()
    type = serializers.ChoiceField(choices=["custom"], required=False)
    cache_control = serializers.DictField(required=False)

    def validate_input_schema(self, value):
        if value.get("type") != "object":  # Anthropic requires it; JSONSchemaField would let it be implied
            raise serializers.ValidationError("must be a JSON schema of type object")
        return value


class ToolChoiceSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=["auto", "any", "tool", "none"])
    name = serializers.RegexField(TOOL_NAME, required=False)
    disable_parallel_tool_use = StrictBooleanField(required=False)

    def validate(self, attrs):
        if (attrs["type"] == "tool") != ("name" in attrs):
            raise serializers.ValidationError({"name": ["required with type 'tool', and only then"]})
        return attrs


class ThinkingSerializer(StrictSerializer):
    """enabled / disabled set the template's enable_thinking; adaptive leaves the model's default."""

    type = serializers.ChoiceField(choices=["enabled", "disabled", "adaptive"])
    budget_tokens = StrictIntegerField(min_value=1, max_value=2**31 - 1, required=False)
    display = serializers.ChoiceField(choices=["summarized", "omitted"], required=False, allow_null=True)


class MetadataSerializer(StrictSerializer):
    user_id = StrictCharField(max_length=256, required=False, allow_null=True, allow_blank=True)


class CountTokensRequestSerializer(StrictSerializer):
    """What counting tokens takes: the prompt part of a message request."""

    model = ModelNameField()
    messages = MessageSerializer(many=True, min_length=1, max_length=MAX_HISTORY + 1)
    system = SystemField(required=False)
    tools = AnthropicToolSerializer(many=True, required=False, max_length=MAX_TOOLS)
    tool_choice = ToolChoiceSerializer(required=False)
    thinking = ThinkingSerializer(required=False)
    cache_control = serializers.DictField(required=False, allow_null=True)  # no prompt cache here: ignored

    def validate(self, attrs):
        if attrs.get("tool_choice") and attrs["tool_choice"]["type"] in ("any", "tool") and not attrs.get("tools"):
            raise serializers.ValidationError({"tool_choice": ["needs tools"]})
        names = [tool["name"] for tool in attrs.get("tools") or []]
        if len(json.dumps(attrs.get("tools") or [], ensure_ascii=False).encode()) > MAX_TOOLS_BYTES:
            raise serializers.ValidationError({"tools": [f"larger than {MAX_TOOLS_BYTES // 1024} KB in all"]})
        if len(set(names)) != len(names):
            raise serializers.ValidationError({"tools": ["tool names must be unique"]})
        choice = attrs.get("tool_choice") or {}
        if choice.get("type") == "tool" and choice["name"] not in names:
            raise serializers.ValidationError({"tool_choice": {"name": ["not one of the tools"]}})
        return attrs


class MessagesRequestSerializer(CountTokensRequestSerializer):
    """POST /v1/messages. ``metadata`` is accepted and not used; ``session_id`` is an extension (stored
    session to continue, as on /v1/chat/completions); other Anthropic options are refused by name."""

    max_tokens = StrictIntegerField(min_value=1, max_value=32768)
    stop_sequences = serializers.ListField(child=StrictCharField(min_length=1, max_length=64, trim_whitespace=False),
                                           max_length=4, required=False)
    temperature = StrictFloatField(min_value=0.0, max_value=1.0, required=False)
    top_p = StrictFloatField(min_value=0.0, max_value=1.0, required=False)
    top_k = StrictIntegerField(min_value=0, max_value=1000, required=False)
    metadata = MetadataSerializer(required=False)
    stream = StrictBooleanField(required=False, default=False)
    session_id = serializers.UUIDField(required=False, allow_null=True)

    def validate_top_p(self, value):
        if value <= 0:
            raise serializers.ValidationError("must be greater than 0")
        return value
