"""vLLM (CUDA only). Its AsyncLLM runs on a private event loop thread; generate() bridges to it."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import threading
import time
import uuid
from typing import Callable, Iterator

from .contract import (
    Engine,
    EngineError,
    EngineLoadError,
    EngineUnavailableError,
    GenerationParams,
    GenerationStats,
    LoadSpec,
    make_stats,
    resolve_sampling,
)
from .model_files import locate_model, scrub_paths
from .templates import chat_inputs, special_tokens_of
from .constraints import lark_grammar, normalize_constraint

VLLM_QUANTIZATIONS = ("awq", "gptq", "fp8", "squeezelm")
VLLM_DTYPES = ("auto", "float16", "bfloat16", "float32")
_ARG_PARAMETERS = ("gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "pipeline_parallel_size",
                   "distributed_executor_backend")


def cuda_gpu_count() -> int:
    """CUDA GPUs visible here, asked of NVML so that torch need not be imported."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def visible_gpu_count() -> int:
    """CUDA GPUs this process may use: the node's (NVML), cut down by ``CUDA_VISIBLE_DEVICES`` when set.

    A Ray actor is given only the GPUs it asked for this way (none: the variable is empty), which is
    what vLLM's own worker processes would see.
    """
    count = cuda_gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    return min(count, len([device for device in visible.split(",") if device.strip()]))


def build_engine_args(spec: LoadSpec, visible_gpus: int) -> dict:
    """vLLM engine arguments for an entry, on a node where this process can use ``visible_gpus`` GPUs.

    An entry whose ``tensor_parallel_size`` x ``pipeline_parallel_size`` is more GPUs than that, and
    that does not name a ``distributed_executor_backend`` itself, gets ``"ray"``: vLLM then places its
    workers on the Ray cluster this process is connected to (a runner under ``BEAUTYAI_PLACEMENT=ray``
    already is; otherwise vLLM connects to ``RAY_ADDRESS`` or starts a local Ray). One that fits is left
    to vLLM's default (worker processes on this node). Only the mapping is tested: a real run across
    nodes needs a Ray cluster of GPU hosts.
    """
    quant = (spec.quantization or "none").lower()
    if quant not in VLLM_QUANTIZATIONS + ("none",):
        raise EngineLoadError(f"quantization '{spec.quantization}' is not supported by vLLM "
                              f"({', '.join(VLLM_QUANTIZATIONS)} or none)")
    if spec.dtype not in VLLM_DTYPES:
        raise EngineLoadError(f"dtype '{spec.dtype}' is not supported by vLLM")
    args = {"model": spec.model_id, "quantization": None if quant == "none" else quant, "dtype": spec.dtype}
    for key in _ARG_PARAMETERS:
        if spec.parameters.get(key) is not None:
            args[key] = spec.parameters[key]
    if spec.parameters.get("trust_remote_code") is True:
        args["trust_remote_code"] = True
    world_size = _size(spec.parameters, "tensor_parallel_size") * _size(spec.parameters, "pipeline_parallel_size")
    if args.get("distributed_executor_backend") is None and world_size > visible_gpus:
        args["distributed_executor_backend"] = "ray"
    return args


def _size(parameters: dict, name: str) -> int:
    # Unset (or the registry's -1/0) is vLLM's default of 1; vLLM itself refuses a bad value.
    value = parameters.get(name)
    return value if isinstance(value, int) and value > 0 else 1


def structured_outputs(constraint: dict, sampling_params_module) -> dict:
    """SamplingParams keyword arguments for a constraint, for the vLLM installed (``vllm.sampling_params``).

    A bare schema is vLLM's ``json`` (``json_object`` without one). A prefix or suffix becomes a Lark
    grammar that embeds the schema (llguidance's ``%json``), which vLLM hands to its ``guidance``
    backend (the ``auto`` backend falls back to it when xgrammar cannot read the grammar).
    vLLM >= 0.10.2 calls it ``structured_outputs=StructuredOutputsParams``; older releases
    ``guided_decoding=GuidedDecodingParams`` with the same fields.
    """
    constraint = normalize_constraint(constraint)
    if constraint["prefix"] or constraint["suffix"]:
        fields = {"grammar": lark_grammar(constraint)}
    elif constraint["schema"] is None:
        fields = {"json_object": True}
    else:
        fields = {"json": constraint["schema"]}
    params_class = getattr(sampling_params_module, "StructuredOutputsParams", None)
    if params_class is not None:
        return {"structured_outputs": params_class(**fields)}
    return {"guided_decoding": sampling_params_module.GuidedDecodingParams(**fields)}


