"""vLLM cannot run here; its argument mapping and its refusal can still be checked."""

from __future__ import annotations

import importlib.util

import pytest

from models_app.serving.engines import engine_available
from models_app.serving.engines.contract import EngineLoadError, EngineUnavailableError, LoadSpec
from models_app.serving.engines import vllm_engine
from models_app.serving.engines.vllm_engine import VLLMEngine, build_engine_args, cuda_gpu_count


def test_build_engine_args_maps_the_spec():
    spec = LoadSpec(name="m", engine="vllm", model_id="org/model-awq", quantization="AWQ", dtype="float16",
                    parameters={"gpu_memory_utilization": 0.8, "max_model_len": 4096, "tensor_parallel_size": 2,
                                "pipeline_parallel_size": 1, "distributed_executor_backend": "ray",
                                "trust_remote_code": True, "n_ctx": 99})
    assert build_engine_args(spec, visible_gpus=2) == {
        "model": "org/model-awq", "quantization": "awq", "dtype": "float16", "gpu_memory_utilization": 0.8,
        "max_model_len": 4096, "tensor_parallel_size": 2, "pipeline_parallel_size": 1,
        "distributed_executor_backend": "ray", "trust_remote_code": True}


def test_build_engine_args_leaves_out_unset_options_and_remote_code():
    spec = LoadSpec(name="m", engine="vllm", model_id="org/model", parameters={"trust_remote_code": "yes"})
    assert build_engine_args(spec, visible_gpus=1) == {"model": "org/model", "quantization": None, "dtype": "auto"}


def test_build_engine_args_refuses_quantizations_vllm_cannot_run():
    with pytest.raises(EngineLoadError, match="not supported by vLLM"):
        build_engine_args(LoadSpec(name="m", engine="vllm", model_id="org/model", quantization="4bit"), 1)


def parallel_spec(**parameters) -> LoadSpec:
    return LoadSpec(name="m", engine="vllm", model_id="org/model", parameters=parameters)


@pytest.mark.parametrize("parameters,visible_gpus", [
    ({}, 1),
    ({"tensor_parallel_size": 8}, 8),
    ({"tensor_parallel_size": 4, "pipeline_parallel_size": 2}, 8),
    ({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, 8),
])
def test_an_entry_that_fits_on_this_node_is_left_to_vllms_default_executor(parameters, visible_gpus):
    assert "distributed_executor_backend" not in build_engine_args(parallel_spec(**parameters), visible_gpus)


@pytest.mark.parametrize("parameters,visible_gpus", [
    ({"tensor_parallel_size": 8, "pipeline_parallel_size": 2}, 8),
    ({"tensor_parallel_size": 16}, 8),
    ({"pipeline_parallel_size": 2}, 1),
    # A runner given no GPU of its own (a Ray actor with num_gpus 0) has vLLM's worker placed by Ray.
    ({}, 0),
])
def test_an_entry_larger_than_this_node_runs_its_vllm_workers_on_the_ray_cluster(parameters, visible_gpus):
    assert build_engine_args(parallel_spec(**parameters), visible_gpus)["distributed_executor_backend"] == "ray"


@pytest.mark.parametrize("backend", ["mp", "uni", "ray"])
def test_an_executor_the_entry_names_is_kept_whatever_this_node_has(backend):
    for visible_gpus in (0, 8, 64):
        spec = parallel_spec(tensor_parallel_size=16, distributed_executor_backend=backend)
        assert build_engine_args(spec, visible_gpus)["distributed_executor_backend"] == backend


@pytest.mark.parametrize("cuda_visible_devices,node_gpus,visible", [
    (None, 8, 8), ("0,1", 8, 2), ("GPU-5f3c,GPU-77aa,GPU-0b12", 8, 3), ("", 8, 0), ("0,1,2,3", 2, 2), (None, 0, 0),
])
def test_the_gpus_this_runner_can_see_are_the_nodes_cut_down_by_cuda_visible_devices(
        monkeypatch, cuda_visible_devices, node_gpus, visible):
    monkeypatch.setattr(vllm_engine, "cuda_gpu_count", lambda: node_gpus)
    if cuda_visible_devices is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible_devices)
    assert vllm_engine.visible_gpu_count() == visible


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
