"""POST /inference/chat without streaming, on the bundled model with llama.cpp."""

from __future__ import annotations

import pytest

from inference_app.models import ChatMessage, ChatSession
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db

GREEDY = {"temperature": 0.0, "max_tokens": 24}


def chat(client, message, **extra):
    body = {"message": message, "generation_config": {**GREEDY, **extra.pop("generation_config", {})}, **extra}
    return client.post("/inference/chat", body, format="json")


def test_it_answers_paris_and_stores_both_turns(api_as, loaded_model):
    body = assert_ok(chat(api_as("chat"), "Name the capital city of France.", model_name=loaded_model.name))
    assert "Paris" in body["response"]
    assert body["data"] is None and body["model_name"] == loaded_model.name
    stats = body["generation_stats"]
    assert stats["tokens_generated"] > 0 and stats["prompt_tokens"] > 0
    assert stats["finish_reason"] in ("stop", "length")
    assert stats["tokens_per_second"] > 0 and stats["inference_time_ms"] > 0
    assert stats["time_to_first_token_ms"] <= stats["inference_time_ms"]
    session = ChatSession.objects.get(id=body["session_id"])
    roles = list(session.messages.values_list("role", "content"))
    assert roles == [("user", "Name the capital city of France."), ("assistant", body["response"])]


def test_it_uses_the_default_model_when_none_is_named(api_as, loaded_model):
    assert assert_ok(chat(api_as("chat"), "Name the capital city of France."))["model_name"] == loaded_model.name


def test_a_follow_up_in_the_same_session_sees_the_first_turn(api_as, loaded_model):
    client = api_as("chat")
    first = assert_ok(chat(client, "Remember this code word: PINEAPPLE."))
    follow = assert_ok(chat(client, "What is the code word?", session_id=first["session_id"]))
    assert "PINEAPPLE" in follow["response"].upper()
    fresh = assert_ok(chat(client, "What is the code word?"))
    assert "PINEAPPLE" not in fresh["response"].upper()


def test_chat_history_seeds_a_new_session(api_as, loaded_model):
    history = [{"role": "user", "content": "Remember this code word: PINEAPPLE."},
               {"role": "assistant", "content": "I will remember the code word PINEAPPLE."}]
    body = assert_ok(chat(api_as("chat"), "What is the code word?", chat_history=history))
    assert "PINEAPPLE" in body["response"].upper()
    assert ChatMessage.objects.filter(session_id=body["session_id"]).count() == 4


def test_another_users_session_answers_404(api_as, loaded_model):
    mine = assert_ok(chat(api_as("chat"), "Hello"))
    assert_error(chat(api_as("chat"), "Hello again", session_id=mine["session_id"]), 404, "NotFoundError")


def test_a_model_that_is_not_loaded_loads_on_demand_with_model_load(api_as, bundled_model):
    from models_app import runtime

    runtime.unload(bundled_model.name)
    assert_error(chat(api_as("chat"), "Hi"), 409, "ConflictError")
    assert_ok(chat(api_as("chat", "model_load"), "Hi"))
    assert runtime.status(bundled_model.name)["status"] == "loaded"


def test_the_chat_object_permission_covers_one_model(make_user, client_for, grant, loaded_model):
    from models_app import services

    other = services.registry_add(name="other", config={"model_id": "org/other", "engine": "transformers"})
    user = make_user()
    grant(user, "chat", loaded_model)
    client = client_for(user)
    assert_ok(chat(client, "Hi", model_name=loaded_model.name))
    assert_error(chat(client, "Hi", model_name=other.name), 404, "ModelNotFoundError")


def test_a_default_model_the_caller_may_not_see_is_not_named(make_user, client_for, grant, registry):
    user = make_user()
    grant(user, "chat", registry["beta"])  # alpha is the default
    response = chat(client_for(user), "Hi")
    assert assert_error(response, 404, "ModelNotFoundError")["error_message"] == (
        "No model_name given and no default model is available.")
    assert "alpha" not in response.content.decode()
    assert not ChatSession.objects.exists()


def test_chat_needs_authentication_and_the_chat_permission(anon, api_as, loaded_model):
    assert_error(chat(anon, "Hi"), 401, "AuthenticationError")
    assert_error(chat(api_as("model_read"), "Hi"), 403, "PermissionDeniedError")


@pytest.mark.parametrize(
    "config,field",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"stop": "x"}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"colour": 1}, "colour"),
    ],
)
def test_it_refuses_bad_generation_config_naming_the_field(api_as, loaded_model, config, field):
    before = ChatMessage.objects.count()
    body = {"message": "Hi", "generation_config": config}
    error = assert_error(api_as("chat").post("/inference/chat", body, format="json"), 400, "ValidationError")
    assert field in error["error_message"]
    assert ChatMessage.objects.count() == before


@pytest.mark.parametrize("raw", [b'{"message": "Hi", "generation_config": {"temperature": NaN}}',
                                 b'{"message": "Hi", "generation_config": {"temperature": Infinity}}'])
def test_nan_and_infinity_are_refused(api_as, loaded_model, raw):
    response = api_as("chat").generic("POST", "/inference/chat", raw, content_type="application/json")
    assert_error(response, 400, "ValidationError")


@pytest.mark.parametrize("body", [{"message": ""}, {"message": "   "}, {}, {"message": 5},
                                  {"message": "x", "session_id": "not-a-uuid"},
                                  {"message": "x", "chat_history": [{"role": "robot", "content": "x"}]}])
def test_it_refuses_bad_chat_requests(api_as, loaded_model, body):
    assert_error(api_as("chat").post("/inference/chat", body, format="json"), 400, "ValidationError")


