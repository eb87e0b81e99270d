"""Requests and responses of the model test, benchmark, session file and usage routes."""

from __future__ import annotations

import json
import re

import regex
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from beautyai_site.api.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictQueryBooleanField,
    StrictSerializer,
)
from beautyai_site.api.serializers import EnvelopeSerializer
from inference_app.models import BENCHMARK_TYPES, FINISH_REASONS, ROLES, TOOL_CALL_ID_CHARS
from inference_app.serializers import MAX_HISTORY, MAX_MESSAGE_CHARS, GenerationConfigSerializer, ResponseFormatField
from models_app.serializers import ModelNameField
from models_app.services import MAX_EMBEDDING_INPUTS

REGEX_MAX_CHARS = 500
MAX_CRITERIA_ITEMS = 50
# The languages the script check knows; Latin-script languages cannot be told apart by script.
LANGUAGE_SCRIPTS = {
    "ar": ("ARABIC",), "fa": ("ARABIC",), "ur": ("ARABIC",),
    "en": ("LATIN",), "fr": ("LATIN",), "de": ("LATIN",), "es": ("LATIN",), "it": ("LATIN",),
    "pt": ("LATIN",), "nl": ("LATIN",), "tr": ("LATIN",), "id": ("LATIN",), "pl": ("LATIN",),
    "ru": ("CYRILLIC",), "uk": ("CYRILLIC",), "bg": ("CYRILLIC",),
    "el": ("GREEK",), "he": ("HEBREW",), "hi": ("DEVANAGARI",), "th": ("THAI",), "ko": ("HANGUL",),
    "zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"),
}


# Model test -------------------------------------------------------------------------------------

# regex.compile unrolls counted repeats: (a{1000}){1000} costs 275 MB and 0.4 s, a{4000000} 1 GB and
# 3 s, all with the GIL held. regex_cost_error() refuses such patterns by reading the text, before
# anything compiles them; within these limits a compile takes a few MB and milliseconds.
REGEX_MAX_REPEAT = 1000  # each count of a {m,n} repeat
REGEX_MAX_EXPANSION = 10_000  # items once every counted repeat is unrolled (sum along, product inside)
REGEX_MAX_NESTING = 20  # groups inside groups
# Verbose mode (x) makes '#' start a comment and version 1 (V1) nests sets: either moves where a
# set or a group ends, which the scan below must know exactly. Both are refused instead.
_UNSCANNED_FLAGS = re.compile(r"\(\?[\^a-zA-Z0-9-]*(?:x|V1)")
_COUNT = re.compile(r"\{(\d*)(,?)(\d*)\}")
_FLAGS_OR_CALL = re.compile(r"\(\?[\^a-zA-Z0-9-]*\)")
# A POSIX class inside a set, as the regex package reads one (its parse_posix_class).
_POSIX_CLASS = re.compile(r"\[:\^?[A-Za-z0-9 &_.-]*"
                          r"(?:[:=][A-Za-z0-9 &_./-]*[A-Za-z0-9&_./-][A-Za-z0-9 &_./-]*)?:\]")


def _end_of_set(pattern: str, start: int) -> int:
    """The index after the set opened at ``start``; its first item is a member even if it is ']'."""
    index = start + 1 + (pattern.startswith("^", start + 1))
    first = True
    while index < len(pattern) and (first or pattern[index] != "]"):
        posix = _POSIX_CLASS.match(pattern, index)
        index = posix.end() if posix else index + (2 if pattern[index] == "\\" else 1)
        first = False
    return index + 1


