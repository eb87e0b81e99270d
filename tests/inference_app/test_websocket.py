"""WebSocket chat at /ws/chat/ through the real ASGI application and channel layer."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.sessions.models import Session
from django.test import Client, override_settings
from django.utils import timezone

from accounts.models import APIKey
from beautyai_site.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def communicator(headers=None):
    return WebsocketCommunicator(application, "/ws/chat/", headers=headers or [])


@pytest.fixture
def chat_key(make_user, client_for, transactional_db):
    from models_app import runtime, services
    from models_app.bootstrap import bundled_entries

    model = services.registry_add(name="smollm2-135m-instruct", config=bundled_entries()["smollm2-135m-instruct"],
                                  set_as_default=True)
    runtime.load(model)
    return client_for(make_user("chat")).raw_key


async def connect(raw_key):
    ws = communicator([(b"authorization", f"Bearer {raw_key}".encode())])
    connected, _ = await ws.connect()
    assert connected
    assert (await ws.receive_json_from(timeout=10))["type"] == "ready"
    return ws


async def collect(ws, request_id, timeout=60):
    events = []
    while True:
        event = await ws.receive_json_from(timeout=timeout)
        if event.get("request_id") == request_id:
            events.append(event)
            if event["type"] in ("done", "error"):
                return events


def chat_message(request_id, message, max_tokens=32):
    return {"type": "chat", "request_id": request_id, "message": message,
            "generation_config": {"temperature": 0.0, "max_tokens": max_tokens}}


async def test_a_chat_streams_deltas_that_add_up_to_the_reply(chat_key):
    ws = await connect(chat_key)
    await ws.send_json_to(chat_message("a1", "Name the capital city of France."))
    events = await collect(ws, "a1")
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    assert "".join(e["content"] for e in events if e["type"] == "delta") == events[-1]["response"]
    assert "Paris" in events[-1]["response"]
    await ws.disconnect()


async def test_an_api_key_in_the_first_message_authenticates(chat_key):
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "api_key": chat_key})
    assert (await ws.receive_json_from(timeout=10))["type"] == "ready"
    await ws.disconnect()


@override_settings(WEBSOCKET_AUTH_GRACE_SECONDS=0.3)
async def test_an_unauthenticated_socket_is_closed_with_4401(chat_key):
    ws = communicator()
    await ws.connect()
    output = await ws.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4401}


async def test_a_wrong_key_closes_the_socket_with_4401(chat_key):
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "api_key": "bai_00000000_nope"})
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_chat_before_auth_answers_an_error_event(chat_key):
    ws = communicator()
    await ws.connect()
    await ws.send_json_to(chat_message("x", "hi"))
    event = await ws.receive_json_from(timeout=5)
    assert event["type"] == "error" and event["error_code"] == "AuthenticationError"
    await ws.disconnect()


async def test_a_user_without_chat_permission_gets_an_error_event(make_user, client_for, chat_key):
    from channels.db import database_sync_to_async

    client = await database_sync_to_async(lambda: client_for(make_user("model_read")))()
    ws = await connect(client.raw_key)
    await ws.send_json_to(chat_message("p1", "hi"))
    event = await ws.receive_json_from(timeout=10)
    assert event["type"] == "error" and event["error_code"] == "PermissionDeniedError"
    await ws.disconnect()


# An open socket follows its credential ------------------------------------------------------------


def _expire(key):
    key.expires_at = timezone.now() - timedelta(seconds=1)
    key.save()


def _deactivate(user):
    user.is_active = False
    user.save()


def _change_password(user):
    user.set_password("a-new-password-for-tests")
    user.save()


KEY_LOSSES = {
    "the key is revoked": lambda key: key.revoke(),
    "the key expires": _expire,
    "the key is deleted": lambda key: key.delete(),
    "its user is deactivated": lambda key: _deactivate(key.user),
}
SESSION_LOSSES = {
    "the browser signs out": lambda session_key, user: Session.objects.filter(session_key=session_key).delete(),
    "its user is deactivated": lambda session_key, user: _deactivate(user),
    "its user's password changes": lambda session_key, user: _change_password(user),
}


def key_row(raw_key):
    return APIKey.objects.select_related("user").get(prefix=raw_key.split("_")[1])


def signed_in_session(user) -> str:
    browser = Client()
    browser.force_login(user)
    return browser.cookies[settings.SESSION_COOKIE_NAME].value


async def connect_with_session(session_key):
    ws = communicator([(b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())])
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from(timeout=10))["type"] == "ready"
    return ws


def revoke_chat_permission(user):
    user.user_permissions.remove(Permission.objects.get(content_type__app_label="models_app", codename="chat"))


async def chat_is_refused_with_4401(ws):
    await ws.send_json_to(chat_message("after", "Name the capital city of France.", max_tokens=4))
    event = await ws.receive_json_from(timeout=10)
    assert (event["type"], event["request_id"], event["error_code"]) == ("error", "after", "AuthenticationError")
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


@override_settings(WEBSOCKET_RECHECK_SECONDS=3600)  # only the chat itself checks
@pytest.mark.parametrize("loss", KEY_LOSSES)
async def test_the_next_chat_after_the_key_stops_authenticating_is_refused_with_4401(chat_key, loss):
    ws = await connect(chat_key)
    await ws.send_json_to(chat_message("before", "Name the capital city of France.", max_tokens=4))
    assert (await collect(ws, "before"))[-1]["type"] == "done"
    await database_sync_to_async(lambda: KEY_LOSSES[loss](key_row(chat_key)))()
    await chat_is_refused_with_4401(ws)


@override_settings(WEBSOCKET_RECHECK_SECONDS=3600)
async def test_the_next_chat_after_the_browser_signed_out_is_refused_with_4401(make_user, chat_key):
    user = await database_sync_to_async(make_user)("chat")
    session_key = await database_sync_to_async(signed_in_session)(user)
    ws = await connect_with_session(session_key)
    await ws.send_json_to(chat_message("before", "Name the capital city of France.", max_tokens=4))
    assert (await collect(ws, "before"))[-1]["type"] == "done"
    await database_sync_to_async(Session.objects.filter(session_key=session_key).delete)()
    await chat_is_refused_with_4401(ws)


@override_settings(WEBSOCKET_RECHECK_SECONDS=3600)
async def test_the_next_chat_after_the_chat_permission_was_removed_is_refused(chat_key):
    ws = await connect(chat_key)
    await ws.send_json_to(chat_message("before", "Name the capital city of France.", max_tokens=4))
    assert (await collect(ws, "before"))[-1]["type"] == "done"
    await database_sync_to_async(lambda: revoke_chat_permission(key_row(chat_key).user))()
    await ws.send_json_to(chat_message("after", "Name the capital city of France.", max_tokens=4))
    event = await ws.receive_json_from(timeout=10)
    assert (event["type"], event["request_id"], event["error_code"]) == ("error", "after", "PermissionDeniedError")
    await ws.disconnect()


@pytest.fixture
def chatter(make_user, client_for, transactional_db):
    """A user with the chat permission and a key of theirs; no model (these sockets never chat)."""
    user = make_user("chat")
    return user, client_for(user).raw_key


@override_settings(WEBSOCKET_RECHECK_SECONDS=0.2)
@pytest.mark.parametrize("loss", KEY_LOSSES)
async def test_an_idle_socket_is_closed_with_4401_when_its_key_stops_authenticating(chatter, loss):
    ws = await connect(chatter[1])
    await database_sync_to_async(lambda: KEY_LOSSES[loss](key_row(chatter[1])))()
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


@override_settings(WEBSOCKET_RECHECK_SECONDS=0.2)
@pytest.mark.parametrize("loss", SESSION_LOSSES)
async def test_an_idle_socket_is_closed_with_4401_when_its_browser_session_stops_authenticating(chatter, loss):
    user = chatter[0]
    session_key = await database_sync_to_async(signed_in_session)(user)
    ws = await connect_with_session(session_key)
    await database_sync_to_async(lambda: SESSION_LOSSES[loss](session_key, user))()
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


@override_settings(WEBSOCKET_RECHECK_SECONDS=0.2)
async def test_an_idle_socket_is_closed_with_4403_when_its_user_loses_the_chat_permission(chatter):
    ws = await connect(chatter[1])
    await database_sync_to_async(revoke_chat_permission)(chatter[0])
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}


@override_settings(WEBSOCKET_RECHECK_SECONDS=0.2)
async def test_a_socket_that_never_could_chat_stays_open_across_checks(make_user, client_for, transactional_db):
    client = await database_sync_to_async(lambda: client_for(make_user("model_read")))()
    ws = await connect(client.raw_key)
    assert await ws.receive_nothing(timeout=1)  # five checks
    await ws.disconnect()


async def test_bad_json_and_unknown_types_answer_errors_and_the_socket_stays_usable(chat_key):
    ws = await connect(chat_key)
    await ws.send_to(text_data="{not json")
    assert (await ws.receive_json_from(timeout=5))["error_code"] == "ValidationError"
    await ws.send_json_to({"type": "dance"})
    assert (await ws.receive_json_from(timeout=5))["error_code"] == "ValidationError"
    await ws.send_json_to({"type": "chat", "request_id": "v1", "message": "hi", "generation_config": {"top_p": 5}})
    assert (await ws.receive_json_from(timeout=10))["error_code"] == "ValidationError"
    await ws.send_json_to(chat_message("ok", "Name the capital city of France."))
    assert (await collect(ws, "ok"))[-1]["type"] == "done"
    await ws.disconnect()


@override_settings(WEBSOCKET_MAX_MESSAGE_BYTES=2048)
async def test_an_oversized_message_closes_that_socket_only(chat_key):
    ws = await connect(chat_key)
    other = await connect(chat_key)
    await ws.send_to(text_data=json.dumps(chat_message("big", "x" * 5000)))
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4413}
    await other.send_json_to(chat_message("fine", "Name the capital city of France."))
    assert (await collect(other, "fine"))[-1]["type"] == "done"
    await other.disconnect()


async def test_a_cancel_message_stops_the_generation(chat_key):
    ws = await connect(chat_key)
    await ws.send_json_to(chat_message("long", "Write a very long story about a dragon.", max_tokens=400))
    seen = 0
    while True:
        event = await ws.receive_json_from(timeout=30)
        if event["type"] == "delta":
            seen += 1
            if seen == 3:
                await ws.send_json_to({"type": "cancel", "request_id": "long"})
        if event["type"] == "done":
            break
    assert event["generation_stats"]["finish_reason"] == "cancelled"
    assert event["generation_stats"]["tokens_generated"] < 200
    await ws.disconnect()


async def test_closing_the_socket_stops_the_generation(chat_key):
    from channels.db import database_sync_to_async

    from inference_app.models import ChatMessage

    ws = await connect(chat_key)
    await ws.send_json_to(chat_message("gone", "Write a very long story about a dragon.", max_tokens=400))
    start = await ws.receive_json_from(timeout=30)
    await ws.receive_json_from(timeout=30)
    await ws.disconnect()
    for _ in range(100):
        reply = await database_sync_to_async(
            lambda: ChatMessage.objects.filter(session_id=start["session_id"], role="assistant").first())()
        if reply:
            break
        await asyncio.sleep(0.1)
    assert reply.finish_reason == "cancelled" and reply.completion_tokens < 200


async def test_twenty_concurrent_clients_each_get_only_their_own_stream(chat_key):
    from channels.db import database_sync_to_async

    from models_app.models import ModelConfig

    # llama.cpp runs one at a time: the other nineteen must fit in the queue.
    await database_sync_to_async(
        lambda: ModelConfig.objects.filter(name="smollm2-135m-instruct").update(parameters={"n_ctx": 2048, "max_queue": 32}))()
    sockets = [await connect(chat_key) for _ in range(20)]
    nonces = [f"N{n:03d}X" for n in range(20)]
    for ws, nonce in zip(sockets, nonces):
        await ws.send_json_to(chat_message(nonce, f"Repeat exactly this code: {nonce}", max_tokens=16))
    results = await asyncio.gather(*(collect(ws, nonce, timeout=120) for ws, nonce in zip(sockets, nonces)))
    for nonce, events in zip(nonces, results):
        assert all(e["request_id"] == nonce for e in events)
        assert events[-1]["type"] == "done"
        joined = "".join(e["content"] for e in events if e["type"] == "delta")
        assert joined == events[-1]["response"]
        others = [n for n in nonces if n != nonce]
        assert not any(other in joined for other in others)
    for ws in sockets:
        await ws.disconnect()


async def test_a_full_queue_answers_429_at_once(chat_key):
    from channels.db import database_sync_to_async

    from models_app.models import ModelConfig

    await database_sync_to_async(
        lambda: ModelConfig.objects.filter(name="smollm2-135m-instruct").update(parameters={"n_ctx": 2048, "max_queue": 1}))()
    ws = await connect(chat_key)
    for n in range(3):
        await ws.send_json_to(chat_message(f"q{n}", "Write a very long story about a dragon.", max_tokens=200))
    started = asyncio.get_running_loop().time()
    while True:
        event = await ws.receive_json_from(timeout=30)
        if event["type"] == "error":
            break
    assert event["error_code"] == "RateLimitError" and event["error_details"]["max_queue"] == 1
    assert asyncio.get_running_loop().time() - started < 5
    running = [f"q{n}" for n in range(3) if f"q{n}" != event["request_id"]]
    for request_id in running:
        await ws.send_json_to({"type": "cancel", "request_id": request_id})
    unfinished = set(running)
    while unfinished:  # their partial replies are stored before the test database goes away
        event = await ws.receive_json_from(timeout=30)
        if event["type"] == "done":
            unfinished.discard(event["request_id"])
    await ws.disconnect()


@override_settings(REDIS_URL="redis://127.0.0.1:6379/0",
                   CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                               "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:6379/0",
                                                                     "socket_timeout": 30}]}}})
async def test_the_cancel_route_reaches_a_socket_in_another_process_through_redis(chat_key):
    """The stream is taken out of this process's registry, as if another web process served it."""
    from channels.db import database_sync_to_async
    from channels.layers import channel_layers
    from rest_framework.test import APIClient

    from inference_app import active

    channel_layers.backends.clear()  # pick up the Redis layer configured above
    ws = await connect(chat_key)
    await ws.send_json_to(chat_message("far", "Write a very long story about a dragon.", max_tokens=400))
    start = await ws.receive_json_from(timeout=30)
    active.unregister(start["server_request_id"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {chat_key}")
    answer = await database_sync_to_async(
        lambda: client.post(f"/inference/requests/{start['server_request_id']}/cancel"))()
    assert answer.status_code == 202 and answer.json()["data"]["forwarded"] is True
    while True:
        event = await ws.receive_json_from(timeout=30)
        if event["type"] == "done":
            break
    assert event["generation_stats"]["finish_reason"] == "cancelled"
    assert event["generation_stats"]["tokens_generated"] < 200
    await ws.disconnect()
    channel_layers.backends.clear()


async def test_websocket_chats_count_toward_the_chat_rate(chat_key, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"chat": "1/minute"})
    cache.clear()  # user ids restart with each test database; the counters in the cache may not
    ws = await connect(chat_key)
    await ws.send_json_to(chat_message("r1", "Hi", max_tokens=2))
    assert (await collect(ws, "r1"))[-1]["type"] == "done"
    await ws.send_json_to(chat_message("r2", "Hi", max_tokens=2))
    event = (await collect(ws, "r2"))[-1]
    assert event["type"] == "error" and event["error_code"] == "RateLimitError"
    assert event["error_details"]["retry_after_seconds"] > 0
    await ws.disconnect()
