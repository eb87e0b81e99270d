"""Faults during generation: an unload storm ends streams cleanly and leaves status matching the processes."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from models_app import runtime
from models_app.serving.engines.contract import GenerationParams
from tests.conftest import BUNDLED

pytestmark = pytest.mark.django_db(transaction=True)

STORY = [{"role": "user", "content": "Write a very long story about a dragon."}]


def test_an_unload_storm_during_generation_ends_every_stream_and_keeps_serving(bundled_model, make_user, client_for):
    runtime.load(bundled_model)
    streams = [runtime.generate(bundled_model, STORY, GenerationParams(max_tokens=300, temperature=0))
               for _ in range(3)]
    client = client_for(make_user("model_load", "model_read"))
    answers = []

    def storm(n):
        from django.db import connection

        try:
            for step in range(4):
                action = "unload" if (n + step) % 2 == 0 else "load"
                answers.append(client.post(f"/models/{BUNDLED}/{action}").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=storm, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    endings = []
    deadline = time.monotonic() + 120
    for handle in streams:
        for event in handle:
            assert time.monotonic() < deadline, "a stream hung"
            if event.kind != "delta":
                endings.append(event)
    for thread in threads:
        thread.join()
    assert len(endings) == 3
    assert all(e.kind == "done" or e.cancelled for e in endings), [e.message for e in endings]
    assert set(answers) <= {200, 409}, answers
    runtime.load(bundled_model)
    assert client.get(f"/models/{BUNDLED}/status").json()["data"]["status"] == "loaded"
    pid = runtime.status(BUNDLED)["pid"]
    assert psutil.pid_exists(pid)
    spawned = [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())
               and p.status() != psutil.STATUS_ZOMBIE]
    assert pid in [p.pid for p in spawned]
