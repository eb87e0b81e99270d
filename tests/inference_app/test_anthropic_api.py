"""/v1/messages: the official anthropic client against the live server, and Anthropic's error shape."""

from __future__ import annotations

import json
from types import SimpleNamespace

import anthropic
import jsonschema
import pytest

from accounts.models import APIKey
from beautyai_site.api.envelope import error_body_for_path
from inference_app.anthropic_api import (
    AnthropicMessage,
    messages_to_chat,
    tool_choice_to_openai,
    tools_to_openai,
)
from inference_app.models import ChatMessage, ChatSession, UsageRecord
from inference_app.services import ReplyBuilder
from models_app import runtime
from models_app.serving.engines.contract import GenerationStats
from models_app.serving.handle import Event

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "Name the capital city of France."}]
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
# anthropic 2.x dropped temperature from create(); older clients and other tools still send it.
GREEDY = {"temperature": 0}
live = pytest.mark.django_db(transaction=True)
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                            "required": ["city"], "additionalProperties": False}}
TIME = {"name": "get_time", "description": "The time in a timezone.",
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}},
                         "required": ["timezone"], "additionalProperties": False}}
SCHEMAS = {"get_weather": WEATHER["input_schema"], "get_time": TIME["input_schema"]}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
USE_WEATHER = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                 "input": {"city": "Paris"}}]}


@pytest.fixture
def claude(live_server_url, loaded_model, make_user, client_for):
    """An anthropic client (x-api-key) for a user who may read, chat with and load models, on the live server.

    ``loaded_model`` also loads the model in this process, for runtime.count_tokens.
    """
    user = make_user("model_read", "chat", "model_load")
    key = client_for(user).raw_key
    client = anthropic.Anthropic(base_url=live_server_url, api_key=key, max_retries=0, timeout=120)
    client.user, client.key = user, key
    return client


def anthropic_error_of(body) -> dict:
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    return body["error"]


@live
def test_a_message_answers_with_usage_equal_to_the_prompts_token_count_and_is_stored(claude):
    reply = claude.messages.create(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=FRANCE)
    (block,) = reply.content
    assert block.type == "text" and "Paris" in block.text
    assert reply.id.startswith("msg_") and reply.type == "message" and reply.role == "assistant"
    assert reply.model == MODEL and reply.stop_reason in ("end_turn", "max_tokens") and reply.stop_sequence is None
    assert reply.usage.input_tokens == runtime.count_tokens(MODEL, FRANCE)

    session = ChatSession.objects.get(id=reply.model_extra["session_id"], owner=claude.user)
    assert list(session.messages.values_list("role", "content")) == [("user", FRANCE[0]["content"]),
                                                                    ("assistant", block.text)]
    record = UsageRecord.objects.get(user=claude.user)
    assert record.transport == "anthropic" and record.api_key_id == APIKey.objects.find(claude.key).pk
    assert (record.prompt_tokens, record.completion_tokens) == (reply.usage.input_tokens, reply.usage.output_tokens)


