"""Reasoning split: <think> blocks become `reasoning`, the rest the answer, in streams and stored replies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from inference_app.reasoning import ThinkSplitter, template_uses_think_tags
from inference_app.services import ReplyBuilder
from models_app.serving.engines.contract import GenerationStats
from models_app.serving.handle import Event


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>Paris is in France.</think>\n\nParis.", ("Paris is in France.", "Paris.")),
        ("Paris is in France.</think>Paris.", ("Paris is in France.", "Paris.")),  # opening tag in the prompt
        ("  <think></think>\n\nJust the answer.", ("", "Just the answer.")),  # Qwen3 with thinking off
        ("No reasoning here.", ("", "No reasoning here.")),
    ],
)
def test_whole_replies_split_into_reasoning_and_answer(text, expected):
    # As the model test reads its reply: through a ReplyBuilder, here with the whole reply in one delta.
    plan = SimpleNamespace(think_tags=True, request_id="r1", dropped_turns=0, session=None,
                           model=SimpleNamespace(name="m"))
    builder = ReplyBuilder(plan)
    builder.on_event(Event(kind="delta", text=text))
    builder.on_event(Event(kind="done", stats=GenerationStats(5, 7, "stop", 1.0, 10.0, 700.0)))
    assert builder.texts() == expected


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_tags_split_across_deltas_never_leak(size):
    text = "<think>step one, step two</think>\nThe answer is 4."
    splitter = ThinkSplitter()
    pieces = []
    for start in range(0, len(text), size):
        pieces += splitter.feed(text[start:start + size])
    pieces += splitter.flush()
    assert all("<" not in piece for _, piece in pieces)  # no tag, nor part of one, reaches a client
    assert "".join(p for k, p in pieces if k == "reasoning") == "step one, step two"
    assert "".join(p for k, p in pieces if k == "content") == "The answer is 4."


def test_templates_with_think_tags_are_detected():
    assert template_uses_think_tags("{% if x %}<think>\n{% endif %}...</think>")
    assert not template_uses_think_tags("{{ messages }}")
    assert not template_uses_think_tags(None)


def test_the_reply_builder_sends_reasoning_and_answer_as_different_events():
    plan = SimpleNamespace(think_tags=True, request_id="r1", dropped_turns=0,
                           session=SimpleNamespace(id="s1"), model=SimpleNamespace(name="m"))
    builder = ReplyBuilder(plan)
    events = []
    for delta in ["<think>", "Let me", " think.", "</thi", "nk>\n", "Paris", "."]:
        events += builder.on_event(Event(kind="delta", text=delta))
    events += builder.on_event(Event(kind="done", stats=GenerationStats(5, 7, "stop", 1.0, 10.0, 700.0)))
    kinds = [kind for kind, _ in events]
    assert kinds.count("reasoning") >= 2 and kinds[-1] == "done"
    done = events[-1][1]
    assert done["reasoning"] == "Let me think." and done["response"] == "Paris."
    assert "".join(p["content"] for k, p in events if k == "delta") == "Paris."
