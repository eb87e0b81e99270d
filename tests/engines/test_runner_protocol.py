"""The runner answers every call under its id: results, failures and unknown ops reach the caller at once."""

from __future__ import annotations

import time

import pytest

from models_app.serving.engines.contract import EngineError, LoadSpec, PromptError

from .conftest import FRANCE, llama_spec

# The 60 s call timeout is what a caller waited for before a runner's error reply was routed.
AT_ONCE_S = 2.0


def timed(fn, *args):
    started = time.monotonic()
    try:
        return fn(*args), None, time.monotonic() - started
    except EngineError as exc:
        return None, exc, time.monotonic() - started


def test_a_call_that_fails_in_the_engine_answers_at_once_and_the_runner_keeps_serving(shared_manager, gguf_path):
    spec = llama_spec(gguf_path)
    shared_manager.load(spec)
    _, error, elapsed = timed(shared_manager.count_tokens, spec.name, [{"role": "user", "content": 5}])
    assert error is not None and not isinstance(error, PromptError)
    assert elapsed < AT_ONCE_S
    assert shared_manager.count_tokens(spec.name, FRANCE) > 0


def test_an_unknown_op_gets_an_error_reply(shared_manager, gguf_path):
    spec = llama_spec(gguf_path)
    shared_manager.load(spec)
    _, error, elapsed = timed(shared_manager._call, shared_manager._loaded_runner(spec.name), "no_such_op")
    assert "unknown runner op" in str(error)
    assert elapsed < AT_ONCE_S


@pytest.mark.slow
def test_a_template_that_refuses_the_roles_answers_a_prompt_error_with_its_message(manager, strict_template_dir):
    spec = LoadSpec(name="strict", engine="transformers", model_id=str(strict_template_dir), dtype="float32",
                    parameters={})
    manager.load(spec)
    two_user_turns = [{"role": "user", "content": "Hello"}, {"role": "user", "content": "Hello again"}]
    _, error, elapsed = timed(manager.count_tokens, spec.name, two_user_turns)
    assert isinstance(error, PromptError)
    assert "Conversation roles must alternate" in str(error)
    assert elapsed < AT_ONCE_S
    assert manager.count_tokens(spec.name, [{"role": "user", "content": "Hello"}]) > 0