def regex_cost_error(pattern: str) -> str | None:
    """Why compiling ``pattern`` could cost too much, or None. It over-counts rather than under-counts:
    a pattern it misreads is one the regex package refuses anyway, while parsing, before unrolling."""
    if _UNSCANNED_FLAGS.search(pattern):
        return "the inline flags x (verbose) and V1 are not supported"
    sizes = [0]  # unrolled size of each open group so far
    last = 0  # unrolled size of the item a repeat would apply to
    index = 0
    while index < len(pattern):
        char = pattern[index]
        count = _COUNT.match(pattern, index) if char == "{" else None
        if count is not None and (count.group(1) or count.group(2)):
            bounds = [int(number) for number in (count.group(1), count.group(3)) if number]
            if max(bounds, default=0) > REGEX_MAX_REPEAT:
                return f"a repeat count is above {REGEX_MAX_REPEAT}"
            factor = max(bounds + [1])
            sizes[-1] += last * (factor - 1)
            last *= factor
            index = count.end()
        elif pattern.startswith("(?#", index):  # a comment; ')' ends it unless escaped
            index += 3
            while index < len(pattern) and pattern[index] != ")":
                index += 2 if pattern[index] == "\\" else 1
            index += 1
            continue
        elif flags_or_call := _FLAGS_OR_CALL.match(pattern, index):
            # A repeat after (?i) repeats the item before it; after a call such as (?1), the call,
            # which unrolls as one item. Keeping the larger of the two over-counts both.
            index = flags_or_call.end()
            last = max(last, 1)
            sizes[-1] += 1
        elif char == "(":
            sizes.append(0)
            if len(sizes) - 1 > REGEX_MAX_NESTING:
                return f"groups are nested more than {REGEX_MAX_NESTING} deep"
            index += 1
            continue
        elif char == ")" and len(sizes) > 1:
            last = max(sizes.pop(), 1)
            sizes[-1] += last
            index += 1
        elif char in "?*+|":  # ?*+ repeat the item before without unrolling it; | changes no size
            index += 1
            continue
        else:
            index = _end_of_set(pattern, index) if char == "[" else index + (2 if char == "\\" else 1)
            last = 1
            sizes[-1] += 1
        if sizes[-1] > REGEX_MAX_EXPANSION:
            return f"it unrolls to more than {REGEX_MAX_EXPANSION} items (nested counted repeats multiply)"
    return None


def _texts(**kwargs):
    return serializers.ListField(
        child=StrictCharField(min_length=1, max_length=1000, trim_whitespace=False),
        max_length=MAX_CRITERIA_ITEMS, required=False, **kwargs,
    )


class ValidationCriteriaSerializer(StrictSerializer):
    min_length = StrictIntegerField(min_value=0, max_value=10_000_000, required=False)
    max_length = StrictIntegerField(min_value=0, max_value=10_000_000, required=False)
    contains = _texts()
    not_contains = _texts()
    regex = StrictCharField(min_length=1, max_length=REGEX_MAX_CHARS, trim_whitespace=False, required=False)
    expected_language = serializers.ChoiceField(choices=sorted(LANGUAGE_SCRIPTS), required=False)
    max_time_ms = StrictFloatField(min_value=0.001, max_value=3_600_000, required=False)

    def validate_regex(self, value: str) -> str:
        refusal = regex_cost_error(value)
        if refusal is not None:
            raise serializers.ValidationError(f"refused before compiling: {refusal}")
        try:
            regex.compile(value)
        except (regex.error, RecursionError, OverflowError) as exc:
            raise serializers.ValidationError(f"not a valid pattern: {getattr(exc, 'msg', 'too complex')}") from None
        return value

    def validate(self, attrs):
        if attrs.get("min_length", 0) > attrs.get("max_length", 10_000_000):
            raise serializers.ValidationError({"min_length": ["must not exceed max_length"]})
        return attrs


class TestRequestSerializer(StrictSerializer):
    model_name = ModelNameField()
    prompt = StrictCharField(max_length=MAX_MESSAGE_CHARS, trim_whitespace=False)
    generation_config = GenerationConfigSerializer(required=False)
    validation_criteria = ValidationCriteriaSerializer(required=False)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be empty")
        return value


class CheckSerializer(serializers.Serializer):
    check = StrictCharField()
    passed = serializers.BooleanField()
    detail = StrictCharField()


class ValidationResultSerializer(serializers.Serializer):
    passed = serializers.BooleanField()
    checks = CheckSerializer(many=True)


class TestResponseSerializer(EnvelopeSerializer):
    model_name = StrictCharField()
    prompt = StrictCharField()
    response = StrictCharField(allow_blank=True)
    reasoning = StrictCharField(allow_blank=True)
    generation_stats = serializers.JSONField()
    validation_result = ValidationResultSerializer()