def test_max_tokens_is_capped_by_the_entry(api_as, loaded_model):
    loaded_model.max_new_tokens = 5
    loaded_model.save()
    body = assert_ok(chat(api_as("chat"), "Tell me a long story about the sea.", generation_config={"max_tokens": 500}))
    assert body["generation_stats"]["tokens_generated"] <= 5
    assert body["generation_stats"]["finish_reason"] == "length"


@pytest.fixture
def runner_counts(monkeypatch):
    """The count_tokens calls the web process makes to the model's runner during the test."""
    from models_app import runtime

    manager = runtime.get_manager()
    calls = []
    count = manager.count_tokens

    def counted(name, messages, tools=None):
        calls.append(len(messages))
        return count(name, messages, tools)

    monkeypatch.setattr(manager, "count_tokens", counted)
    return calls


def test_old_turns_are_dropped_when_the_context_is_full(api_as, loaded_model, runner_counts):
    filler = "The quick brown fox jumps over the lazy dog. " * 30  # about 300 tokens per turn
    history = []
    for i in range(4):
        history += [{"role": "user", "content": f"{i} {filler}"}, {"role": "assistant", "content": "Noted."}]
    history.insert(0, {"role": "system", "content": "You are terse."})
    body = assert_ok(chat(api_as("chat"), "Say hi.", chat_history=history))
    assert body["generation_stats"]["dropped_turns"] > 0
    assert runner_counts  # near the window the bound cannot tell: the runner counted


def test_a_chat_far_inside_the_window_starts_without_a_count_round_trip(api_as, loaded_model, runner_counts):
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "مرحبا"},
               {"role": "assistant", "content": "أهلا"}]
    body = assert_ok(chat(api_as("chat"), "Say hi.", chat_history=history))
    assert body["generation_stats"]["dropped_turns"] == 0 and body["generation_stats"]["prompt_tokens"] > 0
    assert runner_counts == []


def test_a_message_longer_than_the_window_is_refused_but_nothing_is_half_stored(api_as, loaded_model):
    before = ChatSession.objects.count()
    error = assert_error(chat(api_as("chat"), "word " * 3000), 400, "ValidationError")
    assert "context window" in error["error_message"]
    assert ChatSession.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_the_user_message_survives_a_runner_crash(api_as, loaded_model):
    import os
    import signal
    import threading
    import time

    from models_app import runtime

    client = api_as("chat")
    result = {}

    def ask():
        from django.db import connection

        try:
            result["response"] = chat(client, "Write a long poem about the ocean.", generation_config={"max_tokens": 400})
        finally:
            connection.close()

    asking = threading.Thread(target=ask)
    asking.start()
    deadline = time.monotonic() + 30
    while runtime.status(loaded_model.name)["active_requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # let a few tokens out
    os.kill(runtime.status(loaded_model.name)["pid"], signal.SIGKILL)
    asking.join()
    response = result["response"]
    assert_error(response, 500, "SystemError")
    session = ChatSession.objects.get(id=response.json()["error_details"]["session_id"])
    user, assistant = session.messages.all()
    assert user.content == "Write a long poem about the ocean."
    assert assistant.finish_reason == "error"
    runtime.load(loaded_model)  # leave a working runner for the next tests


def test_the_per_user_chat_rate_limit_answers_429_with_retry_after(make_user, client_for, loaded_model, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"chat": "2/minute"})
    user = make_user("chat")
    cache.delete(f"throttle_chat_{user.pk}")  # user ids restart with each test database; the cache may not
    client = client_for(user)
    assert_ok(chat(client, "Hi", generation_config={"max_tokens": 2}))
    assert_ok(chat(client, "Hi", generation_config={"max_tokens": 2}))
    response = chat(client, "Hi", generation_config={"max_tokens": 2})
    assert_error(response, 429, "RateLimitError")
    assert int(response["Retry-After"]) > 0


def test_a_full_queue_answers_429_at_once_and_stores_nothing(api_as, loaded_model):
    from models_app import runtime
    from models_app.serving.engines.contract import GenerationParams

    loaded_model.parameters = {**loaded_model.parameters, "max_queue": 0}
    loaded_model.save()
    busy = runtime.generate(loaded_model, [{"role": "user", "content": "Write a long story."}],
                            GenerationParams(max_tokens=200, temperature=0))
    try:
        before = (ChatSession.objects.count(), ChatMessage.objects.count())
        error = assert_error(chat(api_as("chat"), "Hi"), 429, "RateLimitError")
        assert error["error_details"]["max_queue"] == 0
        assert (ChatSession.objects.count(), ChatMessage.objects.count()) == before
    finally:
        busy.cancel()
        list(busy)


@pytest.mark.slow
def test_a_conversation_the_chat_template_refuses_answers_400_with_its_message_at_once(
        api_as, settings, strict_template_dir):
    import time

    from models_app import runtime, services

    settings.MODEL_ROOTS = [strict_template_dir.parent]
    model = services.registry_add(name="strict", config={"model_id": str(strict_template_dir),
                                                         "engine": "transformers", "dtype": "float32"})
    runtime.load(model)
    try:
        client = api_as("chat")
        started = time.monotonic()
        response = chat(client, "Hello again", model_name="strict",
                        chat_history=[{"role": "user", "content": "Hello"}])
        elapsed = time.monotonic() - started
    finally:
        runtime.unload("strict")
    body = assert_error(response, 400, "ValidationError")
    assert "Conversation roles must alternate" in body["error_message"]
    assert elapsed < 2.0  # not the runner call's 60 s timeout
    assert not ChatSession.objects.exists() and not ChatMessage.objects.exists()
