"""Spare runners: a process per engine with its libraries imported, taken by the next load of that engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from models_app.serving.engines.contract import LoadSpec

from .conftest import FRANCE, GREEDY, collect, llama_spec, runner_children


@pytest.fixture
def spare_manager(manager):
    manager.spares = True
    return manager


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` has exited (a zombie waiting to be reaped counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_after_the_first_load_a_spare_waits_and_is_not_a_loaded_model(spare_manager, gguf_path):
    info = spare_manager.load(llama_spec(gguf_path))
    spares = spare_manager.spare_pids()
    assert list(spares) == ["llama.cpp"]
    assert spares["llama.cpp"] != info.pid and psutil.pid_exists(spares["llama.cpp"])
    assert not info.prestarted
    assert [i.name for i in spare_manager.loaded()] == [info.name]
    assert {p.pid for p in runner_children()} == {info.pid, spares["llama.cpp"]}


def test_the_next_load_of_the_engine_runs_in_the_spare_and_a_new_spare_follows(spare_manager, gguf_path):
    first = spare_manager.load(llama_spec(gguf_path, name="first"))
    spare = spare_manager.spare_pids()["llama.cpp"]
    spare_manager.unload("first")
    assert not psutil.pid_exists(first.pid) and psutil.pid_exists(spare)

    second = spare_manager.load(llama_spec(gguf_path, name="second"))
    assert second.pid == spare and second.prestarted
    assert spare_manager.status("second").prestarted
    text, _, final = collect(spare_manager.generate("second", FRANCE, GREEDY))
    assert final.kind == "done" and "Paris" in text
    replacement = spare_manager.spare_pids()["llama.cpp"]
    assert replacement not in (first.pid, second.pid) and psutil.pid_exists(replacement)
    assert [i.name for i in spare_manager.loaded()] == ["second"]


def test_a_spare_killed_with_sigkill_falls_back_to_a_fresh_runner_and_is_replaced(spare_manager, gguf_path):
    spare_manager.load(llama_spec(gguf_path, name="first"))
    dead = spare_manager.spare_pids()["llama.cpp"]
    os.kill(dead, signal.SIGKILL)
    assert wait_gone(dead)

    second = spare_manager.load(llama_spec(gguf_path, name="second"))
    assert second.status == "loaded" and not second.prestarted and second.pid != dead
    text, _, final = collect(spare_manager.generate("second", FRANCE, GREEDY))
    assert final.kind == "done" and "Paris" in text
    assert spare_manager.spare_pids()["llama.cpp"] not in (dead, second.pid)


def test_shutdown_leaves_no_spare_and_no_runner(spare_manager, gguf_path):
    info = spare_manager.load(llama_spec(gguf_path))
    spare = spare_manager.spare_pids()["llama.cpp"]
    spare_manager.shutdown()
    assert spare_manager.spare_pids() == {}
    assert runner_children() == []
    assert not psutil.pid_exists(info.pid) and not psutil.pid_exists(spare)


def test_without_spares_no_spare_is_ever_started(manager, gguf_path):
    info = manager.load(llama_spec(gguf_path))
    assert not info.prestarted
    assert manager.spare_pids() == {}
    assert [p.pid for p in runner_children()] == [info.pid]


def test_a_transformers_load_in_a_spare_skips_the_library_imports(spare_manager, safetensors_dir):
    def spec(name):
        return LoadSpec(name=name, engine="transformers", model_id=str(safetensors_dir), dtype="float32")

    first = spare_manager.load(spec("hf-first"))
    spare = spare_manager.spare_pids()["transformers"]
    second = spare_manager.load(spec("hf-second"))
    assert second.pid == spare and second.prestarted
    # The runner times its load from the load message on; a spare has imported torch and
    # transformers before reading it, a fresh runner pays for them inside the load.
    assert second.load_time_seconds < first.load_time_seconds
    text, _, final = collect(spare_manager.generate("hf-second", FRANCE, GREEDY))
    assert final.kind == "done" and "Paris" in text


def test_spares_and_runners_exit_when_the_web_process_is_killed(gguf_path):
    script = textwrap.dedent(f"""
        import time
        from models_app.serving.engines.contract import LoadSpec
        from models_app.serving.manager import EngineManager

        if __name__ == "__main__":
            mgr = EngineManager(memory_budget_mb=16_000, max_loaded_models=2, default_keep_alive_s=300, spares=True)
            info = mgr.load(LoadSpec(name="m", engine="llama.cpp", model_id={str(gguf_path)!r},
                                     quantization="Q4_1", parameters={{"n_ctx": 512}}))
            print(info.pid, mgr.spare_pids()["llama.cpp"], flush=True)
            time.sleep(300)
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    web = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        runner, spare = (int(pid) for pid in web.stdout.readline().split())
        web.kill()
        web.wait()
        assert wait_gone(runner) and wait_gone(spare)
    finally:
        web.kill()
        web.wait()