class VLLMEngine(Engine):
    max_concurrency = 64  # vLLM schedules and batches requests itself

    def __init__(self):
        self._engine = None
        self._tokenizer = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spec: LoadSpec | None = None
        self._max_len = 0

    @classmethod
    def preload(cls) -> None:
        # Imports only: vLLM creates its CUDA context and worker processes in AsyncLLM.from_engine_args.
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
        from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401

    def load(self, spec: LoadSpec) -> None:
        args = build_engine_args(spec, visible_gpu_count())
        if importlib.util.find_spec("vllm") is None:
            raise EngineUnavailableError("vLLM is not installed on this host")
        if cuda_gpu_count() == 0:
            raise EngineUnavailableError("vLLM needs a CUDA GPU; none found")
        args["model"] = str(locate_model(spec))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="vllm-loop").start()

        async def start():
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
            return engine, await engine.get_tokenizer()

        try:
            self._engine, self._tokenizer = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except Exception as exc:
            raise EngineLoadError(f"vLLM could not load the model: {exc.__class__.__name__}: "
                                  f"{scrub_paths(str(exc))[:500]}") from None
        self._spec = spec
        self._max_len = int(self._engine.model_config.max_model_len)

    def context_length(self) -> int:
        return self._max_len

    def chat_template(self) -> str | None:
        return getattr(self._tokenizer, "chat_template", None)

    def _prompt_ids(self, messages, enable_thinking=None, tools=None) -> list[int]:
        messages, extra = chat_inputs(self.chat_template(), messages, tools,
                                      lambda: special_tokens_of(self._tokenizer))
        if enable_thinking is not None:
            extra["enable_thinking"] = enable_thinking
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        return len(self._prompt_ids(messages, tools=tools))

    def generate(self, messages: list[dict], params: GenerationParams,
                 should_stop: Callable[[], bool]) -> Iterator[str | GenerationStats]:
        from vllm import SamplingParams, sampling_params
        from vllm.sampling_params import RequestOutputKind

        s = resolve_sampling(params, self._spec)
        constrained = structured_outputs(params.constraint, sampling_params) if params.constraint is not None else {}
        ids = self._prompt_ids(messages, params.enable_thinking, params.tools)
        sampling = SamplingParams(
            max_tokens=s.max_tokens, temperature=s.temperature, seed=s.seed, stop=list(s.stop) or None,
            top_p=1.0 if s.greedy or s.top_p is None else float(s.top_p),
            top_k=-1 if s.greedy or not s.top_k else int(s.top_k),
            repetition_penalty=float(s.repetition_penalty or 1.0), output_kind=RequestOutputKind.DELTA,
            **constrained)
        request_id = uuid.uuid4().hex
        out: queue.Queue = queue.Queue()

        async def produce():
            try:
                async for item in self._engine.generate({"prompt_token_ids": ids}, sampling, request_id):
                    out.put(item)
            except Exception as exc:
                out.put(exc)
            out.put(None)

        asyncio.run_coroutine_threadsafe(produce(), self._loop)
        started = time.perf_counter()
        first_at = None
        generated = 0
        finish = "stop"
        while True:
            try:
                item = out.get(timeout=0.1)
            except queue.Empty:
                item = False
            if should_stop():
                asyncio.run_coroutine_threadsafe(self._engine.abort(request_id), self._loop)
                finish = "cancelled"
                break
            if item is False:
                continue
            if item is None:
                break
            if isinstance(item, Exception):
                raise EngineError(f"vLLM generation failed: {item.__class__.__name__}")
            completion = item.outputs[0]
            generated += len(completion.token_ids)
            if completion.text:
                first_at = first_at or time.perf_counter()
                yield completion.text
            if completion.finish_reason:
                finish = "length" if completion.finish_reason == "length" else "stop"
        yield make_stats(len(ids), generated, finish, started, first_at, time.perf_counter())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        super().close()
