"""Hugging Face transformers: safetensors folders, GGUF files (dequantized) and bitsandbytes 4/8-bit.

Generation is a hand-written token loop rather than `model.generate`, so that every
step can check for cancellation, time the first token, count tokens exactly and apply
stop strings without a helper thread.

Concurrency. Without parameters["max_batch_size"] (or with 1) requests run one at a time.
With max_batch_size > 1 the engine batches for real (continuous batching): one scheduler
thread owns the model; each generate() call hands its prompt to it and then streams the
tokens it gets back. The scheduler prefills a newly arrived prompt on its own (batch of
one, exactly as the one-at-a-time path does), then merges its KV cache into the running
batch (left padding plus an attention mask and explicit position ids) and advances every
active sequence by one token per forward pass. Each sequence keeps its own sampling
settings, logits processors and seeded generator, applied to its own row of logits; a
sequence that ends (EOS, max_tokens, a stop string, cancellation) leaves the batch at the
next step and a waiting request joins without waiting for the others to finish.
Cancellation is checked by the scheduler before every forward pass, as in the one-at-a-time
loop. Batched matmuls can round differently from a batch of one, so a greedy answer may on
rare occasions differ from the unbatched one after a near tie.

Batching needs a plain full-attention KV cache (DynamicLayer in every layer). Models whose
cache is anything else (sliding-window or hybrid/linear-attention layers) keep the older
behaviour: up to max_batch_size generate() calls run at once and a lock around the forward
pass interleaves them token by token (fair sharing, no throughput gain).

transformers' own `init_continuous_batching` is not used: it switches the model to its paged
attention and cache, and its per-request sampling covers temperature/top-k/top-p only, not a
per-request seed, repetition penalty or greedy and sampled requests in one batch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import queue
import threading
import warnings
import time
from pathlib import Path
from typing import Callable, Iterator

from .contract import (
    Engine,
    EngineError,
    EngineLoadError,
    EngineUnavailableError,
    GenerationParams,
    GenerationStats,
    LoadSpec,
    embedding_task,
    embedding_token_lists,
    make_stats,
    PromptError,
    resolve_sampling,
    TextStream,
)
from . import gguf_reading
from .model_files import inspect_gguf, locate_model, scrub_paths
from .templates import chat_inputs, prompt_segments, render_chat_template, special_tokens_of, with_content_markers
from .constraints import CompiledCache, ConstraintError, lark_grammar
from .llama_cpp_engine import CHATML_TEMPLATE

logger = logging.getLogger(__name__)

RESPONSE_TEMPLATE_MAX_BYTES = 64 * 1024
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
        self._encode_lock = threading.Lock()
        self._batcher: _Batcher | None = None
        self._guides: CompiledCache | None = None
        self._guides_lock = threading.Lock()
        self._pooling: str | None = None  # set for an embedding model (task embed)

    @classmethod
    def preload(cls) -> None:
        import torch  # noqa: F401
        # The Auto classes are lazy; these pull in the generic modelling, tokenizer and generation code.
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel  # noqa: F401
        from transformers import cache_utils, modeling_layers, processing_utils  # noqa: F401
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.generation import logits_process  # noqa: F401

        # Built once per process on the first from_pretrained: ~1,200 weight-renaming regular
        # expressions, about 0.4 s here, whatever the architecture.
        get_checkpoint_conversion_mapping("llama")

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
            gguf_reading.install()
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
        embed = embedding_task(spec)
        # An embedding model is its encoder without a language-model head; its pooling follows the
        # model card (sentence-transformers' 1_Pooling/config.json) unless the entry names one.
        model_class = transformers.AutoModel if embed else transformers.AutoModelForCausalLM
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
            model = model_class.from_pretrained(str(path), **model_kwargs)
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
        if p.get("n_threads"):
            torch.set_num_threads(int(p["n_threads"]))
        if embed:
            self._pooling = p.get("pooling") or _card_pooling(path)
            return
        eos = self._model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos_ids.add(self._tokenizer.eos_token_id)
        batch = int(p.get("max_batch_size", 1) or 1)
        self.max_concurrency = max(1, batch)
        if self.max_concurrency > 1:
            if _batchable(self._model):
                self._batcher = _Batcher(self._model, self._device, self._eos_ids)
            else:
                logger.warning("this model's KV cache is not a plain full-attention cache, so max_batch_size "
                               "interleaves requests token by token instead of batching them")

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

    def response_template(self) -> dict | None:
        template = getattr(self._tokenizer, "response_template", None)
        if template is None:
            return None
        try:
            size = len(json.dumps(template))
        except (TypeError, ValueError):
            logger.warning("the tokenizer's response_template is not JSON; tool calls use the template markers")
            return None
        # It travels in the runner's ready message and is parsed again per request: a huge one is refused.
        if size > RESPONSE_TEMPLATE_MAX_BYTES:
            logger.warning("the tokenizer's response_template is %d bytes (over %d); ignored", size,
                           RESPONSE_TEMPLATE_MAX_BYTES)
            return None
        try:
            from transformers.utils.chat_parsing.response_templates import load_response_template

            # The template's pre-written start of the assistant turn (e.g. "<think>\n"), seen on a probe
            # conversation: requests do not send their prompt text back to the web process.
            probe = self._prompt([{"role": "user", "content": "."}], None, {})
            prefix = load_response_template(template).truncate_past_last_anchor(probe)
        except Exception as exc:  # a template transformers refuses: the web process falls back to markers
            logger.warning("the tokenizer's response_template is unusable (%s); ignored", exc.__class__.__name__)
            return None
        return {"template": template, "prefix": prefix if len(prefix) < len(probe) else ""}

    def context_length(self) -> int:
        config = self._model.config
        for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self._tokenizer, "model_max_length", 2048) or 2048)

    def _prompt(self, messages: list[dict], enable_thinking: bool | None, extra: dict) -> str:
        extra = dict(extra) if enable_thinking is None else {**extra, "enable_thinking": enable_thinking}
        if self.chat_template():
            try:
                return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                           **extra)
            except Exception as exc:
                # transformers renders the template itself; whatever it raises is about these messages.
                raise PromptError(f"chat template error: {exc.__class__.__name__}: {scrub_paths(str(exc))}") from None
        return render_chat_template(CHATML_TEMPLATE, messages, add_generation_prompt=True, **extra)

    def _encode(self, messages, enable_thinking=None, tools=None):
        import torch

        messages, extra = chat_inputs(self.chat_template() or CHATML_TEMPLATE, messages, tools,
                                      lambda: special_tokens_of(self._tokenizer))
        marked, marker = with_content_markers(messages)
        ids: list[int] = []
        segments = prompt_segments(self._prompt(marked, enable_thinking, extra), messages, marker)
        # Special tokens are parsed in the template's own text only, never in what users wrote.
        # split_special_tokens is stored on the shared Rust tokenizer for the duration of a call,
        # so concurrent encodes (batched requests, count_tokens) must not interleave: one thread
        # could otherwise parse user text with special tokens enabled.
        with self._encode_lock:
            for text, is_content in segments:
                ids += self._tokenizer(text, add_special_tokens=False, split_special_tokens=is_content)["input_ids"]
        return torch.tensor([ids], dtype=torch.long)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        self._refuse_if_embedding()
        return int(self._encode(messages, tools=tools).shape[-1])

    def _guide(self, constraint: dict) -> "_Guide":
        with self._guides_lock:
            if self._guides is None:
                # llguidance's view of the vocabulary takes a moment to build: only once a model
                # meets its first constraint.
                try:
                    import llguidance.hf
                except ImportError:
                    raise EngineError("constrained decoding needs llguidance, which is not installed") from None
                tokenizer = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._vocab_size(),
                                                         eos_token=sorted(self._eos_ids) or None)
                self._guides = CompiledCache(lambda c: _compile_matcher(tokenizer, c))
        return _Guide(self._guides.get(constraint).deep_copy())

    def _vocab_size(self) -> int:
        return int(self._model.get_output_embeddings().weight.shape[0])

    def _refuse_if_embedding(self) -> None:
        # The web process refuses chats to embedding models first; this keeps a stray one from
        # running a language-model loop on an encoder.
        if self._pooling is not None:
            raise PromptError("this is an embedding model; it cannot generate")

    def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        import torch

        if self._pooling is None:
            raise EngineError("this model is not loaded for embeddings (parameter task: embed)")

        def tokenize(text: str, special: bool) -> list[int]:
            # Special-token text a user typed stays text (see _encode).
            with self._encode_lock:
                return self._tokenizer(text, add_special_tokens=special, split_special_tokens=True)["input_ids"]

        sequences = embedding_token_lists(inputs, tokenize, vocab_size=len(self._tokenizer),
                                          context=self.context_length())
        pad = self._tokenizer.pad_token_id or 0
        vectors: list[list[float]] = []
        with torch.inference_mode(), self._forward_lock:
            for start in range(0, len(sequences), EMBED_BATCH):
                batch = sequences[start:start + EMBED_BATCH]
                width = max(len(ids) for ids in batch)
                ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq in batch], device=self._device)
                mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in batch], device=self._device)
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                if self._pooling == "cls":
                    pooled = hidden[:, 0]
                elif self._pooling == "last":
                    pooled = hidden[torch.arange(len(batch), device=self._device), mask.sum(dim=1) - 1]
                else:
                    weights = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
                vectors += torch.nn.functional.normalize(pooled, dim=-1).cpu().tolist()
        return vectors, sum(len(seq) for seq in sequences)

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

        self._refuse_if_embedding()
        s = resolve_sampling(params, self._spec)
        guide = self._guide(params.constraint) if params.constraint is not None else None
        input_ids = self._encode(messages, params.enable_thinking, params.tools).to(self._device)
        prompt_len = int(input_ids.shape[-1])
        n_ctx = self.context_length()
        if prompt_len >= n_ctx:
            raise EngineError(f"prompt is longer than the context window ({prompt_len} >= {n_ctx} tokens)")
        max_tokens = min(s.max_tokens, n_ctx - prompt_len)
        procs = self._processors(s)
        generator = None
        if s.seed is not None and not s.greedy:
            generator = torch.Generator(device=self._device).manual_seed(int(s.seed))
        if self._batcher is not None:
            yield from self._generate_batched(_Request(input_ids, s, procs, generator, max_tokens, should_stop, guide))
            return

        started = time.perf_counter()
        first_at = None
        finish = "length"
        closed = False
        stream = TextStream(self._decode, s.stop)
        all_ids = input_ids
        step_ids = input_ids
        cache = None
        with torch.inference_mode():
            while stream.count < max_tokens:
                if should_stop():
                    finish = "cancelled"
                    break
                with self._forward_lock:
                    out = self._model(input_ids=step_ids, cache=cache, use_cache=True, logits_to_keep=1)
                cache = out.cache
                logits = out.logits[:, -1, :].float()
                if guide is not None:
                    guide.mask(torch, logits)
                scores = procs(all_ids, logits)
                next_id = _pick(torch, scores, s.greedy, generator)
                if first_at is None:
                    first_at = time.perf_counter()
                if next_id in self._eos_ids:
                    finish = "stop"
                    break
                step_ids = torch.tensor([[next_id]], device=self._device)
                all_ids = torch.cat([all_ids, step_ids], dim=-1)
                delta, stopped = stream.push(next_id)
                if delta:
                    yield delta
                if stopped:
                    finish = "stop"
                    break
                if guide is not None and guide.advance(next_id):
                    finish, closed = "stop", True
                    break
        if finish != "stop" or closed:
            tail = stream.flush()
            if tail:
                yield tail
        yield make_stats(prompt_len, stream.count, finish, started, first_at, time.perf_counter(),
                         stop_sequence=stream.stop_sequence)

    def _generate_batched(self, req: "_Request") -> Iterator[str | GenerationStats]:
        """Hand the request to the batch scheduler and stream what it produces."""
        batcher = self._batcher
        started = time.perf_counter()
        first_at = None
        finish = "length"
        closed = False
        stream = TextStream(self._decode, req.s.stop)
        batcher.submit(req)
        try:
            while True:
                try:
                    kind, value = req.out.get(timeout=1.0)
                except queue.Empty:
                    if not batcher.alive():
                        raise EngineError("generation failed: the batch scheduler stopped") from None
                    continue
                if kind == "token":
                    if first_at is None:
                        first_at = time.perf_counter()
                    delta, stopped = stream.push(value)
                    if delta:
                        yield delta
                    if stopped:
                        finish = "stop"
                        break
                elif kind == "end":
                    if first_at is None and value != "cancelled":
                        first_at = time.perf_counter()  # EOS as the very first token still ends prefill
                    finish = value
                    closed = value == "closed"
                    break
                else:
                    raise EngineError(f"generation failed: {value.__class__.__name__}: {scrub_paths(str(value))}")
        finally:
            # Tells the scheduler to drop the sequence: a stop string matched or nobody reads any more.
            req.abandoned = True
        if closed:
            finish = "stop"
        if finish != "stop" or closed:
            tail = stream.flush()
            if tail:
                yield tail
        yield make_stats(int(req.prompt.shape[-1]), stream.count, finish, started, first_at, time.perf_counter(),
                         stop_sequence=stream.stop_sequence)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        self._model = None
        self._tokenizer = None
        super().close()


# Inputs per forward pass when embedding: bounds the padded batch's memory.
EMBED_BATCH = 32
_CARD_POOLING = (("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "last"), ("pooling_mode_mean_tokens", "mean"))


def _card_pooling(path: Path) -> str:
    """The pooling a sentence-transformers folder declares (1_Pooling/config.json); mean without one."""
    import json

    try:
        config = json.loads((path / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"
    return next((name for key, name in _CARD_POOLING if isinstance(config, dict) and config.get(key) is True), "mean")


def _pick(torch, scores, greedy: bool, generator) -> int:
    if greedy:
        return int(torch.argmax(scores, dim=-1))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _compile_matcher(tokenizer, constraint: dict):
    import llguidance

    matcher = llguidance.LLMatcher(tokenizer, lark_grammar(constraint), log_level=0)
    if matcher.is_error():
        raise ConstraintError("constraint", f"llguidance refused the schema: {matcher.get_error()[:300]}")
    return matcher


class _Guide:
    """One request's llguidance matcher: masks each step's logits, then follows the token picked."""

    def __init__(self, matcher):
        self._matcher = matcher

    def mask(self, torch, logits) -> None:
        """Sets the logits of every token the grammar forbids now to -inf, in place (row 0)."""
        allowed = torch.frombuffer(bytearray(self._matcher.compute_logit_bias()), dtype=torch.uint8)
        n = min(int(allowed.shape[0]), int(logits.shape[-1]))
        row = logits[0]
        row[n:] = float("-inf")  # rows past the tokenizer's vocabulary (padding) never make text
        row[:n].masked_fill_(allowed[:n].to(row.device) == 0, float("-inf"))

    def advance(self, token: int) -> bool:
        """Follows ``token``; True when the constraint is complete (nothing but end of sequence may follow)."""
        if not self._matcher.consume_token(token):
            raise EngineError(f"constrained decoding failed: {self._matcher.get_error()[:300]}")
        return self._matcher.is_stopped()


def _batchable(model) -> bool:
    """Whether the model's cache is all plain DynamicLayers, which the scheduler can pad and merge."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    if cache.layers:
        return all(type(layer) is DynamicLayer for layer in cache.layers)
    return getattr(cache, "layer_class_to_replicate", None) is DynamicLayer


