"""Hugging Face transformers: safetensors folders, GGUF files (dequantized) and bitsandbytes 4/8-bit.

Generation is a hand-written token loop rather than `model.generate`, so that every
step can check for cancellation, time the first token, count tokens exactly and apply
stop strings without a helper thread.

Concurrency when parameters["max_batch_size"] > 1: the runner lets that many generate()
calls run at once and each call runs its own loop; a lock around the forward pass
interleaves them token by token. This is fair sharing, not true batching (no padded
batch KV cache), so total throughput stays that of one sequence.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
import time
from pathlib import Path
from typing import Callable, Iterator

from .base import (
    Engine,
    EngineError,
    EngineLoadError,
    EngineUnavailableError,
    GenerationParams,
    GenerationStats,
    LoadSpec,
    inspect_gguf,
    locate_model,
    make_stats,
    prompt_segments,
    render_chat_template,
    resolve_sampling,
    scrub_paths,
    with_content_markers,
)
from .llama_cpp_engine import CHATML_TEMPLATE

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
BNB_QUANTIZATIONS = ("4bit", "8bit")


def _is_gguf_type(quantization: str) -> bool:
    q = quantization.upper()
    return q.startswith(("Q", "IQ", "F16", "F32", "BF16", "TQ"))


class TransformersEngine(Engine):
    def __init__(self):
        self._model = None
        self._tokenizer = None
        self._spec: LoadSpec | None = None
        self._device = "cpu"
        self._eos_ids: set[int] = set()
        self._forward_lock = threading.Lock()

    def load(self, spec: LoadSpec) -> None:
        p = spec.parameters
        quant = (spec.quantization or "none").strip()
        path = locate_model(spec)
        if not path.exists():
            raise EngineLoadError(f"model not found: {path.name}")
        gguf_file = p.get("gguf_file")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise EngineLoadError("transformers needs a model folder or a .gguf file")
            path, gguf_file = path.parent, path.name
        if gguf_file:
            inspect_gguf(path / gguf_file)
        else:
            self._check_folder(path, allow_pickle=p.get("allow_pickle_weights") is True)
        if quant.lower() not in ("none", "") + BNB_QUANTIZATIONS and not (gguf_file and _is_gguf_type(quant)):
            raise EngineLoadError(f"quantization '{quant}' is not supported by the transformers engine "
                                  "(use 4bit, 8bit or none)")

        try:
            import torch
            import transformers
        except ImportError as exc:
            raise EngineUnavailableError(f"{exc.name or 'transformers'} is not installed on this host") from None

        device = str(p.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailableError("device 'cuda' was requested but no CUDA GPU was found")
        on_cpu = device == "cpu"
        dtype = self._dtype(torch, spec.dtype, on_cpu, allow_half=p.get("allow_half_on_cpu") is True)

        kwargs = {"local_files_only": True, "trust_remote_code": p.get("trust_remote_code") is True}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        model_kwargs = dict(kwargs, dtype=dtype)
        if not gguf_file and p.get("allow_pickle_weights") is not True:
            model_kwargs["use_safetensors"] = True
        if quant.lower() in BNB_QUANTIZATIONS:
            if importlib.util.find_spec("bitsandbytes") is None:
                raise EngineUnavailableError("bitsandbytes is not installed on this host")
            compute = torch.float32 if on_cpu else (dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16)
            if quant.lower() == "4bit":
                config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True,
                                                         bnb_4bit_compute_dtype=compute)
            else:
                config = transformers.BitsAndBytesConfig(load_in_8bit=True)
                # bitsandbytes warns on every matmul that fp32 inputs are cast to fp16,
                # which would flood the runner log once per token.
                warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            model_kwargs.update(quantization_config=config, device_map={"": device})
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **model_kwargs)
            if "device_map" not in model_kwargs:
                model = model.to(device)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineLoadError(f"transformers could not load the model: {exc.__class__.__name__}: "
                                  f"{scrub_paths(str(exc))[:500]}") from None
        self._model = model.eval()
        self._spec = spec
        self._device = device
        eos = self._model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos_ids.add(self._tokenizer.eos_token_id)
        batch = int(p.get("max_batch_size", 1) or 1)
        self.max_concurrency = max(1, batch)
        if p.get("n_threads"):
            torch.set_num_threads(int(p["n_threads"]))

    @staticmethod
    def _check_folder(path: Path, *, allow_pickle: bool) -> None:
        if not path.is_dir():
            raise EngineLoadError(f"model not found: {path.name}")
        if not (path / "config.json").is_file():
            raise EngineLoadError(f"model folder {path.name} has no config.json")
        if any(path.glob("*.safetensors")):
            return
        if any(f.suffix in PICKLE_SUFFIXES for f in path.iterdir()):
            if not allow_pickle:
                raise EngineLoadError("model has only pickle weights (.bin/.pt), which can run code; "
                                      "convert it to safetensors or set allow_pickle_weights")
            return
        raise EngineLoadError(f"model folder {path.name} has no weights")

    @staticmethod
    def _dtype(torch, name: str, on_cpu: bool, *, allow_half: bool):
        table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if name not in table and name != "auto":
            raise EngineLoadError(f"dtype '{name}' is not supported (auto, float32, float16, bfloat16)")
        # Half precision on CPU is slow or unsupported for many kernels; fp32 unless asked.
        if on_cpu and not allow_half:
            return torch.float32
        return table.get(name, "auto")

    def chat_template(self) -> str | None:
        return getattr(self._tokenizer, "chat_template", None)

    def context_length(self) -> int:
        config = self._model.config
        for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self._tokenizer, "model_max_length", 2048) or 2048)

    def _prompt(self, messages: list[dict], enable_thinking: bool | None) -> str:
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        if self.chat_template():
            try:
                return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                           **extra)
            except Exception as exc:
                raise EngineError(f"chat template error: {exc.__class__.__name__}: {scrub_paths(str(exc))}") from None
        return render_chat_template(CHATML_TEMPLATE, messages, add_generation_prompt=True, **extra)

    def _encode(self, messages, enable_thinking=None):
        import torch

        marked, marker = with_content_markers(messages)
        ids: list[int] = []
        # Special tokens are parsed in the template's own text only, never in what users wrote.
        for text, is_content in prompt_segments(self._prompt(marked, enable_thinking), messages, marker):
            ids += self._tokenizer(text, add_special_tokens=False, split_special_tokens=is_content)["input_ids"]
        return torch.tensor([ids], dtype=torch.long)

    def count_tokens(self, messages: list[dict]) -> int:
        return int(self._encode(messages).shape[-1])

    def _processors(self, s):
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        procs = LogitsProcessorList()
        if s.repetition_penalty is not None and float(s.repetition_penalty) != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(float(s.repetition_penalty)))
        if not s.greedy:
            if s.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(float(s.temperature)))
            if s.top_k:
                procs.append(TopKLogitsWarper(int(s.top_k)))
            if s.top_p is not None and float(s.top_p) < 1.0:
                procs.append(TopPLogitsWarper(float(s.top_p)))
        return procs

    def generate(self, messages: list[dict], params: GenerationParams,
                 should_stop: Callable[[], bool]) -> Iterator[str | GenerationStats]:
        import torch

        s = resolve_sampling(params, self._spec)
        input_ids = self._encode(messages, params.enable_thinking).to(self._device)
        prompt_len = int(input_ids.shape[-1])
        n_ctx = self.context_length()
        if prompt_len >= n_ctx:
            raise EngineError(f"prompt is longer than the context window ({prompt_len} >= {n_ctx} tokens)")
        max_tokens = min(s.max_tokens, n_ctx - prompt_len)
        procs = self._processors(s)
        generator = None
        if s.seed is not None and not s.greedy:
            generator = torch.Generator(device=self._device).manual_seed(int(s.seed))

        started = time.perf_counter()
        first_at = None
        finish = "length"
        generated: list[int] = []
        emitted = 0
        text = ""
        all_ids = input_ids
        step_ids = input_ids
        cache = None
        with torch.inference_mode():
            while len(generated) < max_tokens:
                if should_stop():
                    finish = "cancelled"
                    break
                with self._forward_lock:
                    out = self._model(input_ids=step_ids, cache=cache, use_cache=True, logits_to_keep=1)
                cache = out.cache
                scores = procs(all_ids, out.logits[:, -1, :].float())
                if s.greedy:
                    next_id = int(torch.argmax(scores, dim=-1))
                else:
                    probs = torch.softmax(scores, dim=-1)
                    next_id = int(torch.multinomial(probs, 1, generator=generator))
                if first_at is None:
                    first_at = time.perf_counter()
                if next_id in self._eos_ids:
                    finish = "stop"
                    break
                generated.append(next_id)
                step_ids = torch.tensor([[next_id]], device=self._device)
                all_ids = torch.cat([all_ids, step_ids], dim=-1)
                text = self._tokenizer.decode(generated, skip_special_tokens=True)
                cut = _stop_index(text, s.stop)
                if cut is not None:
                    text = text[:cut]
                    if len(text) > emitted:
                        yield text[emitted:]
                    emitted = len(text)
                    finish = "stop"
                    break
                # Hold back an incomplete UTF-8 sequence and a possible start of a stop string.
                safe = len(text) - _held_back(text, s.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
        if finish != "stop" and len(text) > emitted:
            yield text[emitted:]
        yield make_stats(prompt_len, len(generated), finish, started, first_at, time.perf_counter())

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        super().close()


def _stop_index(text: str, stops) -> int | None:
    hits = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops) -> int:
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                keep = max(keep, n)
                break
    return keep
