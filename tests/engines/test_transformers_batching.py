"""Continuous batching in the transformers engine (parameters max_batch_size > 1), through real runners."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from models_app.serving.engines.contract import GenerationParams, LoadSpec

from .conftest import FRANCE, GREEDY, JAPAN, STORY, collect

STORY_24 = GenerationParams(max_tokens=24, temperature=0)


def _load(manager, safetensors_dir, name: str, **parameters) -> str:
    # One torch thread: on a small shared CPU, two OpenMP threads that wait on each other at every
    # barrier make timings (and the test's wall time) swing by several times.
    parameters.setdefault("n_threads", 1)
    manager.load(LoadSpec(name=name, engine="transformers", model_id=str(safetensors_dir), parameters=parameters))
    return name


def _run_together(manager, name: str, requests: list[tuple[list[dict], GenerationParams]]):
    """Submit every request at once; (results in order, wall seconds until the last one ended)."""
    started = time.perf_counter()
    handles = [manager.generate(name, messages, params) for messages, params in requests]
    with ThreadPoolExecutor(len(handles)) as pool:
        results = list(pool.map(collect, handles))
    return results, time.perf_counter() - started


def test_four_concurrent_greedy_chats_are_batched_and_match_their_answers_alone(manager, safetensors_dir, capsys):
    single = _load(manager, safetensors_dir, "one-at-a-time")
    batched = _load(manager, safetensors_dir, "batched", max_batch_size=4)

    alone = {}
    for key, messages in (("france", FRANCE), ("japan", JAPAN)):
        (text, _, final), = _run_together(manager, single, [(messages, GREEDY)])[0]
        assert final.kind == "done", final.message
        alone[key] = (text, final.stats.tokens_generated)
    assert "Paris" in alone["france"][0] and "Tokyo" in alone["japan"][0]

    keys = ["france", "japan", "france", "japan"]
    requests = [(FRANCE if key == "france" else JAPAN, GREEDY) for key in keys]
    results, _ = _run_together(manager, batched, requests)
    for key, (text, _, final) in zip(keys, results):
        assert final.kind == "done", final.message
        assert ("Paris" if key == "france" else "Tokyo") in text
        # Greedy decoding in a batch gives what the same prompt gives alone, token for token.
        assert (text, final.stats.tokens_generated) == alone[key]
        assert final.stats.finish_reason == "stop"
        assert final.stats.prompt_tokens == manager.count_tokens(batched, FRANCE if key == "france" else JAPAN)
        assert final.stats.time_to_first_token_ms > 0

    # Throughput: a measurement, printed, not asserted (shared CI machines are noisy).
    [(_, _, one)], one_s = _run_together(manager, single, [(STORY, STORY_24)])
    four, four_s = _run_together(manager, batched, [(STORY, STORY_24)] * 4)
    assert one.stats.tokens_generated == 24
    assert [final.stats.tokens_generated for _, _, final in four] == [24] * 4
    single_rate, batch_rate = 24 / one_s, 96 / four_s
    with capsys.disabled():
        print(f"\n[transformers batching, n_threads=1] 1 stream (one at a time): {single_rate:.1f} tok/s; "
              f"4 concurrent streams (batched): {batch_rate:.1f} tok/s aggregate; "
              f"ratio {batch_rate / single_rate:.2f}")


def test_cancelling_one_batched_stream_leaves_the_others_finishing(manager, safetensors_dir):
    name = _load(manager, safetensors_dir, "batched", max_batch_size=4)
    handles = [manager.generate(name, STORY, STORY_24) for _ in range(3)]
    victim = handles[1]
    assert next(iter(victim)).kind == "delta"
    victim.cancel()
    # A late arrival joins the running batch; its stop string ends it early.
    handles.append(manager.generate(name, FRANCE, GenerationParams(max_tokens=24, temperature=0, stop=["Paris"])))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(collect, handles))

    _, _, cancelled = results[1]
    assert cancelled.kind == "done" and cancelled.stats.finish_reason == "cancelled"
    assert cancelled.stats.tokens_generated < 24
    survivors = [results[0], results[2]]
    for text, _, final in survivors:
        assert final.kind == "done", final.message
        assert final.stats.finish_reason == "length" and final.stats.tokens_generated == 24
    # The batch changed shape mid-way (one left, one joined); the survivors' greedy text is unaffected.
    assert survivors[0][0] == survivors[1][0]
    text, _, final = results[3]
    assert final.kind == "done" and final.stats.finish_reason == "stop"
    assert "Paris" not in text and "France" in text
