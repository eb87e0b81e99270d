"""The chat service's order of work: submit to the runner, then store the user's turn."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import IntegrityError

from beautyai_site.api import errors
from inference_app import services
from models_app import runtime as model_runtime
from inference_app.models import ChatMessage, ChatSession, UsageRecord
from models_app.serving.handle import Event
from models_app.serving.protocol import ErrorCode


def _prepare(user, model, **data):
    return services.chat_prepare(user=user, data={"message": "Write a long story about a lighthouse keeper.",
                                                  "model_name": model.name,
                                                  "generation_config": {"temperature": 0.0, "max_tokens": 64},
                                                  **data})


def _final(handle):
    events = list(handle)
    return events[-1]


@pytest.mark.django_db
def test_preparing_stores_nothing_and_starting_stores_the_new_session_and_turn(make_user, loaded_model):
    user = make_user(superuser=True)
    plan = _prepare(user, loaded_model)
    assert not ChatSession.objects.filter(owner=user).exists()
    handle = services.chat_start(plan)
    # Committed when chat_start returns, before a single event was read.
    session = ChatSession.objects.get(owner=user)
    assert session.id == plan.session.id
    assert list(session.messages.values_list("role", flat=True)) == ["user"]
    assert _final(handle).kind == "done"


@pytest.mark.django_db(transaction=True)
def test_a_failed_write_cancels_the_generation_it_started(make_user, loaded_model, monkeypatch):
    user = make_user(superuser=True)
    session = ChatSession.objects.create(owner=user, model=loaded_model, model_name=loaded_model.name)
    plan = _prepare(user, loaded_model, session_id=session.id)
    ChatSession.objects.filter(pk=session.pk).delete()  # the user's turn now has no session to go to

    captured = []
    real_generate = model_runtime.generate

    def generate(*args, **kwargs):
        captured.append(real_generate(*args, **kwargs))
        return captured[-1]

    monkeypatch.setattr(model_runtime, "generate", generate)  # a spy: the real runner still generates
    with pytest.raises(IntegrityError):
        services.chat_start(plan)
    final = _final(captured[0])
    assert final.kind == "done" and final.stats.finish_reason == "cancelled"
    assert not ChatMessage.objects.filter(session_id=session.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_stream_dropped_before_its_first_byte_cancels_its_generation_and_stores_the_reply(
        make_user, loaded_model):
    import gc
    import time

    from inference_app import active, streaming

    user = make_user(superuser=True)
    plan = _prepare(user, loaded_model, generation_config={"temperature": 0.0, "max_tokens": 400})
    handle = services.chat_start(plan)
    active.register(plan.request_id, user.pk, handle)
    # What Django does when the client leaves before the response starts: the body never runs.
    response = streaming.sse_response(services.ReplyBuilder(plan), handle)
    del response
    gc.collect()
    deadline = time.monotonic() + 20
    reply = None
    while reply is None and time.monotonic() < deadline:
        reply = ChatMessage.objects.filter(session_id=plan.session.id, role="assistant").first()
        time.sleep(0.05)
    assert reply is not None and reply.finish_reason == "cancelled"
    assert reply.completion_tokens < 200
    assert handle.finished and not active.cancel(plan.request_id, user.pk)


HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.django_db
@pytest.mark.parametrize("path,body", [
    ("/inference/chat", {"message": "Hi"}),
    ("/v1/chat/completions", {"messages": HI}),
    ("/v1/messages", {"max_tokens": 4, "messages": HI}),
    ("/inference/test", {"prompt": "Hi"}),
    ("/inference/benchmark", {"benchmark_type": "latency"}),
])
def test_every_generating_route_answers_503_while_the_server_restarts_and_stores_nothing(
        api_as, bundled_model, path, body):
    from inference_app.models import BenchmarkRun, UsageRecord

    field = "model" if path.startswith("/v1/") else "model_name"
    model_runtime.set_accepting_generations(False)
    try:
        response = api_as(superuser=True).post(path, {**body, field: bundled_model.name}, format="json")
    finally:
        model_runtime.set_accepting_generations(True)
    assert response.status_code == 503, response.content
    assert not (ChatSession.objects.exists() or UsageRecord.objects.exists() or BenchmarkRun.objects.exists())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_opened_chat_is_cancellable_until_it_has_run_to_its_end_and_stored_its_reply(make_user, loaded_model):
    from inference_app import active

    user, other = make_user(superuser=True), make_user(superuser=True)
    run = services.chat_open(user=user, data={"message": "Name the capital city of France.", "model_name":
                                              loaded_model.name, "generation_config": {"max_tokens": 8}},
                             transport="rest")
    assert not active.cancel(run.plan.request_id, other.pk)  # another user's id is unknown to them
    assert run.run_to_end() is run.builder and run.handle.finished
    assert not active.cancel(run.plan.request_id, user.pk)
    reply = ChatMessage.objects.get(session_id=run.plan.session.id, role="assistant")
    assert reply.content == run.builder.texts()[1] and reply.finish_reason in ("stop", "length")


UNLOADED = Event(kind="error", message="cancelled: model unloaded", code=ErrorCode.CANCELLED)


def _builder(session):
    plan = SimpleNamespace(think_tags=False, request_id="r1", dropped_turns=0, session=session,
                           model=SimpleNamespace(name="m"))
    builder = services.ReplyBuilder(plan)
    builder.on_event(Event(kind="delta", text="Par"))
    return builder


def test_a_chat_cut_short_by_an_unload_keeps_its_partial_reply_as_cancelled():
    builder = _builder(SimpleNamespace(id="s1"))
    assert builder.on_event(UNLOADED)[-1][0] == "done"
    assert builder.error is None and builder.finish_reason == "cancelled" and builder.texts()[1] == "Par"


@pytest.mark.django_db
def test_a_model_test_or_benchmark_run_cut_short_by_an_unload_is_a_failure_that_records_no_usage():
    # A plan without a session keeps no partial reply, and usage counts only what the runner finished.
    builder = _builder(None)
    assert builder.on_event(UNLOADED)[-1][0] == "error"
    assert builder.error == "cancelled: model unloaded" and builder.stats is None
    assert services.chat_record(builder) is None
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db
def test_a_reply_orphaned_by_a_dead_web_process_is_stored_once_as_its_sessions_cancelled_assistant_message(
        make_user, registry):
    from models_app.signals import reply_orphaned

    user = make_user()
    session = ChatSession.objects.create(owner=user, model=registry["alpha"], model_name="alpha")
    ChatMessage.objects.create(session=session, role="user", content="Count.")
    tag = {"session_id": str(session.id), "request_id": "r-orphan", "model_name": "alpha", "requested_name": "",
           "transport": "sse", "api_key_id": None, "dropped_turns": 0, "think_tags": True}
    stats = {"prompt_tokens": 9, "tokens_generated": 7, "finish_reason": "cancelled",
             "time_to_first_token_ms": 12.0, "inference_time_ms": 80.0, "tokens_per_second": 87.5}
    orphan = {"tag": tag, "text": "<think>Start at one.</think>\n\n1, 2, 3", "stats": stats, "error": None}

    # Sent twice, as a retried orphan would be: the request id keeps it to one message.
    for _ in range(2):
        reply_orphaned.send(sender=None, **orphan)

    [stored] = session.messages.filter(role="assistant")
    assert (stored.content, stored.reasoning) == ("1, 2, 3", "Start at one.")
    assert stored.finish_reason == "cancelled" and (stored.prompt_tokens, stored.completion_tokens) == (9, 7)
    assert stored.stats["request_id"] == "r-orphan" and stored.stats["cancel_reason"] == "cancelled: web process gone"
    [usage] = UsageRecord.objects.filter(user=user)
    assert (usage.model_name, usage.transport, usage.completion_tokens) == ("alpha", "sse", 7)


@pytest.mark.django_db
def test_an_orphaned_reply_whose_session_is_gone_stores_nothing(make_user, registry):
    tag = {"session_id": "00000000-0000-0000-0000-000000000000", "request_id": "r-gone", "model_name": "alpha"}
    assert services.store_orphaned_reply(tag=tag, text="1, 2", stats=None, error="boom") is None
    assert not ChatMessage.objects.exists() and not UsageRecord.objects.exists()


CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}


@pytest.fixture
def stored_session(make_user, registry):
    user = make_user()
    session = ChatSession.objects.create(owner=user, model=registry["alpha"], model_name="alpha", title="sums")
    for turn in ({"role": "user", "content": "add"},
                 {"role": "assistant", "content": "", "tool_calls": [CALL]},
                 {"role": "tool", "content": "2", "tool_call_id": "call_1"},
                 {"role": "assistant", "content": "2", "reasoning": "1 + 1", "stats": {"tokens_generated": 1}}):
        ChatMessage.objects.create(session=session, **turn)
    return user, session


def test_a_continued_session_is_read_with_its_model_and_history_in_two_queries(stored_session,
                                                                               django_assert_num_queries):
    user, session = stored_session
    with django_assert_num_queries(2):
        found = services.session_get_for_user(user=user, session_id=session.id)
        assert (found.pk, found.title, found.owner_id, found.model.name) == (session.pk, "sums", user.pk, "alpha")
        history = services.session_history(found)
    assert history == [{"role": "user", "content": "add"},
                       {"role": "assistant", "content": "", "tool_calls": [CALL]},
                       {"role": "tool", "content": "2", "tool_call_id": "call_1"},
                       {"role": "assistant", "content": "2"}]


def test_a_session_whose_model_was_removed_has_none_without_a_query(stored_session, registry,
                                                                    django_assert_num_queries):
    user, session = stored_session
    registry["alpha"].delete()
    with django_assert_num_queries(1):
        found = services.session_get_for_user(user=user, session_id=str(session.id))
        assert found.model is None and found.model_name == "alpha"


@pytest.mark.parametrize("session_id", ["not-a-uuid", "", None])
def test_a_malformed_session_id_answers_like_a_missing_session(make_user, session_id):
    with pytest.raises(errors.NotFoundError):
        services.session_get_for_user(user=make_user(), session_id=session_id)


def test_another_users_session_answers_like_a_missing_one(stored_session, make_user):
    _user, session = stored_session
    with pytest.raises(errors.NotFoundError):
        services.session_get_for_user(user=make_user(), session_id=session.id)
