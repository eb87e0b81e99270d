"""Memory estimates for a model before it loads, used by the manager's budget."""

from __future__ import annotations

import json
from pathlib import Path

from .contract import EngineError, LoadSpec
from .model_files import gguf_file_for, inspect_gguf, locate_model


def _safetensors_parameter_count(files: list[Path]) -> int | None:
    total = 0
    for file in files:
        try:
            with open(file, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                if header_len <= 0 or header_len > 100_000_000:
                    return None
                header = json.loads(fh.read(header_len))
        except (OSError, ValueError):
            return None
        for key, info in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in info.get("shape", []):
                count *= int(dim)
            total += count
    return total


_BYTES_PER_PARAM = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
_RUNTIME_OVERHEAD_MB = {"llama.cpp": 150.0, "transformers": 400.0, "vllm": 1024.0, "openai": 60.0}
MIB = 1024 * 1024


def estimate_memory_mb(spec: LoadSpec) -> float:
    """Rough memory a runner for `spec` will need, in MiB, decided before loading it.

    Rule (weights + fixed runtime overhead per engine: llama.cpp 150, transformers 400,
    vllm 1024, openai 60 MiB):
      * openai: overhead only (the weights live on the remote server).
      * llama.cpp: GGUF file size (it is mmapped and used as is) + KV cache of
        n_ctx * 0.25 MiB.
      * transformers on a GGUF file: weights are dequantized, so parameter count (from the
        GGUF tensor table) * 4 bytes (fp32), or * 2 for float16/bfloat16.
      * transformers / vllm on safetensors: total safetensors size as stored for dtype
        "auto"; parameter count * bytes of the requested dtype otherwise.
      * 4bit: parameter count * 0.5 bytes (fp16 size / 4); 8bit: * 1 byte (fp16 size / 2).
    A model that cannot be found locally counts as overhead only; its load fails later
    with a precise message.
    """
    overhead = _RUNTIME_OVERHEAD_MB.get(spec.engine, 200.0)
    if spec.engine == "openai":
        return overhead
    try:
        path = locate_model(spec)
    except EngineError:
        return overhead
    gguf_path = gguf_file_for(spec, path)
    if gguf_path is not None:
        try:
            size = gguf_path.stat().st_size
        except OSError:
            return overhead
        if spec.engine == "llama.cpp":
            n_ctx = int(spec.parameters.get("n_ctx", 2048))
            return size / MIB + n_ctx * 0.25 + overhead
        try:
            params = inspect_gguf(gguf_path)["parameter_count"]
        except EngineError:
            return size / MIB + overhead
        weights = params * _quantized_bytes(spec, default=4.0)
        return weights / MIB + overhead
    if not path.is_dir():
        return overhead
    files = sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    params = _safetensors_parameter_count(files) if files else None
    if params is None:
        return size / MIB + overhead
    if spec.quantization in ("4bit", "8bit") or spec.dtype in _BYTES_PER_PARAM:
        return params * _quantized_bytes(spec, default=size / max(params, 1)) / MIB + overhead
    return size / MIB + overhead


def _quantized_bytes(spec: LoadSpec, default: float) -> float:
    if spec.quantization == "4bit":
        return 0.5
    if spec.quantization == "8bit":
        return 1.0
    return _BYTES_PER_PARAM.get(spec.dtype, default)
