"""/v1: the official openai client against the live server, and OpenAI's error shape."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import openai
import pytest

from accounts.models import APIKey
from inference_app.models import ChatMessage, ChatSession, UsageRecord
from inference_app.openai_api import Completion
from inference_app.services import ReplyBuilder
from models_app import runtime
from models_app.serving.engines.contract import GenerationStats
from models_app.serving.handle import Event

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "Name the capital city of France."}]
live = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def completion_tokens():
    """The bundled model's own tokenizer, counting a reply as the engine counts it."""
    from llama_cpp import Llama

    from models_app.serving.engines.bundled import bundled_gguf_path

    vocab = Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)
    return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))


@pytest.fixture
def oai(live_server_url, loaded_model, make_user, client_for):
    """An openai client for a user who may read, chat with and load models, on the live server.

    ``loaded_model`` also loads the model in this process, for runtime.count_tokens.
    """
    user = make_user("model_read", "chat", "model_load")
    key = client_for(user).raw_key
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=key, max_retries=0, timeout=120)
    client.user = user
    client.key = key
    return client


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@live
def test_the_client_lists_and_retrieves_the_models_it_may_read(oai, make_user, client_for, grant, live_server_url):
    from models_app import services

    assert MODEL in [model.id for model in oai.models.list()]
    assert oai.models.retrieve(MODEL).id == MODEL
    hidden = services.registry_add(name="hidden", config={"model_id": "org/hidden", "engine": "transformers"})
    user = make_user()
    grant(user, "model_read", hidden)
    narrow = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=client_for(user).raw_key, max_retries=0)
    assert [model.id for model in narrow.models.list()] == ["hidden"]
    with pytest.raises(openai.NotFoundError):
        narrow.models.retrieve(MODEL)


@live
def test_a_chat_completion_answers_with_usage_equal_to_the_token_counts(oai, completion_tokens):
    reply = oai.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=24)
    answer = reply.choices[0].message.content
    assert "Paris" in answer and reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == runtime.count_tokens(MODEL, FRANCE)
    assert reply.usage.completion_tokens == completion_tokens(answer)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    session = ChatSession.objects.get(id=reply.model_extra["session_id"], owner=oai.user)
    assert list(session.messages.values_list("role", "content")) == [("user", FRANCE[0]["content"]),
                                                                    ("assistant", answer)]
    record = UsageRecord.objects.get(user=oai.user)
    assert record.transport == "openai" and record.api_key_id == APIKey.objects.find(oai.key).pk
    assert (record.prompt_tokens, record.completion_tokens) == (reply.usage.prompt_tokens,
                                                                reply.usage.completion_tokens)


@live
def test_a_streamed_chat_completion_sends_one_chunk_per_token_and_usage_last(oai, completion_tokens):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=24,
                                              stream=True, stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    answer = "".join(pieces)
    assert "Paris" in answer
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens == runtime.count_tokens(MODEL, FRANCE)
    assert usage.completion_tokens == len(pieces) == completion_tokens(answer)
    (session_id,) = {chunk.model_extra["session_id"] for chunk in chunks}
    assert ChatMessage.objects.get(role="assistant", session_id=session_id, session__owner=oai.user).content == answer
    assert UsageRecord.objects.get(user=oai.user).completion_tokens == usage.completion_tokens


@live
def test_generation_options_are_applied(oai):
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    cut = oai.chat.completions.create(model=MODEL, messages=story, temperature=0, max_completion_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    legacy = oai.chat.completions.create(model=MODEL, messages=story, temperature=0, max_tokens=2)
    assert legacy.usage.completion_tokens == 2
    stopped = oai.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=24, stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"
    sampled = [oai.chat.completions.create(model=MODEL, messages=story, temperature=1.2, top_p=0.95, seed=7,
                                           max_tokens=16).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


@live
def test_a_text_completion_sends_the_prompt_as_one_user_message(oai, completion_tokens):
    prompt = "What is the capital of Japan?"
    reply = oai.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=24)
    assert reply.object == "text_completion" and "Tokyo" in reply.choices[0].text
    assert reply.usage.prompt_tokens == runtime.count_tokens(MODEL, [{"role": "user", "content": prompt}])
    assert reply.usage.completion_tokens == completion_tokens(reply.choices[0].text)
    streamed = list(oai.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=24, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


@live
def test_the_session_id_extension_continues_a_stored_session(oai):
    first = oai.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "Remember this code word: PINEAPPLE."}])
    session_id = first.model_extra["session_id"]
    follow = oai.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24, extra_body={"session_id": session_id},
        messages=[{"role": "user", "content": "What is the code word?"}])
    assert follow.model_extra["session_id"] == session_id
    assert ChatMessage.objects.filter(session_id=session_id).count() == 4
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=MODEL, extra_body={"session_id": session_id},
                                    messages=[*FRANCE, {"role": "assistant", "content": "Paris"}, *FRANCE])
    assert caught.value.body["param"] == "messages"


