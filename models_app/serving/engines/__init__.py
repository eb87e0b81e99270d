"""Registry of inference engines, imported lazily so the web process never loads an ML library."""

from __future__ import annotations

import importlib
import importlib.util

ENGINES = {
    "transformers": "models_app.serving.engines.transformers_engine.TransformersEngine",
    "llama.cpp": "models_app.serving.engines.llama_cpp_engine.LlamaCppEngine",
    "vllm": "models_app.serving.engines.vllm_engine.VLLMEngine",
    "openai": "models_app.serving.engines.openai_engine.OpenAIEngine",
}

_REQUIRED_MODULES = {
    "transformers": ("torch", "transformers"),
    "llama.cpp": ("llama_cpp",),
    "vllm": ("vllm",),
    "openai": ("httpx",),
}


def get_engine_class(name: str):
    from .contract import EngineLoadError

    try:
        dotted = ENGINES[name]
    except KeyError:
        raise EngineLoadError(f"unknown engine: {name}") from None
    module_name, class_name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)


def engine_available(name: str) -> tuple[bool, str]:
    """Whether `name` can run here, judged without importing its library."""
    if name not in ENGINES:
        return False, f"unknown engine: {name}"
    for module in _REQUIRED_MODULES[name]:
        if importlib.util.find_spec(module) is None:
            return False, f"Python package '{module}' is not installed"
    if name == "vllm":
        from .vllm_engine import cuda_gpu_count

        if cuda_gpu_count() == 0:
            return False, "vLLM needs a CUDA GPU; none found"
    return True, "available"
