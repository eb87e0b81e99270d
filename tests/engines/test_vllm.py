"""vLLM cannot run here; its argument mapping and its refusal can still be checked."""

from __future__ import annotations

import importlib.util

import pytest

from models_app.serving.engines import engine_available
from models_app.serving.engines.contract import EngineLoadError, EngineUnavailableError, LoadSpec
from models_app.serving.engines.vllm_engine import VLLMEngine, build_engine_args, cuda_gpu_count


def test_build_engine_args_maps_the_spec():
    spec = LoadSpec(name="m", engine="vllm", model_id="org/model-awq", quantization="AWQ", dtype="float16",
                    parameters={"gpu_memory_utilization": 0.8, "max_model_len": 4096, "tensor_parallel_size": 2,
                                "pipeline_parallel_size": 1, "distributed_executor_backend": "ray",
                                "trust_remote_code": True, "n_ctx": 99})
    assert build_engine_args(spec) == {
        "model": "org/model-awq", "quantization": "awq", "dtype": "float16", "gpu_memory_utilization": 0.8,
        "max_model_len": 4096, "tensor_parallel_size": 2, "pipeline_parallel_size": 1,
        "distributed_executor_backend": "ray", "trust_remote_code": True}


def test_build_engine_args_leaves_out_unset_options_and_remote_code():
    spec = LoadSpec(name="m", engine="vllm", model_id="org/model", parameters={"trust_remote_code": "yes"})
    assert build_engine_args(spec) == {"model": "org/model", "quantization": None, "dtype": "auto"}


def test_build_engine_args_refuses_quantizations_vllm_cannot_run():
    with pytest.raises(EngineLoadError, match="not supported by vLLM"):
        build_engine_args(LoadSpec(name="m", engine="vllm", model_id="org/model", quantization="4bit"))


def test_vllm_load_says_why_it_cannot_run_here():
    if importlib.util.find_spec("vllm") is not None and cuda_gpu_count() > 0:
        pytest.skip("vLLM can run on this host")
    expected = ("vLLM is not installed on this host" if importlib.util.find_spec("vllm") is None
                else "vLLM needs a CUDA GPU; none found")
    with pytest.raises(EngineUnavailableError, match=expected):
        VLLMEngine().load(LoadSpec(name="m", engine="vllm", model_id="org/model"))
    assert engine_available("vllm")[0] is False


def test_engine_availability_is_reported_without_importing_libraries():
    import sys

    assert engine_available("llama.cpp") == (True, "available")
    assert engine_available("nope")[0] is False
    assert "vllm" not in sys.modules
