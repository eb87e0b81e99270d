"""Standalone GPU check, for a machine with CUDA: run `HF_HUB_OFFLINE=1 python tests/gpu/check_cuda.py`.

Loads the bundled model with the transformers engine on CUDA in a runner process,
streams a chat, reads the runner's GPU memory by pid through NVML, unloads it and
checks the GPU memory goes back to where it started. Prints a report; exits non-zero
on failure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models_app.serving.engines.contract import GenerationParams, LoadSpec  # noqa: E402
from models_app.serving.engines.bundled import ensure_safetensors_folder  # noqa: E402
from models_app.serving.manager import EngineManager  # noqa: E402
from models_app.serving.hardware import gpu_memory_mb  # noqa: E402

TOLERANCE_MIB = 64


def gpu_used_mib() -> float:
    import pynvml

    pynvml.nvmlInit()
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / (1024 * 1024)
    finally:
        pynvml.nvmlShutdown()


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("FAIL: no CUDA GPU visible to torch")
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    folder = ensure_safetensors_folder(Path(tempfile.gettempdir()) / "beautyai-smollm2-safetensors")
    mgr = EngineManager(memory_budget_mb=64_000, max_loaded_models=1, default_keep_alive_s=60)
    baseline = gpu_used_mib()
    ok = True
    try:
        started = time.monotonic()
        info = mgr.load(LoadSpec(name="cuda", engine="transformers", model_id=str(folder), dtype="float16",
                                 parameters={"device": "cuda"}))
        print(f"loaded in {time.monotonic() - started:.1f}s, runner pid {info.pid}")
        text, stats = "", None
        for event in mgr.generate("cuda", [{"role": "user", "content": "Name the capital city of France."}],
                                  GenerationParams(max_tokens=24, temperature=0)):
            if event.kind == "delta":
                text += event.text
            else:
                stats = event.stats
                if event.kind == "error":
                    print(f"FAIL: generation error: {event.message}")
                    ok = False
        print(f"answer: {text!r}")
        print(f"stats: {stats}")
        ok &= "Paris" in text
        runner_gpu = gpu_memory_mb(info.pid)
        print(f"runner GPU memory by pid: {runner_gpu:.0f} MiB; status reports {mgr.status('cuda').memory_usage_mb:.0f} MiB")
        ok &= runner_gpu > 0
        mgr.unload("cuda")
    finally:
        mgr.shutdown()
    deadline = time.monotonic() + 10
    while gpu_used_mib() - baseline > TOLERANCE_MIB and time.monotonic() < deadline:
        time.sleep(0.5)
    after = gpu_used_mib()
    print(f"GPU used: before {baseline:.0f} MiB, after unload {after:.0f} MiB")
    ok &= after - baseline <= TOLERANCE_MIB
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