# Benchmark --------------------------------------------------------------------------------------

class BenchmarkConfigSerializer(StrictSerializer):
    num_runs = StrictIntegerField(min_value=1, max_value=100, default=5)
    prompt = StrictCharField(max_length=MAX_MESSAGE_CHARS, trim_whitespace=False, required=False)
    # Capped by the model entry's max_new_tokens in the service; the default is min(64, that cap).
    max_tokens = StrictIntegerField(min_value=1, max_value=32768, required=False)
    temperature = StrictFloatField(min_value=0.0, max_value=2.0, default=0.0)
    concurrency = StrictIntegerField(min_value=1, max_value=64, default=4)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be empty")
        return value


class BenchmarkRequestSerializer(StrictSerializer):
    model_name = ModelNameField()
    benchmark_type = serializers.ChoiceField(choices=BENCHMARK_TYPES)
    config = BenchmarkConfigSerializer(required=False)


class BenchmarkResponseSerializer(EnvelopeSerializer):
    benchmark_id = serializers.IntegerField()
    model_name = StrictCharField()
    benchmark_type = StrictCharField()
    config = serializers.JSONField()
    results = serializers.JSONField()
    summary = serializers.JSONField()


class PageQuerySerializer(StrictSerializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)
    offset = serializers.IntegerField(min_value=0, max_value=1_000_000, default=0)


# Tools -------------------------------------------------------------------------------------------

MAX_TOOLS = 128
MAX_TOOLS_BYTES = 64 * 1024
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_CALL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % TOOL_CALL_ID_CHARS)


def _tool_name(value: str) -> str:
    if not TOOL_NAME.fullmatch(value):
        raise serializers.ValidationError("must be 1 to 64 letters, digits, '_' or '-'")
    return value


@extend_schema_field({"type": "object", "additionalProperties": True})
class JSONSchemaField(serializers.Field):
    """A function's parameters: a JSON Schema (checked against its meta-schema) describing an object."""

    def to_internal_value(self, data):
        import jsonschema

        if not isinstance(data, dict):
            raise serializers.ValidationError("must be a JSON Schema object")
        if data.get("type", "object") != "object":
            raise serializers.ValidationError('must describe an object ("type": "object")')
        if not isinstance(data.get("$schema", ""), str):  # validator_for would raise TypeError on it
            raise serializers.ValidationError("$schema must be a string")
        try:
            jsonschema.validators.validator_for(data).check_schema(data)
        except jsonschema.SchemaError as exc:
            raise serializers.ValidationError(f"not a valid JSON Schema: {exc.message[:200]}") from None
        return data

    def to_representation(self, value):
        return value


class ToolFunctionSerializer(StrictSerializer):
    name = StrictCharField(max_length=64)
    description = StrictCharField(max_length=MAX_TOOLS_BYTES, allow_blank=True, trim_whitespace=False, required=False)
    parameters = JSONSchemaField(required=False)
    strict = StrictBooleanField(required=False, allow_null=True)

    def validate_name(self, value):
        return _tool_name(value)


class ToolSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=["function"])
    function = ToolFunctionSerializer()


@extend_schema_field({"oneOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {
    "type": "object", "properties": {"type": {"enum": ["function"]},
                                     "function": {"type": "object", "properties": {"name": {"type": "string"}}}}}]})
class ToolChoiceField(serializers.Field):
    """``none``, ``auto``, ``required``, or ``{"type": "function", "function": {"name": ...}}`` (kept as the name)."""

    # DRF formats these messages: doubled braces are literal ones.
    default_error_messages = {"invalid": 'must be "none", "auto", "required" or {{"type": "function", '
                                         '"function": {{"name": ...}}}}'}

    def to_internal_value(self, data):
        if data in ("none", "auto", "required"):
            return data
        if not (isinstance(data, dict) and set(data) == {"type", "function"} and data["type"] == "function"):
            self.fail("invalid")
        function = data["function"]
        if not (isinstance(function, dict) and set(function) == {"name"} and isinstance(function["name"], str)
                and TOOL_NAME.fullmatch(function["name"])):
            self.fail("invalid")
        return {"name": function["name"]}

    def to_representation(self, value):
        return value


