"""Fixtures for the engine tests: real runner processes on the bundled SmolLM2 model.

These tests never touch Django; run them with `-p no:django`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from models_app.serving.engines.contract import GenerationParams, LoadSpec
from models_app.serving.engines.bundled import bundled_gguf_path
from models_app.serving.manager import EngineManager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FRANCE = [{"role": "user", "content": "Name the capital city of France."}]
JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]
GREEDY = GenerationParams(max_tokens=24, temperature=0)


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return bundled_gguf_path()


def linked(gguf: Path, path: Path) -> Path:
    """``path`` as a second name of ``gguf``: a hard link (resolving it keeps this name), else a copy."""
    try:
        os.link(gguf, path)
    except OSError:
        shutil.copyfile(gguf, path)
    return path


@contextlib.contextmanager
def engine_in_process(engine_class, spec: LoadSpec):
    """``engine_class`` loaded with ``spec`` in this process (no runner), closed afterwards."""
    engine = engine_class()
    engine.load(spec)
    try:
        yield engine
    finally:
        engine.close()


def llama_spec(gguf: Path, name: str = "smol-gguf", **parameters) -> LoadSpec:
    return LoadSpec(name=name, engine="llama.cpp", model_id=str(gguf), quantization="Q4_1",
                    parameters={"n_ctx": 512, **parameters})


def _new_manager(max_loaded_models: int = 4, keep_alive_s: float = 300) -> EngineManager:
    return EngineManager(memory_budget_mb=16_000, max_loaded_models=max_loaded_models,
                         default_keep_alive_s=keep_alive_s, load_timeout_s=240, shutdown_timeout_s=10)


@pytest.fixture(autouse=True)
def _earlier_runners_are_not_this_tests():
    _baseline.clear()
    _baseline.update(p.pid for p in _spawned_children())


@pytest.fixture
def manager():
    """A manager of this test's own: for tests that unload, crash, reconfigure or count runners."""
    mgr = _new_manager()
    yield mgr
    mgr.shutdown()


@pytest.fixture(scope="module")
def shared_manager():
    """One manager for a module's tests that only load and generate. A model stays loaded for the
    module's later tests (``load`` of a loaded name returns its runner), so a runner is started once
    per spec name instead of once per test; a test that unloads or breaks one uses ``manager``.
    Room for every engine case of test_engine_contract.py and no idle unload (a module can outlast the
    300 s keep-alive on a busy machine), so that none is unloaded and loaded again."""
    mgr = _new_manager(max_loaded_models=8, keep_alive_s=-1)
    yield mgr
    mgr.shutdown()


def _spawned_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=False):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


# Runners that other tests' managers (the Django runtime's, in a full run) had started before this
# test's manager existed; they are not this test's business.
_baseline: set[int] = set()


def runner_children() -> list[psutil.Process]:
    """Runner processes started by this test's manager (spawned multiprocessing children)."""
    return [p for p in _spawned_children() if p.pid not in _baseline]


def collect(handle):
    """Drain a handle: (joined text, number of deltas, the final event)."""
    deltas = []
    for event in handle:
        if event.kind == "delta":
            deltas.append(event.text)
        else:
            return "".join(deltas), len(deltas), event
    raise AssertionError("stream ended without done or error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(gguf_path):
    """llama-cpp-python's own OpenAI-compatible server; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512", "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("llama_cpp.server did not start")
        time.sleep(0.3)
    yield base_url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
