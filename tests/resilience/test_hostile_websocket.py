"""Hostile WebSocket clients lose their own socket; everyone else carries on."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from tests.inference_app.test_websocket import chat_message, collect, communicator, connect, signed_in_session

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def chat_key(make_user, client_for, transactional_db):
    from models_app import runtime, services
    from models_app.bootstrap import bundled_entries

    config = dict(bundled_entries()["smollm2-135m-instruct"])
    config["parameters"] = {**config["parameters"], "max_queue": 64}
    runtime.load(services.registry_add(name="smollm2-135m-instruct", config=config, set_as_default=True))
    return client_for(make_user("chat")).raw_key


async def test_a_ten_megabyte_frame_closes_that_socket_only(chat_key):
    bystander = await connect(chat_key)
    attacker = await connect(chat_key)
    await attacker.send_to(text_data=json.dumps({"type": "chat", "message": "x" * (10 * 1024 * 1024)}))
    assert await attacker.receive_output(timeout=10) == {"type": "websocket.close", "code": 4413}
    await bystander.send_json_to(chat_message("ok", "Name the capital city of France."))
    assert (await collect(bystander, "ok"))[-1]["type"] == "done"
    await bystander.disconnect()


FLOODS = {
    "cancels": lambda n: json.dumps({"type": "cancel", "request_id": f"nothing-{n}"}),
    "not JSON": lambda n: "{nope",
    "JSON arrays": lambda n: "[1, 2]",
    "unknown types": lambda n: json.dumps({"type": "bogus"}),
}


@pytest.mark.parametrize("flood", FLOODS)
@pytest.mark.parametrize("authenticated", [True, False], ids=["authenticated", "before auth"])
async def test_a_thousand_messages_a_second_close_that_socket_only(chat_key, flood, authenticated):
    bystander = await connect(chat_key)
    if authenticated:
        attacker = await connect(chat_key)
    else:
        attacker = communicator([])
        assert (await attacker.connect())[0]
    for n in range(1000):
        await attacker.send_to(text_data=FLOODS[flood](n))
    outputs = []
    while True:
        output = await attacker.receive_output(timeout=10)
        outputs.append(output)
        if output["type"] == "websocket.close":
            break
    assert outputs[-1]["code"] == 4429
    await bystander.send_json_to(chat_message("ok", "Name the capital city of France."))
    assert (await collect(bystander, "ok"))[-1]["type"] == "done"
    await bystander.disconnect()


async def test_fifty_concurrent_sockets_all_get_their_replies(chat_key):
    sockets = await asyncio.gather(*(connect(chat_key) for _ in range(50)))
    for n, ws in enumerate(sockets):
        await ws.send_json_to(chat_message(f"s{n}", "Name the capital city of France.", max_tokens=4))
    results = await asyncio.gather(*(collect(ws, f"s{n}", timeout=180) for n, ws in enumerate(sockets)))
    assert all(events[-1]["type"] == "done" for events in results)
    await asyncio.gather(*(ws.disconnect() for ws in sockets))


async def test_a_page_on_another_port_cannot_open_a_socket_with_the_users_cookie(live_server_url, make_user):
    """The real server: a browser on http://localhost:9999 sends the signed-in user's cookie along."""
    user = await database_sync_to_async(make_user)("chat")
    cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={await database_sync_to_async(signed_in_session)(user)}"}
    url = live_server_url.replace("http://", "ws://") + "/ws/chat/"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, origin="http://localhost:9999", additional_headers=cookie, open_timeout=10):
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(url, origin=live_server_url, additional_headers=cookie, open_timeout=10) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "ready", "user": user.username}


DEEP = {"1,000 arrays": "[" * 1000 + "]" * 1000, "1,000 objects": '{"a":' * 1000 + "1" + "}" * 1000,
        "100,000 arrays": "[" * 100_000 + "]" * 100_000}


async def test_deep_nesting_and_unstorable_numbers_answer_error_events_and_the_socket_stays_usable(chat_key):
    ws = await connect(chat_key)
    for text in DEEP.values():
        await ws.send_to(text_data=text)
        event = await ws.receive_json_from(timeout=10)
        assert (event["type"], event["error_code"]) == ("error", "ValidationError")
        assert "nested more than" in event["error_message"]
    huge = "1" + "0" * 400
    await ws.send_to(text_data='{"type": "chat", "request_id": "n1", "message": "hi", '
                               f'"generation_config": {{"temperature": {huge}}}}}')
    event = await ws.receive_json_from(timeout=10)
    assert (event["type"], event["error_code"]) == ("error", "ValidationError")
    assert "generation_config.temperature" in event["error_message"]
    await ws.send_json_to(chat_message("ok", "Name the capital city of France."))
    assert (await collect(ws, "ok"))[-1]["type"] == "done"
    await ws.disconnect()