@live
def test_errors_use_openais_shape_on_the_live_server(oai, live_server_url):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=MODEL, messages=FRANCE, temperature=5)
    assert caught.value.body["param"] == "temperature" and caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_server_url}/v1", api_key="bai_nope_nope", max_retries=0).models.list()
    response = httpx.post(f"{live_server_url}/v1/chat/completions", json={"model": MODEL, "messages": FRANCE,
                                                                           "colour": 1},
                          headers={"Authorization": f"Bearer {oai.key}"})
    assert response.status_code == 400 and error_of(response)["param"] == "colour"


# In-process: the error shape and the authorization matrix ------------------------------------------

in_process = pytest.mark.django_db

ROUTES = [
    ("get", "/v1/models", None, "model_read"),
    ("get", f"/v1/models/{MODEL}", None, "model_read"),
    ("post", "/v1/chat/completions", {"model": MODEL, "messages": FRANCE, "max_tokens": 4}, "chat"),
    ("post", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 4}, "chat"),
]


@in_process
@pytest.mark.parametrize("method,path,body,permission", ROUTES)
def test_each_route_answers_401_403_and_200_in_openais_shape(anon, api_as, bundled_model, method, path, body,
                                                            permission):
    call = lambda client: getattr(client, method)(path, body, format="json")  # noqa: E731
    unauthenticated = call(anon)
    assert unauthenticated.status_code == 401
    assert error_of(unauthenticated)["type"] == "authentication_error"
    other = "chat" if permission == "model_read" else "model_read"
    forbidden = call(api_as(other))
    assert forbidden.status_code == 403 and error_of(forbidden)["type"] == "permission_error"
    allowed = call(api_as(permission, "model_load"))
    assert allowed.status_code == 200, allowed.content
    assert "success" not in allowed.json()


@in_process
@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": FRANCE}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ({"model": MODEL, "messages": FRANCE, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": FRANCE, "max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"model": MODEL, "messages": FRANCE, "top_p": 0}, "top_p"),
        ({"model": MODEL, "messages": FRANCE, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": FRANCE, "n": 2}, "n"),
        ({"model": MODEL, "messages": FRANCE, "seed": -1}, "seed"),
        ({"model": MODEL, "messages": FRANCE, "logprobs": True}, "logprobs"),
    ],
)
def test_bad_requests_name_the_parameter(api_as, body, param):
    response = api_as("chat").post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400
    assert error_of(response)["param"] == param


@in_process
def test_broken_json_is_a_400_in_openais_shape(api_as):
    response = api_as("chat").generic("POST", "/v1/chat/completions", b"{", content_type="application/json")
    assert response.status_code == 400 and error_of(response)["type"] == "invalid_request_error"


def test_reasoning_models_answer_reasoning_content_apart_from_the_answer():
    plan = SimpleNamespace(think_tags=True, request_id="r1", dropped_turns=0, session=SimpleNamespace(id="s1"),
                           model=SimpleNamespace(name="m"))
    builder = ReplyBuilder(plan)
    completion = Completion(builder, kind="chat", include_usage=True)
    chunks = completion.chunks_for(*builder.start_event())
    for delta in ["<think>", "Let me", " think.", "</think>", "\n\nParis", "."]:
        for event in builder.on_event(Event(kind="delta", text=delta)):
            chunks += completion.chunks_for(*event)
    for event in builder.on_event(Event(kind="done", stats=GenerationStats(5, 6, "stop", 1.0, 10.0, 600.0))):
        chunks += completion.chunks_for(*event)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert "".join(d.get("content", "") for d in deltas) == "Paris."
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    message = completion.body()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Paris.", "reasoning_content": "Let me think."}