@live
def test_a_streamed_message_follows_anthropics_event_sequence_and_its_text_is_the_final_message(claude):
    with claude.messages.stream(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=FRANCE) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in "".join(pieces) and len(pieces) > 1
    assert [block.text for block in final.content] == ["".join(pieces)]
    assert final.usage.input_tokens == runtime.count_tokens(MODEL, FRANCE)
    assert final.usage.output_tokens == len(pieces)
    assert final.stop_reason in ("end_turn", "max_tokens")
    stored = ChatMessage.objects.get(role="assistant", session_id=final.model_extra["session_id"])
    assert stored.content == "".join(pieces)

    events = list(claude.messages.create(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=FRANCE, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert events[0].message.content == [] and events[0].message.usage.input_tokens == final.usage.input_tokens
    assert "".join(event.delta.text for event in events[2:-3]) == "".join(pieces)
    assert events[-2].usage.output_tokens == final.usage.output_tokens


@live
def test_the_system_prompt_reaches_the_template_as_a_system_message(claude):
    system = "You are a terse geography tutor."
    reply = claude.messages.create(model=MODEL, max_tokens=8, extra_body=GREEDY, messages=FRANCE,
                                   system=[{"type": "text", "text": system}])
    with_system = [{"role": "system", "content": system}, *FRANCE]
    # Without a system message SmolLM2's template adds its own, so the counts differ either way.
    assert reply.usage.input_tokens == runtime.count_tokens(MODEL, with_system) != runtime.count_tokens(MODEL, FRANCE)
    session = ChatSession.objects.get(id=reply.model_extra["session_id"])
    assert session.messages.first().role == "system" and session.messages.first().content == system


@live
def test_stop_sequences_and_max_tokens_give_their_stop_reasons(claude):
    stopped = claude.messages.create(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=FRANCE,
                                     stop_sequences=["Paris"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris"
    assert "Paris" not in stopped.content[0].text
    cut = claude.messages.create(model=MODEL, max_tokens=2, extra_body=GREEDY, messages=STORY)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2 and cut.stop_sequence is None
    with claude.messages.stream(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=FRANCE,
                                stop_sequences=["Paris"]) as stream:
        streamed = stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence) == ("stop_sequence", "Paris")


@live
def test_count_tokens_equals_the_prompt_the_model_would_get(claude):
    system = "Answer in one word."
    counted = claude.messages.count_tokens(model=MODEL, system=system, messages=FRANCE)
    assert counted.input_tokens == runtime.count_tokens(MODEL, [{"role": "system", "content": system}, *FRANCE])
    reply = claude.messages.create(model=MODEL, max_tokens=4, extra_body=GREEDY, system=system, messages=FRANCE)
    assert reply.usage.input_tokens == counted.input_tokens


@live
def test_the_key_is_accepted_as_x_api_key_and_as_bearer(claude, live_server_url):
    bearer = anthropic.Anthropic(base_url=live_server_url, api_key=None, auth_token=claude.key, max_retries=0)
    counted = bearer.messages.count_tokens(model=MODEL, messages=FRANCE)
    assert counted.input_tokens == claude.messages.count_tokens(model=MODEL, messages=FRANCE).input_tokens


@live
def test_errors_use_anthropics_shape_and_the_clients_exception_classes(claude, live_server_url, make_user,
                                                                        client_for):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=live_server_url, api_key="bai_nope_nope", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=FRANCE)
    assert anthropic_error_of(caught.value.body)["type"] == "authentication_error"

    reader = anthropic.Anthropic(base_url=live_server_url, api_key=client_for(make_user("model_read")).raw_key,
                                 max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        reader.messages.create(model=MODEL, max_tokens=4, messages=FRANCE)
    assert anthropic_error_of(caught.value.body)["type"] == "permission_error"

    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=FRANCE)
    assert anthropic_error_of(caught.value.body)["type"] == "not_found_error"

    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    error = anthropic_error_of(caught.value.body)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("messages.0.content.0.type: 'image' blocks are not supported")
    assert not UsageRecord.objects.filter(user=claude.user).exists()


# Tools -------------------------------------------------------------------------------------------

FORCE_WEATHER = {"type": "tool", "name": "get_weather"}


def assert_valid_use(block, name: str | None = None):
    assert block.type == "tool_use" and block.id.startswith("call_")
    assert name is None or block.name == name
    jsonschema.validate(block.input, SCHEMAS[block.name])


@live
def test_a_forced_tool_use_has_input_valid_against_its_input_schema_and_is_stored(claude):
    reply = claude.messages.create(model=MODEL, max_tokens=64, extra_body=GREEDY, messages=ASK, tools=[WEATHER, TIME],
                                   tool_choice=FORCE_WEATHER)
    assert reply.stop_reason == "tool_use"
    (block,) = reply.content
    assert_valid_use(block, "get_weather")
    stored = ChatMessage.objects.get(session_id=reply.model_extra["session_id"], role="assistant")
    assert stored.finish_reason == "tool_calls" and stored.content == ""
    (call,) = stored.tool_calls
    assert (call["id"], call["function"]["name"]) == (block.id, "get_weather")
    assert json.loads(call["function"]["arguments"]) == block.input


@live
def test_a_streamed_tool_use_sends_its_block_first_then_partial_json_that_concatenates_to_its_input(claude):
    with claude.messages.stream(model=MODEL, max_tokens=64, extra_body=GREEDY, messages=ASK, tools=[WEATHER, TIME],
                                tool_choice=FORCE_WEATHER) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [event.content_block for event in events if event.type == "content_block_start"]
    assert [(block.type, block.name, block.input) for block in starts] == [("tool_use", "get_weather", {})]
    pieces = [event.delta.partial_json for event in events
              if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
    assert len(pieces) > 1
    assert not [event for event in events if event.type == "content_block_delta" and event.delta.type == "text_delta"]
    (block,) = final.content
    assert block.id == starts[0].id and json.loads("".join(pieces)) == block.input
    assert_valid_use(block, "get_weather")
    assert final.stop_reason == "tool_use"
    stored = ChatMessage.objects.get(session_id=final.model_extra["session_id"], role="assistant")
    assert stored.tool_calls[0]["id"] == block.id and stored.tool_calls[0]["function"]["arguments"] == "".join(pieces)


@live
def test_tool_choice_any_uses_one_of_the_tools(claude):
    reply = claude.messages.create(model=MODEL, max_tokens=64, extra_body=GREEDY, messages=ASK, tools=[WEATHER, TIME],
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert reply.stop_reason == "tool_use"
    (block,) = [block for block in reply.content if block.type == "tool_use"]
    assert_valid_use(block)


@live
def test_a_tool_result_turn_is_answered_with_text_and_stored_as_tool_turns(claude):
    messages = [*ASK, USE_WEATHER, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny, 24 degrees."}]}]}]
    reply = claude.messages.create(model=MODEL, max_tokens=32, extra_body=GREEDY, messages=messages, tools=[WEATHER],
                                   tool_choice={"type": "none"})
    assert reply.stop_reason in ("end_turn", "max_tokens")
    (block,) = reply.content
    assert block.type == "text" and block.text
    rows = list(ChatMessage.objects.filter(session_id=reply.model_extra["session_id"]))
    assert [row.role for row in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1].tool_calls == [{"id": "toolu_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert (rows[2].tool_call_id, rows[2].content) == ("toolu_1", "Sunny, 24 degrees.")
    assert rows[3].content == block.text
    prompt = [ASK[0], {"role": "assistant", "content": "", "tool_calls": rows[1].tool_calls},
              {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny, 24 degrees."}]
    assert reply.usage.input_tokens == runtime.count_tokens(MODEL, prompt)


@live
def test_tool_results_sent_with_a_session_answer_the_tool_use_stored_in_it(claude):
    used = claude.messages.create(model=MODEL, max_tokens=64, extra_body=GREEDY, messages=ASK, tools=[WEATHER],
                                  tool_choice=FORCE_WEATHER)
    (block,) = used.content
    session = {"session_id": used.model_extra["session_id"]}
    answered = claude.messages.create(
        model=MODEL, max_tokens=16, extra_body={**GREEDY, **session}, tools=[WEATHER], tool_choice={"type": "none"},
        messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Rain."}]}])
    assert answered.content[0].type == "text"
    rows = list(ChatMessage.objects.filter(**session))
    assert [(row.role, row.tool_call_id) for row in rows] == [("user", ""), ("assistant", ""), ("tool", block.id),
                                                              ("assistant", "")]
    with pytest.raises(anthropic.BadRequestError) as caught:  # the session's last assistant turn made no calls
        claude.messages.create(model=MODEL, max_tokens=4, extra_body=session, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Rain."}]}])
    assert anthropic_error_of(caught.value.body)["message"].startswith("messages: ")
    assert ChatMessage.objects.filter(**session).count() == 4


@live
def test_count_tokens_with_tools_equals_the_prompt_of_a_reply_with_them(claude):
    counted = claude.messages.count_tokens(model=MODEL, messages=ASK, tools=[WEATHER, TIME])
    assert counted.input_tokens == runtime.count_tokens(MODEL, ASK, tools_to_openai([WEATHER, TIME]))
    assert counted.input_tokens > claude.messages.count_tokens(model=MODEL, messages=ASK).input_tokens + 50
    assert claude.messages.count_tokens(model=MODEL, messages=ASK, tools=[WEATHER],
                                        tool_choice={"type": "none"}).input_tokens == runtime.count_tokens(MODEL, ASK)
    with claude.messages.stream(model=MODEL, max_tokens=1, extra_body=GREEDY, messages=ASK,
                                tools=[WEATHER, TIME]) as stream:
        start = next(event for event in stream if event.type == "message_start")
        final = stream.get_final_message()
    assert start.message.usage.input_tokens == final.usage.input_tokens == counted.input_tokens


# In-process: the error shape and the authorization matrix ------------------------------------------

in_process = pytest.mark.django_db
MESSAGE = {"model": MODEL, "max_tokens": 4, "messages": FRANCE}
ROUTES = [("/v1/messages", MESSAGE), ("/v1/messages/count_tokens", {"model": MODEL, "messages": FRANCE})]


@in_process
@pytest.mark.parametrize("path,body", ROUTES)
def test_each_route_answers_401_403_and_200_in_anthropics_shape(anon, api_as, make_user, client_for, bundled_model,
                                                               path, body):
    unauthenticated = anon.post(path, body, format="json")
    assert unauthenticated.status_code == 401
    assert anthropic_error_of(unauthenticated.json())["type"] == "authentication_error"
    forbidden = api_as("model_read").post(path, body, format="json")
    assert forbidden.status_code == 403 and anthropic_error_of(forbidden.json())["type"] == "permission_error"
    keyed = client_for(make_user("chat", "model_load"))
    keyed.credentials(HTTP_X_API_KEY=keyed.raw_key, HTTP_ANTHROPIC_VERSION="2023-06-01")
    allowed = keyed.post(path, body, format="json")
    assert allowed.status_code == 200, allowed.content
    assert "success" not in allowed.json()


@in_process
@pytest.mark.parametrize(
    "body,path",
    [
        ({"model": MODEL, "messages": FRANCE}, "max_tokens"),
        ({"max_tokens": 4, "messages": FRANCE}, "model"),
        ({**MESSAGE, "messages": []}, "messages"),
        ({**MESSAGE, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({**MESSAGE, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({**MESSAGE, "messages": [*FRANCE, {"role": "user", "content": [{"type": "document", "source": {}}]}]},
         "messages.1.content.0.type"),
        ({**MESSAGE, "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "colour": 1}]}]},
         "messages.0.content.0.colour"),
        ({**MESSAGE, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                                                "input": {}}]}]}, "messages.0.content.0.type"),
        ({**MESSAGE, "messages": [*FRANCE, {"role": "assistant", "content": "Paris"}]}, "messages"),
        ({**MESSAGE, "max_tokens": 0}, "max_tokens"),
        ({**MESSAGE, "temperature": 1.5}, "temperature"),
        ({**MESSAGE, "top_p": 0}, "top_p"),
        ({**MESSAGE, "stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({**MESSAGE, "system": 5}, "system"),
        ({**MESSAGE, "tool_choice": {"type": "any"}}, "tool_choice"),
        ({**MESSAGE, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        ({**MESSAGE, "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {
            "x": {"type": "nonsense"}}}}]}, "tools.0.input_schema"),
        ({**MESSAGE, "tools": [{"name": "f", "input_schema": {"properties": {}}}]}, "tools.0.input_schema"),
        ({**MESSAGE, "tools": [{"name": "f", "input_schema": {"type": "object"}}] * 2}, "tools"),
        ({**MESSAGE, "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {
            "n": {"type": "integer", "minimum": 1}}}}], "tool_choice": {"type": "any"}}, "tools"),
        ({**MESSAGE, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                                "content": "18 C"}]}]},
         "messages.0.content.0.tool_use_id"),
        ({**MESSAGE, "messages": [*FRANCE, USE_WEATHER, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "18 C"}]}]}, "messages.2.content.0.tool_use_id"),
        ({**MESSAGE, "messages": [*FRANCE, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "../x y", "name": "f", "input": {}}]}, *FRANCE]}, "messages.1.content.0.id"),
        ({**MESSAGE, "messages": [*FRANCE, {"role": "assistant", "content": [USE_WEATHER["content"][0]] * 2},
                                  *FRANCE]}, "messages.1.content.1.id"),
        ({**MESSAGE, "colour": 1}, "colour"),
    ],
)
def test_bad_requests_answer_400_naming_the_field(api_as, bundled_model, body, path):
    response = api_as("chat", "model_load").post("/v1/messages", body, format="json")
    assert response.status_code == 400, response.content
    error = anthropic_error_of(response.json())
    assert error["type"] == "invalid_request_error" and error["message"].startswith(f"{path}: "), error
    assert not ChatMessage.objects.exists()


