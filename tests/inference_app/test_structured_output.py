"""response_format: JSON replies constrained by the engine, on /v1 (official openai client) and /inference/chat."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from inference_app.models import ChatMessage
from models_app.serving.engines.constraints import MAX_SCHEMA_BYTES
from tests.envelope import assert_error, assert_ok

MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Describe the capital of France in JSON."}]
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "population_known": {"type": "boolean"},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 3},
    },
    "required": ["city", "population_known", "landmarks"],
    "additionalProperties": False,
}
live = pytest.mark.django_db(transaction=True)


def json_schema_format(schema, **extra) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True, **extra}}


@pytest.fixture
def oai(live_server_url, loaded_model, make_user, client_for):
    key = client_for(make_user("model_read", "chat", "model_load")).raw_key
    return openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=key, max_retries=0, timeout=120)


@live
@pytest.mark.slow
def test_a_json_schema_reply_validates_against_its_schema_and_holds_nothing_else(oai):
    reply = oai.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=120,
                                        response_format=json_schema_format(CITY))
    value = json.loads(reply.choices[0].message.content)
    jsonschema.validate(value, CITY)
    assert set(value) == set(CITY["properties"])
    assert reply.choices[0].finish_reason == "stop"


@live
@pytest.mark.slow
def test_a_streamed_json_object_reply_parses_once_joined(oai):
    stream = oai.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=120, stream=True,
                                         response_format={"type": "json_object"})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert isinstance(json.loads(text), dict)


@live
@pytest.mark.slow
def test_a_completion_follows_its_response_format_too(oai):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"]}
    reply = oai.completions.create(model=MODEL, prompt="Is Paris in France?", temperature=0, max_tokens=20,
                                   extra_body={"response_format": json_schema_format(schema)})
    assert json.loads(reply.choices[0].text) in ({"answer": "yes"}, {"answer": "no"})


@live
@pytest.mark.parametrize("response_format,feature", [
    (json_schema_format({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}), "minimum"),
    (json_schema_format({"type": "object", "oneOf": [{}]}), "oneOf"),
    (json_schema_format({"type": "objekt"}), "type"),
    (json_schema_format({"$ref": "https://example.com/s.json"}), "$ref"),
    (json_schema_format({"type": "object", "properties": {
        f"field_{i}": {"type": "string", "description": "x" * 40} for i in range(600)}}), "too large"),
    ({"type": "xml"}, "unknown response format"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "json_schema.name"),
])
def test_a_bad_response_format_is_a_400_naming_the_field_and_the_feature(oai, response_format, feature):
    before = ChatMessage.objects.count()
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, response_format=response_format)
    error = caught.value.body
    assert error["param"] == "response_format"
    assert error["message"].startswith("response_format") and feature in error["message"]
    assert ChatMessage.objects.count() == before


def test_the_size_bound_is_the_documented_one():
    # The too-large case above is over this bound, not over the request body limit.
    oversized = {f"field_{i}": {"type": "string", "description": "x" * 40} for i in range(600)}
    assert MAX_SCHEMA_BYTES < len(json.dumps(oversized)) < 100_000


@pytest.mark.django_db
@pytest.mark.slow
def test_inference_chat_takes_response_format_in_generation_config(api_as, loaded_model):
    config = {"temperature": 0, "max_tokens": 120, "response_format": json_schema_format(CITY)}
    body = assert_ok(api_as("chat").post("/inference/chat", {"message": ASK[0]["content"],
                                                             "generation_config": config}, format="json"))
    jsonschema.validate(json.loads(body["response"]), CITY)


@pytest.mark.django_db
def test_inference_chat_refuses_an_unsupported_schema_naming_generation_config_response_format(api_as, loaded_model):
    before = ChatMessage.objects.count()
    config = {"response_format": json_schema_format({"type": "array", "uniqueItems": True})}
    error = assert_error(api_as("chat").post("/inference/chat", {"message": "Hi", "generation_config": config},
                                             format="json"), 400, "ValidationError")
    assert error["error_message"].startswith(
        "generation_config: response_format: json_schema.schema.uniqueItems: 'uniqueItems' is not supported")
    assert ChatMessage.objects.count() == before


def test_text_means_no_constraint_and_json_object_any_object():
    from inference_app.serializers import GenerationConfigSerializer

    def constraint(response_format):
        serializer = GenerationConfigSerializer(data={"response_format": response_format})
        assert serializer.is_valid(), serializer.errors
        return serializer.validated_data["response_format"]

    assert constraint({"type": "text"}) is None
    assert constraint({"type": "json_object"}) == {"schema": None, "prefix": "", "suffix": ""}
    assert constraint(json_schema_format(CITY, strict=False))["schema"]["required"] == CITY["required"]
