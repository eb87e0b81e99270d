"""GPU checks: a transformers runner on CUDA, its memory seen by pid through NVML, and freed on unload."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from models_app.serving.engines.contract import LoadSpec  # noqa: E402
from models_app.serving.manager import EngineManager  # noqa: E402
from models_app.serving.hardware import gpu_memory_mb  # noqa: E402

from .conftest import FRANCE, GREEDY, collect  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _gpu_used_mib() -> float:
    import pynvml

    pynvml.nvmlInit()
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / (1024 * 1024)
    finally:
        pynvml.nvmlShutdown()


def test_transformers_on_cuda_uses_and_then_frees_gpu_memory(safetensors_dir):
    mgr = EngineManager(memory_budget_mb=64_000, max_loaded_models=1, default_keep_alive_s=60)
    baseline = _gpu_used_mib()
    try:
        spec = LoadSpec(name="cuda", engine="transformers", model_id=str(safetensors_dir), dtype="float16",
                        parameters={"device": "cuda"})
        info = mgr.load(spec)
        text, deltas, final = collect(mgr.generate("cuda", FRANCE, GREEDY))
        assert final.kind == "done" and "Paris" in text and deltas > 1
        assert gpu_memory_mb(info.pid) > 0
        assert mgr.status("cuda").memory_usage_mb > gpu_memory_mb(info.pid)
        assert mgr.unload("cuda")
    finally:
        mgr.shutdown()
    deadline = time.monotonic() + 10
    while _gpu_used_mib() - baseline > 64 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _gpu_used_mib() - baseline <= 64
