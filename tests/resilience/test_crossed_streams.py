"""Two users who send the same X-Request-ID get their own generations (THREATS C15).

The header is a log label: a retry, a guess or a proxy that sets a constant must never join two
users' generations in the runner's table, where one stream would receive both and the other none.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from inference_app.models import ChatMessage
from models_app import services
from models_app.bootstrap import bundled_entries
from tests.servers import read_events, start_server, stop_server

pytestmark = pytest.mark.django_db(transaction=True)

SHARED_HEADER = "same-request-id-0001"


def test_two_users_sending_the_same_request_id_each_get_their_own_stream(tmp_path, make_user, client_for):
    services.registry_add(name="smollm2-135m-instruct", config=bundled_entries()["smollm2-135m-instruct"],
                          set_as_default=True)
    users = [make_user("chat", "model_load") for _ in range(2)]
    keys = [client_for(user).raw_key for user in users]
    prompts = ["Write a long story about a dragon.", "List the numbers from one to fifty in words."]
    process, url = start_server(tmp_path / "daphne.log")
    first_started = threading.Event()
    results: dict[int, list] = {}

    def chat(n: int):
        body = {"message": prompts[n], "stream": True, "generation_config": {"temperature": 0.0, "max_tokens": 120}}
        headers = {"Authorization": f"Bearer {keys[n]}", "X-Request-ID": SHARED_HEADER}
        with httpx.stream("POST", f"{url}/inference/chat", json=body, headers=headers, timeout=120) as response:
            lines = response.iter_lines()
            events = read_events(response, stop_after=1, lines=lines)
            first_started.set()
            results[n] = events + read_events(response, lines=lines)

    try:
        first = threading.Thread(target=chat, args=(0,))
        first.start()
        # The second request is sent while the first generation is in the runner.
        assert first_started.wait(120)
        second = threading.Thread(target=chat, args=(1,))
        second.start()
        first.join(120)
        second.join(120)
        assert not first.is_alive() and not second.is_alive(), "a stream never ended"
    finally:
        stopped_cleanly = stop_server(process)
    assert stopped_cleanly, "the server did not stop on SIGTERM"

    request_ids = set()
    for n in (0, 1):
        events = results[n]
        kind, done = events[-1]
        assert kind == "done", events[-1]
        deltas = [payload["content"] for kind, payload in events if kind == "delta"]
        # A joined stream would carry the other generation's tokens too.
        assert "".join(deltas) == done["response"]
        assert done["generation_stats"]["tokens_generated"] == len(deltas)
        request_ids.add(done["request_id"])
        reply = ChatMessage.objects.get(session_id=done["session_id"], role="assistant")
        assert reply.session.owner == users[n] and reply.content == done["response"]
    assert len(request_ids) == 2 and SHARED_HEADER not in request_ids
    assert results[0][-1][1]["response"] != results[1][-1][1]["response"]
