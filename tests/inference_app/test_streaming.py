"""SSE on a real daphne server: events, byte-exact deltas, and every way of stopping a stream."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from inference_app.models import ChatMessage
from tests.conditions import wait_for
from tests.servers import read_events

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(live_server_url, make_user, client_for, transactional_db):
    from models_app import services
    from models_app.bootstrap import bundled_entries

    services.registry_add(name="smollm2-135m-instruct", config=bundled_entries()["smollm2-135m-instruct"],
                          set_as_default=True)
    client = client_for(make_user("chat", "model_load"))
    headers = {"Authorization": f"Bearer {client.raw_key}"}
    return live_server_url, headers


def stream(url, headers, message, max_tokens=48, **extra):
    body = {"message": message, "stream": True, "generation_config": {"temperature": 0.0, "max_tokens": max_tokens}, **extra}
    return httpx.stream("POST", f"{url}/inference/chat", json=body, headers=headers, timeout=120)


def test_an_sse_stream_sends_start_deltas_and_done_that_add_up(server):
    url, headers = server
    with stream(url, headers, "Name the capital city of France.") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("delta") > 1
    done = events[-1][1]
    assert "".join(p["content"] for k, p in events if k == "delta") == done["response"]
    assert "Paris" in done["response"]
    assert done["session_id"] == events[0][1]["session_id"]
    assert done["generation_stats"]["tokens_generated"] >= kinds.count("delta") - 1


def test_arabic_streams_without_broken_characters(server):
    url, headers = server
    with stream(url, headers, "ما هي عاصمة فرنسا؟ أجب بالعربية 🌍", max_tokens=40) as response:
        raw = b"".join(response.iter_bytes())
    text = raw.decode("utf-8")  # would raise on a split multi-byte character
    events = [(block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:]))
              for block in text.strip().split("\n\n")]
    done = events[-1][1]
    joined = "".join(p["content"] for k, p in events if k == "delta")
    assert joined.encode() == done["response"].encode()
    assert "\ufffd" not in joined


def test_a_client_that_disconnects_stops_the_generation(server):
    url, headers = server
    with stream(url, headers, "Write a very long story about a dragon.", max_tokens=400) as response:
        events = read_events(response, stop_after=3)
        session_id = events[0][1]["session_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = ChatMessage.objects.filter(session_id=session_id, role="assistant").first()
        if reply:
            break
        time.sleep(0.1)
    assert reply is not None and reply.finish_reason == "cancelled"
    assert reply.completion_tokens < 200


def test_the_cancel_route_stops_a_stream(server):
    url, headers = server
    with stream(url, headers, "Write a very long story about a dragon.", max_tokens=400) as response:
        lines = response.iter_lines()
        events = []
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    request_id = events[0]["request_id"]
                    cancel = httpx.post(f"{url}/inference/requests/{request_id}/cancel", headers=headers, timeout=10)
                    assert cancel.status_code == 200, cancel.text
        done = events[-1]
    assert done["generation_stats"]["finish_reason"] == "cancelled"
    assert done["generation_stats"]["tokens_generated"] < 200


def test_another_user_cannot_cancel_my_stream(server, make_user, client_for):
    url, headers = server
    intruder = {"Authorization": f"Bearer {client_for(make_user('chat')).raw_key}"}
    with stream(url, headers, "Count from one to fifty.", max_tokens=60) as response:
        events = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    answer = httpx.post(f"{url}/inference/requests/{events[0]['request_id']}/cancel", headers=intruder)
                    # 404 here; with Redis the unknown id is forwarded to the intruder's own sockets (202), never cancelled.
                    assert answer.status_code in (404, 202) and answer.json()["success"] is (answer.status_code == 202)
    assert events[-1]["generation_stats"]["finish_reason"] != "cancelled"


def wait_for_audit(request_id, seconds=10):
    from system_app.models import AuditEvent

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = AuditEvent.objects.filter(request_id=request_id).first()
        if event is not None:
            return event
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("client_leaves", [False, True], ids=["stream ends", "client leaves"])
def test_a_streamed_chat_is_audited_when_its_stream_closes_not_before_the_first_token(server, client_leaves):
    from system_app.models import AuditEvent

    url, headers = server
    request_id = f"audit-stream-{int(client_leaves)}"
    body = {"message": "Write a very long story about a dragon.", "stream": True,
            "generation_config": {"temperature": 0.0, "max_tokens": 400 if client_leaves else 150}}
    with httpx.stream("POST", f"{url}/inference/chat", json=body, headers={**headers, "X-Request-ID": request_id},
                      timeout=120) as response:
        lines = response.iter_lines()
        events = read_events(response, stop_after=3, lines=lines)
        # The first tokens are here and the stream is still open: its audit row is not written yet.
        assert not AuditEvent.objects.filter(request_id=request_id).exists()
        if not client_leaves:
            events += read_events(response, lines=lines)
            assert events[-1][0] == "done"
    event = wait_for_audit(request_id)
    assert event is not None
    assert (event.method, event.route, event.status_code) == ("POST", "/inference/chat", 200)
    # Stamped with the moment the stream was answered, before the reply was stored at its end.
    # When the client left, the cancelled reply is stored in the background, after the audit row.
    reply = wait_for(lambda: ChatMessage.objects.filter(session_id=events[0][1]["session_id"], role="assistant").first(),
                     timeout=10, message="the reply was never stored")
    assert event.created_at <= reply.created_at