@in_process
def test_broken_json_is_a_400_in_anthropics_shape(api_as):
    response = api_as("chat").generic("POST", "/v1/messages", b"{", content_type="application/json")
    assert response.status_code == 400 and anthropic_error_of(response.json())["type"] == "invalid_request_error"


def test_errors_outside_drf_under_v1_messages_use_anthropics_shape():
    body = error_body_for_path("/v1/messages", None, status=413, code="PayloadTooLargeError", message="too large")
    assert body == {"type": "error", "error": {"type": "request_too_large", "message": "too large"}}
    assert error_body_for_path("/v1/messages/nope", None, status=404, code="NotFoundError",
                               message="x")["error"]["type"] == "not_found_error"
    assert "param" in error_body_for_path("/v1/messagesx", None, status=404, code="NotFoundError", message="x")["error"]


# Conversions (pure) --------------------------------------------------------------------------------

def test_tools_and_tool_choice_become_their_openai_forms():
    assert tools_to_openai([WEATHER]) == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["input_schema"]}}]
    assert tools_to_openai(None) is None
    assert [tool_choice_to_openai({"type": kind}) for kind in ("auto", "any", "none")] == ["auto", "required", "none"]
    assert tool_choice_to_openai({"type": "tool", "name": "get_weather"}) == {"name": "get_weather"}