class ToolCallFunctionSerializer(StrictSerializer):
    name = StrictCharField(max_length=64)
    arguments = StrictCharField(max_length=MAX_MESSAGE_CHARS, trim_whitespace=False)

    def validate_name(self, value):
        return _tool_name(value)

    def validate_arguments(self, value):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise serializers.ValidationError("must be the JSON text of an object")
        return value


class ToolCallSerializer(StrictSerializer):
    """One call of an assistant turn, as the server answered it."""

    id = StrictCharField(max_length=TOOL_CALL_ID_CHARS)
    type = serializers.ChoiceField(choices=["function"])
    function = ToolCallFunctionSerializer()

    def validate_id(self, value):
        if not TOOL_CALL_ID.fullmatch(value):
            raise serializers.ValidationError("must be letters, digits, '_', '.', ':' or '-'")
        return value


def tool_turn_errors(attrs: dict) -> dict:
    """Which fields of a message break the rules of tool turns (shared by /v1 and session files)."""
    role = attrs.get("role")
    if attrs.get("tool_calls") and role != "assistant":
        return {"tool_calls": ["only assistant messages carry tool calls"]}
    if attrs.get("tool_call_id") and role != "tool":
        return {"tool_call_id": ["only tool messages answer a tool call"]}
    if role == "tool" and not attrs.get("tool_call_id"):
        return {"tool_call_id": ["a tool message must name the call it answers"]}
    ids = [call["id"] for call in attrs.get("tool_calls") or []]
    if len(set(ids)) != len(ids):
        return {"tool_calls": ["call ids must be unique"]}
    return {}


# Session files ----------------------------------------------------------------------------------

class SessionSaveRequestSerializer(StrictSerializer):
    session_id = serializers.UUIDField(required=False, allow_null=True)
    session_data = serializers.DictField(required=False, default=dict)
    output_file = StrictCharField(required=False, allow_null=True, trim_whitespace=False)


class SessionSaveResponseSerializer(EnvelopeSerializer):
    session_id = serializers.UUIDField()
    file_path = StrictCharField()
    file_size_bytes = serializers.IntegerField()


class SessionLoadRequestSerializer(StrictSerializer):
    input_file = StrictCharField(trim_whitespace=False)


class SessionLoadResponseSerializer(EnvelopeSerializer):
    session_data = serializers.JSONField()
    session_id = serializers.UUIDField()
    message_count = serializers.IntegerField()


class SessionDeleteQuerySerializer(StrictSerializer):
    delete_database_session = StrictQueryBooleanField(required=False, default=False)


class FlatStatsField(serializers.DictField):
    """A message's stats: one level of names to numbers, text, booleans or null; nothing nested."""

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if len(data) > 64:
            raise serializers.ValidationError("at most 64 entries")
        for key, value in data.items():
            if len(key) > 64 or not (value is None or isinstance(value, (bool, int, float, str))):
                raise serializers.ValidationError(f"{key[:64]}: must be a number, text, true/false or null")
            if isinstance(value, str) and len(value) > 1000:
                raise serializers.ValidationError(f"{key[:64]}: longer than 1000 characters")
        return data


class SessionFileMessageSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = StrictCharField(allow_blank=True, trim_whitespace=False)
    reasoning = StrictCharField(allow_blank=True, trim_whitespace=False, required=False, default="")
    finish_reason = serializers.ChoiceField(choices=("",) + FINISH_REASONS, required=False, default="")
    prompt_tokens = StrictIntegerField(min_value=0, max_value=2**31 - 1, required=False, allow_null=True)
    completion_tokens = StrictIntegerField(min_value=0, max_value=2**31 - 1, required=False, allow_null=True)
    stats = FlatStatsField(required=False, default=dict)
    created_at = serializers.DateTimeField(required=False, allow_null=True)
    tool_calls = ToolCallSerializer(many=True, required=False, default=list, max_length=MAX_TOOLS)
    tool_call_id = StrictCharField(max_length=TOOL_CALL_ID_CHARS, allow_blank=True, required=False, default="")

    def validate(self, attrs):
        problems = tool_turn_errors(attrs)
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class SessionFileSerializer(StrictSerializer):
    """The schema of a session file, and of ``session_data`` given to save."""

    format = serializers.ChoiceField(choices=["beautyai.session"], required=False)
    version = StrictIntegerField(min_value=1, max_value=1, required=False)
    session_id = serializers.UUIDField(required=False, allow_null=True)
    model_name = StrictCharField(max_length=128, allow_blank=True, required=False, default="")
    title = StrictCharField(max_length=200, allow_blank=True, trim_whitespace=False, required=False, default="")
    created_at = serializers.DateTimeField(required=False, allow_null=True)
    messages = SessionFileMessageSerializer(many=True, max_length=10_000)