class _Request:
    def __init__(self, prompt, s, procs, generator, max_tokens: int, should_stop: Callable[[], bool],
                 guide: "_Guide | None" = None):
        self.prompt = prompt  # [1, prompt_len]
        self.guide = guide
        self.all_ids = prompt  # prompt + generated, for processors such as the repetition penalty
        self.s = s
        self.procs = procs
        self.generator = generator
        self.max_tokens = max_tokens
        self.should_stop = should_stop
        # ("token", id) | ("end", finish_reason or "closed": the constraint is complete) | ("error", exception),
        # read by the generate() caller
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.abandoned = False
        self.count = 0
        self.pos = int(prompt.shape[-1])  # position id of the token fed next
        self.next_id = 0


class _Batcher:
    """Scheduler thread: prefill arrivals one by one, then decode all active sequences together.

    Batch state: a DynamicCache whose rows are left-padded to a common length, the matching
    2-D attention mask (0 on padding) and, per row, the _Request with its next position id.
    """

    def __init__(self, model, device: str, eos_ids: set[int]):
        self._model = model
        self._device = device
        self._eos_ids = eos_ids
        self._incoming: list[_Request] = []
        self._cv = threading.Condition()
        self._closed = False
        self._active: list[_Request] = []
        self._cache = None
        self._mask = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="transformers-batcher")
        self._thread.start()

    def submit(self, req: _Request) -> None:
        with self._cv:
            if self._closed:
                raise EngineError("the model is shutting down")
            self._incoming.append(req)
            self._cv.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._closed and not self._incoming and not self._active:
                        self._cv.wait()
                    if self._closed:
                        break
                    arrivals, self._incoming = self._incoming, []
                self._drop_finished()
                for req in arrivals:
                    try:
                        self._admit(torch, req)
                    except Exception as exc:
                        logger.exception("prefill failed")
                        req.out.put(("error", exc))
                if not self._active:
                    continue
                try:
                    self._step(torch)
                except Exception as exc:
                    logger.exception("batched decode step failed")
                    for req in self._active:
                        req.out.put(("error", exc))
                    self._active, self._cache, self._mask = [], None, None
        with self._cv:
            leftover, self._incoming = self._active + self._incoming, []
        for req in leftover:
            req.out.put(("end", "cancelled"))
        self._active, self._cache, self._mask = [], None, None

    def _sample(self, torch, req: _Request, logits) -> bool:
        """Pick the request's next token from its row of logits; False when the sequence ended."""
        logits = logits.float()
        if req.guide is not None:
            req.guide.mask(torch, logits)
        scores = req.procs(req.all_ids, logits)
        next_id = _pick(torch, scores, req.s.greedy, req.generator)
        if next_id in self._eos_ids:
            req.out.put(("end", "stop"))
            return False
        req.count += 1
        req.out.put(("token", next_id))
        if req.guide is not None:
            try:
                closed = req.guide.advance(next_id)
            except EngineError as exc:
                req.out.put(("error", exc))  # this sequence only; the others in the batch go on
                return False
            if closed:
                req.out.put(("end", "closed"))
                return False
        if req.count >= req.max_tokens:
            req.out.put(("end", "length"))
            return False
        req.next_id = next_id
        req.all_ids = torch.cat([req.all_ids, torch.tensor([[next_id]], device=req.all_ids.device)], dim=-1)
        return True

    def _admit(self, torch, req: _Request) -> None:
        if req.should_stop() or req.abandoned:
            req.out.put(("end", "cancelled"))
            return
        out = self._model(input_ids=req.prompt, use_cache=True, logits_to_keep=1)
        if self._sample(torch, req, out.logits[:, -1, :]):
            self._merge(torch, req, out.cache)

    def _merge(self, torch, req: _Request, cache) -> None:
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise RuntimeError(f"cannot batch a {type(cache).__name__} with non-dynamic layers")
        new_len = int(req.prompt.shape[-1])
        new_mask = torch.ones((1, new_len), dtype=torch.long, device=req.prompt.device)
        if self._cache is None:
            self._cache, self._mask, self._active = cache, new_mask, [req]
            return
        old_len = int(self._mask.shape[-1])
        length = max(old_len, new_len)
        if len(cache.layers) != len(self._cache.layers):
            raise RuntimeError("cache layer count differs between sequences")
        for dst, src in zip(self._cache.layers, cache.layers):
            if not (dst.is_initialized and src.is_initialized):
                if dst.is_initialized or src.is_initialized:
                    raise RuntimeError("cache layers are filled unevenly")
                continue
            dst.keys = torch.cat([_left_pad(torch, dst.keys, length - old_len, -2),
                                  _left_pad(torch, src.keys, length - new_len, -2)], dim=0)
            dst.values = torch.cat([_left_pad(torch, dst.values, length - old_len, -2),
                                    _left_pad(torch, src.values, length - new_len, -2)], dim=0)
        self._mask = torch.cat([_left_pad(torch, self._mask, length - old_len, -1),
                                _left_pad(torch, new_mask, length - new_len, -1)], dim=0)
        self._active.append(req)

    def _step(self, torch) -> None:
        device = self._mask.device
        step_ids = torch.tensor([[r.next_id] for r in self._active], dtype=torch.long, device=device)
        positions = torch.tensor([[r.pos] for r in self._active], dtype=torch.long, device=device)
        self._mask = torch.cat([self._mask, torch.ones((len(self._active), 1), dtype=torch.long, device=device)],
                               dim=-1)
        out = self._model(input_ids=step_ids, attention_mask=self._mask, position_ids=positions,
                          cache=self._cache, use_cache=True, logits_to_keep=1)
        self._cache = out.cache
        logits = out.logits[:, -1, :]
        keep = []
        for i, req in enumerate(self._active):
            req.pos += 1
            if self._sample(torch, req, logits[i:i + 1]):
                keep.append(i)
        if len(keep) < len(self._active):
            self._select(torch, keep)

    def _drop_finished(self) -> None:
        keep = []
        for i, req in enumerate(self._active):
            if req.abandoned:
                continue
            if req.should_stop():
                req.out.put(("end", "cancelled"))
                continue
            keep.append(i)
        if len(keep) < len(self._active):
            import torch

            self._select(torch, keep)

    def _select(self, torch, keep: list[int]) -> None:
        """Keep only the rows in `keep`, then cut the padding columns no remaining row needs."""
        if not keep:
            self._active, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0])
        for layer in self._cache.layers:
            if layer.is_initialized and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, index)[..., first:, :]
                layer.values = layer.values.index_select(0, index)[..., first:, :]
        self._mask = mask[:, first:]
        self._active = [self._active[i] for i in keep]


def _left_pad(torch, tensor, n: int, dim: int):
    if n <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)