def test_tool_use_and_tool_result_blocks_become_tool_calls_and_tool_messages():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"},
                                          {"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C",
                                      "is_error": False},
                                     {"type": "text", "text": "And so?"}]},
    ]
    assert messages_to_chat("Be brief.", history) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
        {"role": "user", "content": "And so?"},
    ]


def _message_for(events, *, think_tags=False, finish="stop", done_fields=None):
    """Feeds runner events through a ReplyBuilder and returns (stream events, final body)."""
    plan = SimpleNamespace(think_tags=think_tags, request_id="r1", dropped_turns=0, session=SimpleNamespace(id="s1"),
                           model=SimpleNamespace(name="m"))
    builder = ReplyBuilder(plan)
    message = AnthropicMessage(builder, input_tokens=5)
    out = message.events_for(*builder.start_event())
    for event in events:
        transport = builder.on_event(event) if isinstance(event, Event) else [event]
        for item in transport:
            out += message.events_for(*item)
    for event_type, payload in builder.on_event(Event(kind="done", stats=GenerationStats(5, 6, finish, 1.0, 10.0, 600.0))):
        if done_fields:
            payload.update(done_fields)
            builder.response_fields = lambda: {**payload}
        out += message.events_for(event_type, payload)
    return out, message.body()


def test_reasoning_streams_as_a_thinking_block_before_the_text():
    events, body = _message_for([Event(kind="delta", text=piece) for piece in
                                 ["<think>", "Let me", " think.", "</think>", "\n\nParis", "."]], think_tags=True)
    starts = [data["content_block"]["type"] for name, data in events if name == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking = "".join(d["delta"]["thinking"] for n, d in events if n == "content_block_delta"
                       and d["delta"]["type"] == "thinking_delta")
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "text_delta")
    assert (thinking, text) == ("Let me think.", "Paris.")
    assert body["content"] == [{"type": "thinking", "thinking": "Let me think.", "signature": ""},
                               {"type": "text", "text": "Paris."}]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]


def test_tool_call_events_become_tool_use_blocks_with_input_json_deltas():
    calls = [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    events, body = _message_for(
        [("tool_call", {"index": 0, "id": "call_abc", "name": "get_weather"}),
         ("tool_arguments", {"index": 0, "arguments": '{"city": '}),
         ("tool_arguments", {"index": 0, "arguments": '"Paris"}'})],
        finish="tool_calls", done_fields={"tool_calls": calls})
    (start,) = [data for name, data in events if name == "content_block_start"]
    assert start["content_block"] == {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {}}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert partial == '{"city": "Paris"}'
    assert [n for n, _ in events][-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert body["content"] == [{"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"city": "Paris"}}]
    assert body["stop_reason"] == "tool_use"


def test_an_empty_reply_still_has_one_empty_text_block_in_stream_and_body():
    events, body = _message_for([])
    assert [name for name, _ in events] == ["message_start", "ping", "content_block_start", "content_block_stop",
                                            "message_delta", "message_stop"]
    assert body["content"] == [{"type": "text", "text": ""}] and body["usage"] == {"input_tokens": 5, "output_tokens": 6}