# Usage ------------------------------------------------------------------------------------------

class UsageQuerySerializer(StrictSerializer):
    days = serializers.IntegerField(min_value=1, max_value=366, default=30)


# OpenAI-compatible /v1 --------------------------------------------------------------------------

TEXT_OR_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


class OpenAITextField(serializers.Field):
    """Text in one of the forms OpenAI clients send; ``as_text`` turns the other forms into a string."""

    default_error_messages = {"invalid": "must be a string",
                              "max_length": f"longer than {MAX_MESSAGE_CHARS} characters"}

    def as_text(self, data):
        return data

    def to_internal_value(self, data):
        data = self.as_text(data)
        if not isinstance(data, str):
            self.fail("invalid")
        if len(data) > MAX_MESSAGE_CHARS:
            self.fail("max_length")
        return data

    def to_representation(self, value):
        return value


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {
    "type": "object", "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}}}}]})
class OpenAIContentField(OpenAITextField):
    """A message's content: a string, or a list of text parts."""

    default_error_messages = {"invalid": "must be a string or a list of text parts"}

    def as_text(self, data):
        if isinstance(data, list) and all(
            isinstance(part, dict) and set(part) == {"type", "text"} and part["type"] == "text"
            and isinstance(part["text"], str) for part in data
        ):
            return "".join(part["text"] for part in data)
        return data


@extend_schema_field(TEXT_OR_TEXTS)
class StopField(serializers.Field):
    default_error_messages = {"invalid": "must be a string or a list of at most 4 strings of 1 to 64 characters"}

    def to_internal_value(self, data):
        stops = [data] if isinstance(data, str) else data
        if not isinstance(stops, list) or len(stops) > 4 or not all(
            isinstance(stop, str) and 0 < len(stop) <= 64 for stop in stops
        ):
            self.fail("invalid")
        return stops

    def to_representation(self, value):
        return value


class OpenAIMessageSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = OpenAIContentField(allow_null=True, required=False)
    name = StrictCharField(max_length=64, required=False)
    tool_calls = ToolCallSerializer(many=True, required=False, max_length=MAX_TOOLS)
    tool_call_id = StrictCharField(max_length=TOOL_CALL_ID_CHARS, required=False)

    def validate(self, attrs):
        problems = tool_turn_errors(attrs)
        if not problems and attrs.get("content") is None and not (attrs["role"] == "assistant" and attrs.get("tool_calls")):
            problems = {"content": ["required, except for an assistant message with tool_calls"]}
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class StreamOptionsSerializer(StrictSerializer):
    include_usage = StrictBooleanField(required=False, default=False)


class OpenAIRequestSerializer(StrictSerializer):
    """What /v1/chat/completions and /v1/completions share; ``session_id``, ``top_k`` and
    ``repetition_penalty`` are extensions (send them with the client's ``extra_body``).
    ``user`` is accepted for compatibility and not used; other OpenAI options are refused by name."""

    model = ModelNameField()
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    max_tokens = StrictIntegerField(min_value=1, max_value=32768, required=False, allow_null=True)
    temperature = StrictFloatField(min_value=0.0, max_value=2.0, required=False, allow_null=True)
    top_p = StrictFloatField(min_value=0.0, max_value=1.0, required=False, allow_null=True)
    stop = StopField(required=False, allow_null=True)
    seed = StrictIntegerField(min_value=0, max_value=2**32 - 1, required=False, allow_null=True)
    n = StrictIntegerField(min_value=1, max_value=1, required=False, allow_null=True)
    user = StrictCharField(max_length=256, required=False)
    top_k = StrictIntegerField(min_value=0, max_value=1000, required=False, allow_null=True)
    repetition_penalty = StrictFloatField(min_value=0.01, max_value=10.0, required=False, allow_null=True)
    session_id = serializers.UUIDField(required=False, allow_null=True)
    response_format = ResponseFormatField(required=False, allow_null=True)

    def validate_top_p(self, value):
        if value is not None and value <= 0:
            raise serializers.ValidationError("must be greater than 0")
        return value


class ChatCompletionRequestSerializer(OpenAIRequestSerializer):
    messages = OpenAIMessageSerializer(many=True, min_length=1, max_length=MAX_HISTORY + 1)
    max_completion_tokens = StrictIntegerField(min_value=1, max_value=32768, required=False, allow_null=True)
    tools = ToolSerializer(many=True, required=False, allow_null=True, max_length=MAX_TOOLS)
    tool_choice = ToolChoiceField(required=False, allow_null=True)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)

    def validate_tools(self, value):
        if not value:
            return value
        if any(tool is None for tool in value):  # allow_null on the list lets null items through too
            raise serializers.ValidationError("each tool must be an object")
        if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_TOOLS_BYTES:
            raise serializers.ValidationError(f"larger than {MAX_TOOLS_BYTES // 1024} KB in all")
        names = [tool["function"]["name"] for tool in value]
        if len(set(names)) != len(names):
            raise serializers.ValidationError("function names must be unique")
        return value

    def validate(self, attrs):
        choice = attrs.get("tool_choice")
        names = {tool["function"]["name"] for tool in attrs.get("tools") or []}
        if choice in ("required",) or isinstance(choice, dict):
            if not names:
                raise serializers.ValidationError({"tool_choice": ["needs tools"]})
            if isinstance(choice, dict) and choice["name"] not in names:
                raise serializers.ValidationError({"tool_choice": [f"names no function in tools: {choice['name']}"]})
        return attrs


