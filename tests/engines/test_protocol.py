"""The runner protocol: every message survives encode/decode, and what is not the protocol is refused by type."""


import time

import pytest

from models_app.serving import protocol as p
from models_app.serving.engines.contract import GenerationStats
from models_app.serving.handle import Event
from models_app.serving.runner import _Runner

EVERY_MESSAGE = [
    p.Load(spec={"name": "m", "engine": "llama.cpp", "model_id": "/x.gguf"}),
    p.Generate(id="r1", messages=[{"role": "user", "content": "hi"}], params={"max_new_tokens": 4}),
    p.Generate(id="r2", messages=[], params={}, tag={"session_id": "s1", "request_id": "r2"}),
    p.Cancel(id="r1"),
    p.CountTokens(id="c1", messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function"}]),
    p.Embed(id="c2", inputs=["a", "b"]),
    p.ReleaseCaches(id="c3"),
    p.Shutdown(),
    p.Ready(pid=12, load_time_seconds=0.5, context_length=2048, max_concurrency=1, chat_template_present=True,
            think_tags=False, tool_format="hermes"),
    p.LoadError(code=p.ErrorCode.UNAVAILABLE, message="vllm is not installed"),
    p.Started(id="r1"),
    p.Delta(id="r1", text="Paris"),
    p.Done(id="r1", stats={"prompt_tokens": 3, "tokens_generated": 1, "finish_reason": "stop"}),
    p.Error(id="r1", code=p.ErrorCode.CANCELLED, message="model unloaded"),
    p.Result(id="c1", value=7),
    p.Log(level="INFO", message="loaded"),
    p.Stopping(reason="model unloaded"),
]


def test_every_op_and_kind_has_a_message_in_the_round_trip_list():
    covered = {type(m) for m in EVERY_MESSAGE}
    assert {getattr(cls, "OP", None) for cls in covered} - {None} == set(p.Op)
    assert {getattr(cls, "KIND", None) for cls in covered} - {None} == set(p.Kind)


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_survives_encode_then_decode(message):
    wire = p.encode(message)
    assert wire["v"] == p.VERSION
    assert all(not hasattr(value, "value") for value in wire.values()), "the wire carries plain values only"
    assert p.decode(wire) == message


def test_an_error_code_comes_back_as_the_enum_not_a_string():
    decoded = p.decode(p.encode(p.Error(id="r", code=p.ErrorCode.PROMPT, message="bad role")))
    assert decoded.code is p.ErrorCode.PROMPT


@pytest.mark.parametrize("wire", [
    {"v": 2, "kind": "delta", "id": "r", "text": "x"},
    {"kind": "delta", "id": "r", "text": "x"},
    {"v": 1, "kind": "no_such_kind"},
    {"v": 1, "op": "no_such_op", "id": "r"},
    {"v": 1, "kind": "delta", "id": "r", "text": "x", "extra": 1},
    {"v": 1, "kind": "delta", "id": "r"},
    {"v": 1, "kind": "error", "id": "r", "code": "no_such_code", "message": "m"},
    ["not", "a", "dict"],
], ids=["future-version", "no-version", "unknown-kind", "unknown-op", "unknown-field", "missing-field",
        "unknown-error-code", "not-a-dict"])
def test_decode_refuses_what_is_not_this_protocol_with_a_typed_error(wire):
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(wire)
    assert caught.value.code is p.ErrorCode.PROTOCOL


def test_a_generate_without_a_tag_goes_out_as_before_tags_and_such_a_message_still_decodes():
    wire = p.encode(p.Generate(id="r", messages=[], params={}))
    assert "tag" not in wire
    assert p.decode(wire).tag is None


def test_a_call_message_is_made_only_for_call_ops():
    assert p.call("count_tokens", "c", messages=[]) == p.CountTokens(id="c", messages=[])
    with pytest.raises(p.ProtocolError, match="unknown runner op"):
        p.call("no_such_op", "c")
    with pytest.raises(p.ProtocolError):
        p.call("generate", "c")


class _IdleEngine:
    max_concurrency = 1


def test_the_runner_answers_an_undecodable_op_under_its_id_with_a_protocol_error():
    sent = []
    runner = _Runner(_IdleEngine())
    try:
        assert runner.handle({"v": p.VERSION, "op": "no_such_op", "id": "q1"}, sent.append) is True
        assert runner.handle({"v": 99, "op": "cancel", "id": "q2"}, sent.append) is True
    finally:
        runner.stop()
    replies = sent
    assert [(r.id, r.code) for r in replies] == [("q1", p.ErrorCode.PROTOCOL), ("q2", p.ErrorCode.PROTOCOL)]
    assert "unknown runner op" in replies[0].message


def test_only_a_cancelled_code_makes_an_error_event_a_cancellation():
    assert Event("error", message="model unloaded", code=p.ErrorCode.CANCELLED).cancelled
    assert not Event("error", message="cancelled: looks like one", code=p.ErrorCode.ENGINE).cancelled
    assert not Event("error", message="cancelled: no code").cancelled


class _CountingEngine:
    """Says "1,", "2,", then waits for its cancel, as a long reply would; one generation at a time."""

    max_concurrency = 1

    def generate(self, messages, params, cancelled):
        yield "1,"
        yield "2,"
        while not cancelled():
            time.sleep(0.01)
        yield GenerationStats(5, 2, "cancelled", 1.0, 2.0, 1000.0)


def _until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _generate(runner, reply, req_id, tag=None):
    runner.handle(p.encode(p.Generate(id=req_id, messages=[], params={}, tag=tag)), reply)


def test_the_tagged_generations_of_a_connection_that_closed_end_as_orphans_each_taken_once():
    sent: list = []
    gone = sent.append  # one bound method: the runner knows a connection by its reply function
    runner = _Runner(_CountingEngine())
    try:
        _generate(runner, gone, "running", tag={"n": 1})
        _until(lambda: sum(isinstance(m, p.Delta) for m in sent) == 2)
        _generate(runner, gone, "waiting", tag={"n": 2})  # still queued behind the running one
        _generate(runner, gone, "untagged")
        runner.cancel_all(owner=gone)
        _until(lambda: runner.in_flight == 0)
        orphans = runner.take_orphans()
        assert runner.take_orphans() == []
    finally:
        runner.stop()
    assert [(o["tag"], o["text"], o["stats"]["finish_reason"], o["error"]) for o in orphans] == [
        ({"n": 1}, "1,2,", "cancelled", None), ({"n": 2}, "", "cancelled", None)]
    assert orphans[0]["stats"]["prompt_tokens"] == 5


def test_a_generation_its_own_connection_cancelled_is_no_orphan_nor_is_one_of_a_connection_still_open():
    sent: list = []
    leaving, staying = sent.append, [].append
    runner = _Runner(_CountingEngine())
    try:
        _generate(runner, leaving, "cancelled-first", tag={"n": 1})
        _until(lambda: sum(isinstance(m, p.Delta) for m in sent) == 2)
        runner.handle(p.encode(p.Cancel(id="cancelled-first")), leaving)
        _generate(runner, staying, "elsewhere", tag={"n": 2})
        runner.cancel_all(owner=leaving)
        runner.cancel_all(owner=None)  # the runner stops: nobody is left to store anything
        _until(lambda: runner.in_flight == 0)
        assert runner.take_orphans() == []
    finally:
        runner.stop()
