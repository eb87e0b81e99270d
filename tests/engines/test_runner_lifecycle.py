"""Runner processes under the EngineManager: streaming, cancelling, crashes, unloads, budgets."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from models_app.serving.engines.contract import EngineError, GenerationParams
from models_app.serving.manager import EngineManager, MemoryBudgetError

from .conftest import FRANCE, GREEDY, JAPAN, STORY, collect, linked, llama_spec, runner_children

LONG = GenerationParams(max_tokens=400, temperature=0)


def first_delta(handle):
    for event in handle:
        assert event.kind == "delta", event
        return event


def test_stream_yields_several_deltas_then_stats_with_length_finish(shared_manager, gguf_path):
    spec = llama_spec(gguf_path)
    shared_manager.load(spec)
    text, deltas, final = collect(shared_manager.generate(spec.name, STORY,
                                                          GenerationParams(max_tokens=12, temperature=0)))
    assert deltas >= 3 and text
    assert final.kind == "done"
    assert final.stats.finish_reason == "length"
    assert final.stats.prompt_tokens > 0
    assert 0 < final.stats.tokens_generated <= 12
    assert final.stats.tokens_per_second > 0


def test_count_tokens_matches_the_prompt_tokens_of_a_generation(shared_manager, gguf_path):
    spec = llama_spec(gguf_path)
    shared_manager.load(spec)
    _, _, final = collect(shared_manager.generate(spec.name, FRANCE, GenerationParams(max_tokens=2, temperature=0)))
    assert shared_manager.count_tokens(spec.name, FRANCE) == final.stats.prompt_tokens


def test_cancel_mid_stream_ends_with_cancelled_within_a_second(shared_manager, gguf_path):
    spec = llama_spec(gguf_path)
    shared_manager.load(spec)
    handle = shared_manager.generate(spec.name, STORY, LONG)
    first_delta(handle)
    cancelled_at = time.monotonic()
    handle.cancel()
    _, _, final = collect(handle)
    assert final.kind == "done"
    assert final.stats.finish_reason == "cancelled"
    assert time.monotonic() - cancelled_at < 1.0
    assert handle.queue_time_ms is not None


def test_kill_9_of_the_runner_mid_stream_marks_error_and_next_load_recovers(manager, gguf_path):
    spec = llama_spec(gguf_path)
    old_pid = manager.load(spec).pid
    handle = manager.generate(spec.name, STORY, LONG)
    first_delta(handle)
    os.kill(old_pid, signal.SIGKILL)

    _, _, final = collect(handle)
    assert final.kind == "error"
    status = manager.status(spec.name)
    assert status.status == "error"
    assert "SIGKILL" in status.last_error
    with pytest.raises(EngineError, match="model not loaded"):
        manager.generate(spec.name, FRANCE, GREEDY)

    new_pid = manager.load(spec).pid
    assert new_pid != old_pid
    text, _, final = collect(manager.generate(spec.name, FRANCE, GREEDY))
    assert final.kind == "done" and "Paris" in text


def test_unload_during_a_stream_ends_it_and_the_runner_is_gone(manager, gguf_path):
    spec = llama_spec(gguf_path)
    pid = manager.load(spec).pid
    handle = manager.generate(spec.name, STORY, LONG)
    first_delta(handle)

    assert manager.unload(spec.name) is True
    _, _, final = collect(handle)
    assert final.kind == "error"
    assert final.message == "cancelled: model unloaded"
    assert final.stats.finish_reason == "cancelled"
    assert not psutil.pid_exists(pid)
    assert manager.status(spec.name).status == "unloaded"
    assert manager.unload(spec.name) is False


def test_twenty_concurrent_loads_share_one_runner(manager, gguf_path):
    spec = llama_spec(gguf_path)
    with ThreadPoolExecutor(20) as pool:
        infos = list(pool.map(lambda _: manager.load(spec), range(20)))
    assert len({info.pid for info in infos}) == 1
    assert all(info.status == "loaded" for info in infos)
    assert [p.pid for p in runner_children()] == [infos[0].pid]


def test_concurrent_generations_queue_fifo_on_a_single_slot_engine(shared_manager, gguf_path):
    spec = llama_spec(gguf_path)
    shared_manager.load(spec)
    handles = [shared_manager.generate(spec.name, FRANCE, GenerationParams(max_tokens=8, temperature=0))
               for _ in range(3)]
    status = shared_manager.status(spec.name)
    assert status.active_requests == 1 and status.queue_depth == 2
    results = []
    threads = [threading.Thread(target=lambda h=h: results.append(collect(h))) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 3 and all(final.kind == "done" for _, _, final in results)
    assert handles[2].queue_time_ms >= handles[0].queue_time_ms


def test_status_memory_matches_the_runner_rss(manager, gguf_path):
    spec = llama_spec(gguf_path)
    pid = manager.load(spec).pid
    measured = psutil.Process(pid).memory_info().rss / (1024 * 1024)
    reported = manager.status(spec.name).memory_usage_mb
    assert reported == pytest.approx(measured, rel=0.05)
    assert manager.loaded()[0].name == spec.name


def test_tiny_memory_budget_refuses_with_needed_and_available(gguf_path):
    mgr = EngineManager(memory_budget_mb=10, max_loaded_models=2, default_keep_alive_s=60)
    try:
        with pytest.raises(MemoryBudgetError) as err:
            mgr.load(llama_spec(gguf_path))
        assert err.value.needed_mb > 10
        assert err.value.available_mb == 10
        assert err.value.loaded_models == []
        assert runner_children() == []
    finally:
        mgr.shutdown()


def test_the_memory_budget_counts_a_gguf_file_whatever_its_name(gguf_path, tmp_path):
    mgr = EngineManager(memory_budget_mb=10, max_loaded_models=2, default_keep_alive_s=60)
    needed = {}
    try:
        for name in ("model.gguf", "model.bin", "model"):
            with pytest.raises(MemoryBudgetError) as err:
                mgr.load(llama_spec(linked(gguf_path, tmp_path / name), name=name.replace(".", "-")))
            needed[name] = err.value.needed_mb
    finally:
        mgr.shutdown()
    assert needed["model.gguf"] > gguf_path.stat().st_size / (1024 * 1024)
    assert needed["model.bin"] == needed["model"] == needed["model.gguf"]


def test_least_recently_used_idle_model_is_evicted_for_a_new_one(gguf_path):
    mgr = EngineManager(memory_budget_mb=16_000, max_loaded_models=1, default_keep_alive_s=60)
    try:
        first = mgr.load(llama_spec(gguf_path, name="first"))
        second = mgr.load(llama_spec(gguf_path, name="second"))
        assert mgr.status("first").status == "unloaded"
        assert not psutil.pid_exists(first.pid)
        assert second.status == "loaded"
        assert [info.name for info in mgr.loaded()] == ["second"]
    finally:
        mgr.shutdown()


def test_busy_model_is_not_evicted_and_the_new_load_is_refused(gguf_path):
    mgr = EngineManager(memory_budget_mb=16_000, max_loaded_models=1, default_keep_alive_s=60)
    try:
        mgr.load(llama_spec(gguf_path, name="busy"))
        handle = mgr.generate("busy", STORY, LONG)
        with pytest.raises(MemoryBudgetError) as err:
            mgr.load(llama_spec(gguf_path, name="other"))
        assert err.value.loaded_models == ["busy"]
        handle.cancel()
        collect(handle)
    finally:
        mgr.shutdown()


def test_five_load_unload_cycles_keep_this_process_rss_flat(manager, gguf_path):
    spec = llama_spec(gguf_path)
    manager.load(spec)
    manager.unload(spec.name)
    before = psutil.Process().memory_info().rss
    for _ in range(5):
        manager.load(spec)
        collect(manager.generate(spec.name, FRANCE, GenerationParams(max_tokens=4, temperature=0)))
        manager.unload(spec.name)
    grown_mb = (psutil.Process().memory_info().rss - before) / (1024 * 1024)
    assert grown_mb < 50
    assert runner_children() == []


def test_keep_alive_expiry_unloads_an_idle_model(manager, gguf_path):
    spec = llama_spec(gguf_path, keep_alive_seconds=1)
    pid = manager.load(spec).pid
    assert manager.status(spec.name).expires_at is not None
    assert manager.unload_idle() == []
    deadline = time.monotonic() + 6
    while manager.status(spec.name).status != "unloaded" and time.monotonic() < deadline:
        time.sleep(0.25)
        manager.unload_idle()
    assert manager.status(spec.name).status == "unloaded"
    assert not psutil.pid_exists(pid)


def test_keep_alive_minus_one_never_expires(manager, gguf_path):
    spec = llama_spec(gguf_path, keep_alive_seconds=-1)
    manager.load(spec)
    time.sleep(2.5)  # the time passing is what is tested: past the 1 s expiry of the test above
    assert manager.unload_idle() == []
    status = manager.status(spec.name)
    assert status.status == "loaded" and status.expires_at is None


def test_release_caches_reaches_every_runner(manager, gguf_path):
    first, second = llama_spec(gguf_path), llama_spec(gguf_path, name="smol-gguf-2")
    manager.load(first)
    manager.load(second)
    assert manager.release_caches() == ["smol-gguf", "smol-gguf-2"]  # each runner answered the call
    assert manager.status("smol-gguf").status == "loaded" and manager.status("smol-gguf-2").status == "loaded"


def test_a_handle_can_be_consumed_from_asyncio(shared_manager, gguf_path):
    import asyncio

    spec = llama_spec(gguf_path)
    shared_manager.load(spec)

    async def consume():
        handle = shared_manager.generate(spec.name, FRANCE, GREEDY)
        return [event async for event in handle]

    events = asyncio.run(consume())
    assert events[-1].kind == "done"
    assert "Paris" in "".join(e.text for e in events if e.kind == "delta")


def test_transformers_with_max_batch_size_serves_two_chats_at_once(manager, safetensors_dir):
    from models_app.serving.engines.contract import LoadSpec

    spec = LoadSpec(name="batched", engine="transformers", model_id=str(safetensors_dir),
                    parameters={"max_batch_size": 2})
    manager.load(spec)
    handles = [manager.generate("batched", messages, GREEDY) for messages in (FRANCE, JAPAN)]
    assert manager.status("batched").active_requests == 2
    with ThreadPoolExecutor(2) as pool:
        (paris, _, done1), (tokyo, _, done2) = pool.map(collect, handles)
    assert done1.kind == done2.kind == "done"
    assert "Paris" in paris and "Tokyo" in tokyo