@extend_schema_field(TEXT_OR_TEXTS)
class PromptField(OpenAITextField):
    default_error_messages = {"invalid": "must be a non-empty string (or a list holding one)"}

    def as_text(self, data):
        return data[0] if isinstance(data, list) and len(data) == 1 else data

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        if not text.strip():
            self.fail("invalid")
        return text


class CompletionRequestSerializer(OpenAIRequestSerializer):
    prompt = PromptField()


@extend_schema_field({"oneOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}},
    {"type": "array", "items": {"type": "integer"}},
    {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
]})
class EmbeddingInputField(serializers.Field):
    """A text, a list of texts, a token id list, or a list of token id lists; always a list of inputs inside."""

    default_error_messages = {
        "invalid": "must be a string, a list of strings, a list of token ids or a list of token id lists",
        "empty": "must not be empty, nor hold an empty string or token list",
        "too_many": f"at most {MAX_EMBEDDING_INPUTS} inputs",
        "max_length": f"each text at most {MAX_MESSAGE_CHARS} characters",
    }

    def to_internal_value(self, data):
        if isinstance(data, str) or (isinstance(data, list) and data and all(_is_token_id(t) for t in data)):
            data = [data]
        if not isinstance(data, list):
            self.fail("invalid")
        if not data:
            self.fail("empty")
        if len(data) > MAX_EMBEDDING_INPUTS:
            self.fail("too_many")
        for item in data:
            if isinstance(item, list) and not all(_is_token_id(t) for t in item):
                self.fail("invalid")
            if not isinstance(item, (str, list)):
                self.fail("invalid")
            if not item:
                self.fail("empty")
            if isinstance(item, str) and len(item) > MAX_MESSAGE_CHARS:
                self.fail("max_length")
        return data

    def to_representation(self, value):
        return value


def _is_token_id(value) -> bool:
    # Whether the id is in the model's vocabulary is the runner's check; negative ids never are.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class EmbeddingRequestSerializer(StrictSerializer):
    """``user`` is accepted for compatibility and not used."""

    model = ModelNameField()
    input = EmbeddingInputField()
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, default="float")
    dimensions = StrictIntegerField(min_value=1, max_value=65536, required=False, allow_null=True)
    user = StrictCharField(max_length=256, required=False)
