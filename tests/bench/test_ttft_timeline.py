"""bench.ttft_timeline: the phases of one chat from the client's times and the server's events, and
one short run against a real server so that its timers still find the functions they wrap."""

from __future__ import annotations

import pytest

from bench import ttft_timeline
from bench.clients import StreamResult


def sse_chat_events(sent: float) -> list[tuple]:
    """A made-up SSE chat's server events, ms after ``sent``."""
    at = lambda ms: sent + ms / 1000  # noqa: E731 - local shorthand
    return [
        (at(2), "asgi_in", None),
        (at(3), "s2a_call", 1), (at(3.2), "s2a_in", 1),
        (at(4), "view>", None),
        (at(4.5), "auth>", None), (at(5), "db>", "SELECT key"), (at(5.2), "db<", None), (at(5.5), "auth<", None),
        (at(6), "prepare>", None),
        (at(6.5), "fit_context>", None), (at(6.6), "runner_call>", None), (at(8.6), "runner_call<", None),
        (at(8.7), "fit_context<", None),
        (at(9), "prepare<", None),
        (at(10), "submit>", None), (at(10.5), "submit<", None),
        (at(11), "store_turn>", None), (at(11.1), "db>", "INSERT"), (at(11.3), "db<", None), (at(14), "store_turn<", None),
        (at(12), "runner_started", None),
        (at(15), "view<", None), (at(15.5), "response_start", None), (at(16), "body", "event: start\n"),
        (at(16.2), "loop_subscribed", None),
        (at(32), "reader_first_delta", None), (at(32.2), "loop_first_delta", None),
        (at(32.3), "body", "event: delta\ndata: {}"),
    ]


def test_it_splits_a_chat_into_phases_that_add_up():
    sent = 100.0
    result = StreamResult("sse", sent_at=sent, start_at=0.0161, piece_times=[0.0328], server_ttft_ms=20.0)
    row = ttft_timeline.timeline("sse", result, sse_chat_events(sent))

    assert row["TTFT (client)"] == pytest.approx(32.8)
    assert row["added (TTFT - engine TTFT)"] == pytest.approx(12.8)
    assert row["1 send -> submit entered (platform, before)"] == pytest.approx(10)
    assert row["2 submit -> first token read, minus engine TTFT"] == pytest.approx(2)
    assert row["3 first token read -> client has it (after)"] == pytest.approx(0.8)
    assert row["A send -> app called (daphne)"] == pytest.approx(2)
    assert row["B app -> view entered (middleware, hops)"] == pytest.approx(2)
    assert row["C view -> submitted (platform work)"] == pytest.approx(6)
    assert row["    token count round trip"] == pytest.approx(2)
    assert row["H event loop -> written (send)"] == pytest.approx(0.1)
    assert row["queries before submit"] == 1 and row["after submit: queries"] == 1
    assert row["thread hops before submit"] == 1 and row["  their waits"] == pytest.approx(0.2)
    assert row["after submit: store user turn"] == pytest.approx(3)


def test_nested_spans_count_once():
    assert ttft_timeline._total([(0.0, 0.004), (0.001, 0.002), (0.003, 0.005)]) == pytest.approx(5)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_it_times_a_real_chat(capsys):
    assert ttft_timeline.main(["--chats", "1", "--warmup", "0", "--tokens", "2", "--transports", "sse",
                               "--what-if", "skip-count"]) == 0
    out = capsys.readouterr().out
    assert "sse+skip-count" in out
    assert "token count round trip" in out
