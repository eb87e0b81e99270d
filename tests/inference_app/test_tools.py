"""Tool calling on /v1/chat/completions: the official openai client against the live server, the
bundled model, and the refusals of bad tool requests."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from inference_app.models import ChatMessage
from models_app import runtime
from tests.envelope import assert_ok

MODEL = "smollm2-135m-instruct"
live = pytest.mark.django_db(transaction=True)

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}},
                   "required": ["timezone"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone.",
                                      "parameters": TIME_PARAMETERS}},
]
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def oai(live_server_url, loaded_model, make_user, client_for):
    user = make_user("model_read", "chat", "model_load")
    key = client_for(user).raw_key
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=key, max_retries=0, timeout=120)
    client.user = user
    return client


def assert_valid_call(call, name: str | None = None):
    assert call.type == "function" and call.id.startswith("call_")
    assert name is None or call.function.name == name
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


@live
def test_a_forced_tool_call_has_schema_valid_arguments(oai):
    reply = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCE_WEATHER,
                                        temperature=0, max_tokens=64)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    assert_valid_call(choice.message.tool_calls[0], "get_weather")
    stored = ChatMessage.objects.get(session_id=reply.model_extra["session_id"], role="assistant")
    assert stored.finish_reason == "tool_calls"
    assert stored.tool_calls == [choice.message.tool_calls[0].model_dump()]


@live
def test_a_streamed_forced_call_sends_the_name_first_then_the_arguments_in_pieces(oai):
    stream = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCE_WEATHER,
                                         temperature=0, max_tokens=64, stream=True)
    pieces, first, finish = [], None, None
    for chunk in stream:
        choice = chunk.choices[0] if chunk.choices else None
        if choice is None:
            continue
        for delta in choice.delta.tool_calls or []:
            assert delta.index == 0
            if first is None:
                first = delta
                assert delta.id.startswith("call_") and delta.function.name == "get_weather"
                assert delta.function.arguments == ""
            else:
                assert delta.id is None and delta.function.name is None
                pieces.append(delta.function.arguments)
        assert not choice.delta.content
        finish = choice.finish_reason or finish
    assert first is not None and finish == "tool_calls"
    assert len(pieces) > 1
    arguments = "".join(pieces)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    stored = ChatMessage.objects.filter(role="assistant").latest("created_at")
    assert stored.tool_calls[0]["id"] == first.id and stored.tool_calls[0]["function"]["arguments"] == arguments


@live
def test_tool_choice_required_calls_one_of_the_tools(oai):
    reply = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False, temperature=0, max_tokens=64)
    assert reply.choices[0].finish_reason == "tool_calls"
    (call,) = reply.choices[0].message.tool_calls
    assert_valid_call(call)


@live
def test_a_forced_call_of_a_function_whose_parameters_use_defs_matches_them(oai):
    parameters = {"type": "object", "properties": {"place": {"$ref": "#/$defs/place"}}, "required": ["place"],
                  "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                                      "required": ["city"]}}}
    tools = [{"type": "function", "function": {"name": "locate", "parameters": parameters}}]
    reply = oai.chat.completions.create(model=MODEL, messages=ASK, tools=tools, temperature=0, max_tokens=64,
                                        tool_choice={"type": "function", "function": {"name": "locate"}})
    (call,) = reply.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), parameters)


@live
def test_a_tool_result_turn_is_answered_with_content_and_stored_in_the_session(oai):
    call = {"id": "call_abc123", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_abc123", "content": "Sunny, 24 degrees."}]
    reply = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                        temperature=0, max_tokens=32)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    session_id = reply.model_extra["session_id"]
    rows = list(ChatMessage.objects.filter(session_id=session_id))
    assert [row.role for row in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1].tool_calls == [call] and rows[1].content == ""
    assert rows[2].tool_call_id == "call_abc123" and rows[2].content == "Sunny, 24 degrees."
    assert rows[3].content == reply.choices[0].message.content
    # The stored tool turns come back into the prompt of the session's next request.
    follow = oai.chat.completions.create(model=MODEL, temperature=0, max_tokens=8, extra_body={"session_id": session_id},
                                         messages=[{"role": "user", "content": "Thanks. And tomorrow?"}])
    prompt = [{"role": r.role, "content": r.content, **({"tool_calls": r.tool_calls} if r.tool_calls else {}),
               **({"tool_call_id": r.tool_call_id} if r.role == "tool" else {})} for r in rows]
    prompt.append({"role": "user", "content": "Thanks. And tomorrow?"})
    assert follow.usage.prompt_tokens == runtime.count_tokens(MODEL, prompt)
    assert follow.usage.prompt_tokens > runtime.count_tokens(MODEL, [prompt[0], prompt[-1]]) + 20


@live
def test_tool_results_with_a_session_answer_the_calls_stored_in_it(oai):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"timezone": "UTC"}'}}
    first = oai.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=8, tools=TOOLS, tool_choice="none",
        messages=[{"role": "user", "content": "What time is it?"}, {"role": "assistant", "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}])
    session_id = first.model_extra["session_id"]
    with pytest.raises(openai.BadRequestError) as caught:  # the last assistant turn made no calls
        oai.chat.completions.create(model=MODEL, max_tokens=8, extra_body={"session_id": session_id},
                                    messages=[{"role": "tool", "tool_call_id": "call_1", "content": "12:01"}])
    assert caught.value.body["param"] == "messages"
    assert ChatMessage.objects.filter(session_id=session_id).count() == 4


@live
def test_the_template_is_told_of_the_tools_only_when_tool_choice_is_not_none(oai):
    with_tools = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=1)
    without = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=1)
    assert without.usage.prompt_tokens == runtime.count_tokens(MODEL, ASK)
    assert with_tools.usage.prompt_tokens == runtime.count_tokens(MODEL, ASK, TOOLS) > without.usage.prompt_tokens + 50


# Refusals ---------------------------------------------------------------------------------------

in_process = pytest.mark.django_db
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
USER = {"role": "user", "content": "Hi"}


@in_process
@pytest.mark.parametrize(
    "extra,param",
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather", "x": 1}}},
         "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
            "x": {"type": "nonsense"}}}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$schema": [1]}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$schema": 5}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"pattern": "["}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]},
         "tools"),
        ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": f"f{i}", "description": "x" * 700}}
                    for i in range(100)]}, "tools"),  # 70 KB in all
        ({"tools": [{"type": "code_interpreter"}]}, "tools"),
        ({"tools": [None, None]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}], "tool_choice": "required"},
         "tools"),  # a keyword the engines cannot enforce, in a forced call
        ({"parallel_tool_calls": "yes", "tools": TOOLS}, "parallel_tool_calls"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages"),
        ({"messages": [{"role": "user", "content": None}]}, "messages"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": [CALL]},
                       {"role": "tool", "content": "x"}]}, "messages"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": [CALL]},
                       {"role": "tool", "tool_call_id": "call_2", "content": "x"}]}, "messages"),
        ({"messages": [USER, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]}, "messages"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": [
            {**CALL, "function": {"name": "get_weather", "arguments": "not json"}}]}, USER]}, "messages"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": [{**CALL, "id": "../x y"}]}, USER]}, "messages"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": [CALL, CALL]}, USER]}, "messages"),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_field(api_as, bundled_model, extra, param):
    body = {"model": MODEL, "messages": [USER], **extra}
    response = api_as("chat", "model_load").post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param, response.json()
    assert not ChatMessage.objects.exists()


@in_process
def test_a_remote_openai_model_refuses_tools(api_as):
    from models_app import services

    services.registry_add(name="remote", config={"model_id": "remote", "engine": "openai",
                                                 "parameters": {"base_url": "http://127.0.0.1:9"}})
    response = api_as("chat", "model_load").post(
        "/v1/chat/completions", {"model": "remote", "messages": [USER], "tools": TOOLS}, format="json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"


@in_process
def test_the_registry_refuses_an_unknown_tool_parser(api_as):
    response = api_as("model_write").post("/models/", {"model_name": "x", "model_config": {
        "model_id": "org/x", "engine": "transformers", "parameters": {"tool_parser": "xml"}}}, format="json")
    assert response.status_code == 400 and "tool_parser" in response.json()["error_message"]


# Session files ----------------------------------------------------------------------------------

@in_process
def test_session_files_carry_tool_calls_and_tool_results_both_ways(make_user, client_for, settings, tmp_path):
    from inference_app.models import ChatSession

    settings.DATA_DIR = tmp_path
    user = make_user("session_save", "session_load")
    client = client_for(user)
    session = ChatSession.objects.create(owner=user, model_name=MODEL, title="tools")
    call = {"id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": '{"timezone": "UTC"}'}}
    ChatMessage.objects.create(session=session, role="user", content="Time?")
    ChatMessage.objects.create(session=session, role="assistant", content="", tool_calls=[call],
                               finish_reason="tool_calls")
    ChatMessage.objects.create(session=session, role="tool", content="12:00", tool_call_id="call_9")
    saved = client.post("/inference/sessions/save", {"session_id": str(session.id), "output_file": "t"}, format="json")
    assert_ok(saved)
    document = json.loads((tmp_path / "sessions" / str(user.pk) / "t.json").read_text())
    assert document["messages"][1]["tool_calls"] == [call] and document["messages"][2]["tool_call_id"] == "call_9"
    session.delete()
    loaded = client.post("/inference/sessions/load", {"input_file": "t"}, format="json")
    assert_ok(loaded)
    rows = list(ChatMessage.objects.filter(session__owner=user))
    assert [(r.role, r.tool_calls, r.tool_call_id) for r in rows] == [
        ("user", [], ""), ("assistant", [call], ""), ("tool", [], "call_9")]


@in_process
@pytest.mark.parametrize("message", [
    {"role": "user", "content": "x", "tool_calls": [CALL]},
    {"role": "tool", "content": "x"},
    {"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]},
    {"role": "user", "content": "x", "tool_call_id": "call_1"},
])
def test_session_files_with_broken_tool_turns_are_refused(make_user, client_for, settings, tmp_path, message):
    settings.DATA_DIR = tmp_path
    client = client_for(make_user("session_save"))
    response = client.post("/inference/sessions/save", {"session_data": {"messages": [message]}, "output_file": "t"},
                           format="json")
    assert response.status_code == 400 and "session_data" in response.json()["error_message"]
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").rglob("*.json"))


def test_a_models_tool_parser_parameter_overrides_what_its_template_shows():
    from types import SimpleNamespace

    # No runner is asked: the parameter decides (the model need not even be loaded).
    assert runtime.tool_call_format(SimpleNamespace(name="not-loaded", parameters={"tool_parser": "mistral"})) == "mistral"
