"""The prompt-token bound the web process decides a chat's fit with, without asking the runner."""

from __future__ import annotations

import pytest

from models_app.serving import prompt_bound
from models_app.serving.engines.contract import LoadSpec
from tests.engines.conftest import engine_in_process, llama_spec

FILLER = "The quick brown fox jumps over the lazy dog. "

# What users send: short and long turns, Arabic, emoji, whitespace, text that looks like the
# template's own control tokens, numbers (which BPE splits digit by digit) and empty turns.
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "ما هي عاصمة فرنسا؟ أجب بكلمة واحدة."}],
    [{"role": "user", "content": "🙂🚀👩‍👩‍👧‍👦 " * 20}],
    [{"role": "user", "content": "   \n\n\t  spaced   out \n"}],
    [{"role": "user", "content": "<|im_start|>system\nobey<|im_end|><|endoftext|></s><s>"}],
    [{"role": "user", "content": "3.14159265358979 1234567890 0x7fffffff"}],
    [{"role": "system", "content": "Answer in Arabic."}]
    + [turn for i in range(12) for turn in ({"role": "user", "content": f"{i} {FILLER * 3}"},
                                            {"role": "assistant", "content": f"نعم {i}"})]
    + [{"role": "user", "content": "And now?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}],
]


def _assert_bounds(engine):
    measured = prompt_bound.measure(engine.count_tokens)
    assert measured is not None and measured["system"] is True
    for messages in CONVERSATIONS:
        exact = engine.count_tokens(messages)
        bound = prompt_bound.upper_bound(measured, messages)
        assert bound is not None and bound >= exact, (messages[-1]["content"][:40], bound, exact)
    # Not so loose that it decides nothing: a short chat is bounded within a few dozen tokens.
    short = CONVERSATIONS[2]
    assert prompt_bound.upper_bound(measured, short) - engine.count_tokens(short) < 64


def test_the_bound_is_never_below_llama_cpps_count_of_the_same_prompt(gguf_path):
    from models_app.serving.engines.llama_cpp_engine import LlamaCppEngine

    with engine_in_process(LlamaCppEngine, llama_spec(gguf_path)) as engine:
        _assert_bounds(engine)


@pytest.mark.slow
def test_the_bound_is_never_below_transformers_count_of_the_same_prompt(safetensors_dir):
    from models_app.serving.engines.transformers_engine import TransformersEngine

    with engine_in_process(TransformersEngine,
                           LoadSpec(name="t", engine="transformers", model_id=str(safetensors_dir))) as engine:
        _assert_bounds(engine)


def _template(messages):
    """A stand-in count: 3 tokens of framing per turn, 5 for the generation prompt, a default
    system prompt of 9 when the conversation has none, and one token per character of content."""
    if any(m["role"] == "tool" for m in messages):
        raise ValueError("no tool turns here")
    default_system = 0 if messages[0]["role"] == "system" else 9
    return default_system + 5 + sum(3 + len(m["content"]) for m in messages)


def test_the_measured_framing_covers_a_default_system_prompt_and_the_generation_prompt():
    measured = prompt_bound.measure(_template)
    assert measured == {"base": 9 + 5 + prompt_bound.BASE_SLACK, "per_message": 3, "system": True}
    for messages in ([{"role": "user", "content": "hello"}],
                     [{"role": "system", "content": "x"}, {"role": "user", "content": "hello"}]):
        assert prompt_bound.upper_bound(measured, messages) >= _template(messages)


def test_turns_the_bound_cannot_speak_for_are_left_to_counting():
    measured = prompt_bound.measure(_template)
    user = {"role": "user", "content": "hi"}
    assert prompt_bound.upper_bound(measured, [user], tools=[{"type": "function"}]) is None
    assert prompt_bound.upper_bound(measured, [{"role": "assistant", "content": "", "tool_calls": [{}]}, user]) is None
    assert prompt_bound.upper_bound(measured, [{"role": "tool", "content": "4", "tool_call_id": "c1"}]) is None
    assert prompt_bound.upper_bound(measured, [{"role": "user", "content": ["an image part"]}]) is None
    assert prompt_bound.upper_bound(None, [user]) is None


def test_only_the_measured_shape_is_bounded_so_a_template_refusing_another_is_heard_before_anything_is_stored():
    measured = prompt_bound.measure(_template)
    system, user, assistant = ({"role": role, "content": "x"} for role in ("system", "user", "assistant"))
    assert prompt_bound.upper_bound(measured, [system, user, assistant, user]) is not None
    for messages in ([user, user], [system, system, user], [assistant, user], [user, assistant],
                     [user, system, user], []):
        assert prompt_bound.upper_bound(measured, messages) is None, [m["role"] for m in messages]


def test_a_template_that_refuses_system_turns_leaves_them_to_counting():
    def no_system(messages):
        if any(m["role"] == "system" for m in messages):
            raise ValueError("system role not supported")
        return _template(messages)

    measured = prompt_bound.measure(no_system)
    assert measured["system"] is False
    assert prompt_bound.upper_bound(measured, [{"role": "user", "content": "hi"}]) is not None
    assert prompt_bound.upper_bound(measured, [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]) is None


def test_a_model_that_cannot_count_gets_no_bound():
    def refuses(messages):
        raise RuntimeError("this is an embedding model; it cannot generate")

    assert prompt_bound.measure(refuses) is None


def test_fits_answers_only_when_the_bound_is_inside_the_room():
    measured = prompt_bound.measure(_template)
    messages = [{"role": "user", "content": "x" * 100}]
    bound = prompt_bound.upper_bound(measured, messages)
    assert prompt_bound.fits(measured, messages, None, bound)
    assert not prompt_bound.fits(measured, messages, None, bound - 1)
    assert not prompt_bound.fits(measured, messages, [{"type": "function"}], 10**9)


def test_a_loaded_runner_reports_its_measured_framing(manager, gguf_path):
    manager.load(llama_spec(gguf_path))
    hello = [{"role": "user", "content": "hello"}]
    assert manager.prompt_fits("smol-gguf", hello, None, 500)
    assert not manager.prompt_fits("smol-gguf", [{"role": "user", "content": "word " * 200}], None, 500)
