"""The engine contract every backend implements: errors, load and generation specs, stats,
sampling, the text stream, and the embedding helpers they share.

Imports no Django and no heavy ML library: the web process and fresh runner processes import it.
"""

from __future__ import annotations

import gc
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator


class EngineError(Exception):
    """message is safe to show a user: no absolute paths, no tracebacks"""


class EngineLoadError(EngineError):
    pass


class EngineUnavailableError(EngineLoadError):
    """library not installed or hardware missing; message says which"""


class PromptError(EngineError):
    """The request's messages cannot become a prompt (the chat template refused them, or its output
    is too large): the caller's input is at fault, not the model, so the platform answers 400."""


# The longest parameters["keep_alive_seconds"] an entry may hold: the registry refuses more, and
# the manager clamps rows written before the bound, so that no entry can overflow a timedelta.
KEEP_ALIVE_MAX_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class LoadSpec:
    name: str
    engine: str  # "transformers" | "llama.cpp" | "vllm" | "openai"
    model_id: str  # local path (file or folder), or a hub id resolved only inside HF_HOME cache (offline)
    quantization: str = "none"  # 4bit|8bit|awq|squeezelm|gptq|fp8|none|GGUF type like Q4_K_M / Q4_1
    dtype: str = "auto"
    max_new_tokens: int = 512
    parameters: dict = field(default_factory=dict)
    generation_defaults: dict = field(default_factory=dict)


@dataclass
class GenerationParams:
    max_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    do_sample: bool | None = None
    enable_thinking: bool | None = None
    # None means "use the spec's generation_defaults"; temperature 0 or do_sample False means greedy
    # OpenAI function tools ({"type": "function", "function": {name, description, parameters}}),
    # handed to the chat template as ``tools``; parsing the reply's calls is the web process's job.
    tools: list[dict] | None = None
    # Constrained decoding: the reply is exactly ``prefix + <JSON> + suffix`` where <JSON> matches
    # ``schema`` (any JSON object when ``schema`` is None), then end of sequence. Shape:
    # {"schema": dict | None, "prefix": str, "suffix": str}; None means free decoding.
    constraint: dict | None = None


@dataclass
class GenerationStats:
    prompt_tokens: int
    tokens_generated: int
    finish_reason: str  # stop|length|cancelled|error
    time_to_first_token_ms: float
    inference_time_ms: float
    tokens_per_second: float
    # The stop string that ended the reply (finish_reason "stop"), when the engine knows it: the
    # Anthropic API reports it, and the reply text never contains it.
    stop_sequence: str | None = None


@dataclass(frozen=True)
class Sampling:
    """Generation settings after the spec's defaults were applied."""

    greedy: bool
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    seed: int | None
    stop: tuple[str, ...]


def resolve_sampling(params: GenerationParams, spec: LoadSpec) -> Sampling:
    defaults = spec.generation_defaults or {}

    def pick(key):
        value = getattr(params, key)
        return defaults.get(key) if value is None else value

    temperature = pick("temperature")
    do_sample = pick("do_sample")
    greedy = do_sample is False or (temperature is not None and float(temperature) <= 0)
    # spec.max_new_tokens is the model's ceiling; a request may ask for less, never more.
    max_tokens = max(1, min(int(params.max_tokens), int(spec.max_new_tokens)))
    return Sampling(
        greedy=greedy,
        max_tokens=max_tokens,
        temperature=0.0 if greedy else float(1.0 if temperature is None else temperature),
        top_p=pick("top_p"),
        top_k=pick("top_k"),
        repetition_penalty=pick("repetition_penalty"),
        seed=params.seed,
        stop=tuple(s for s in (params.stop or []) if s),
    )


def make_stats(prompt_tokens: int, tokens_generated: int, finish_reason: str,
               started: float, first_token_at: float | None, ended: float,
               stop_sequence: str | None = None) -> GenerationStats:
    inference_s = max(ended - started, 1e-9)
    # Decode speed excludes prefill, which is what users compare between engines.
    decode_s = ended - first_token_at if first_token_at is not None else inference_s
    decode_tokens = max(tokens_generated - 1, 0)
    return GenerationStats(
        prompt_tokens=prompt_tokens,
        tokens_generated=tokens_generated,
        finish_reason=finish_reason,
        time_to_first_token_ms=((first_token_at - started) * 1000.0) if first_token_at else 0.0,
        inference_time_ms=inference_s * 1000.0,
        tokens_per_second=(decode_tokens / decode_s) if decode_s > 0 and decode_tokens else
        (tokens_generated / inference_s if tokens_generated else 0.0),
        stop_sequence=stop_sequence,
    )


class TextStream:
    """Generated token ids -> text deltas, cut at the first stop string.

    Holds back an incomplete UTF-8 sequence (decoded as U+FFFD) and a possible start of a stop
    string, so deltas never split a character and never show part of a stop string. ``decode``
    turns all ids so far into text; decoding the whole sequence each time keeps multi-token
    characters and word-boundary spaces right.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops):
        self._decode = decode
        self._stops = stops
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stop_sequence: str | None = None  # the stop string that cut the text, once one did

    @property
    def count(self) -> int:
        return len(self._ids)

    @property
    def text(self) -> str:
        """Everything decoded so far (cut at a stop string), including what is still held back."""
        return self._text

    def push(self, token_id: int) -> tuple[str, bool]:
        """(delta to yield, whether a stop string matched)"""
        self._ids.append(token_id)
        text = self._text = self._decode(self._ids)
        cut = _stop_index(text, self._stops)
        if cut is not None:
            self.stop_sequence = next(stop for stop in self._stops if text.find(stop) == cut)
            text = self._text = text[:cut]
            delta = text[self._emitted:]
            self._emitted = max(self._emitted, len(text))
            return delta, True
        safe = len(text) - _held_back(text, self._stops)
        if safe > self._emitted:
            delta = text[self._emitted:safe]
            self._emitted = safe
            return delta, False
        return "", False

    def flush(self) -> str:
        delta = self._text[self._emitted:]
        self._emitted = len(self._text)
        return delta



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


class Engine(ABC):
    max_concurrency: int = 1

    @classmethod
    def preload(cls) -> None:
        """Imports the heavy libraries load() needs, in a spare runner before any model is known.

        Must not touch a device (no CUDA context): a spare may wait a long time, and only the
        runner that loads a model may hold one.
        """

    @abstractmethod
    def load(self, spec: LoadSpec) -> None: ...

    @abstractmethod
    def generate(self, messages: list[dict], params: GenerationParams,
                 should_stop: Callable[[], bool]) -> Iterator[str | GenerationStats]: ...

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        raise NotImplementedError

    def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """Unit-length vectors of ``inputs`` (texts, or token id lists) and the tokens they took.

        Only a model loaded with parameter ``task: embed`` can; an input longer than the context
        window, or a token id outside the vocabulary, raises PromptError (never silently truncated).
        """
        raise EngineError("this engine cannot embed")

    def context_length(self) -> int:
        raise NotImplementedError

    def chat_template(self) -> str | None:
        return None

    def response_template(self) -> dict | None:
        """``{"template": dict, "prefix": str}`` when the tokenizer says how to parse its replies
        (transformers' ``response_template``); ``prefix`` is what the chat template pre-writes
        into the assistant turn, which the parser must see first. None otherwise."""
        return None

    def release_caches(self) -> None:
        gc.collect()
        # Only engines that already use torch have CUDA caches; never import it just for this.
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        self.release_caches()


# ---------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------

# Inputs one embedding request may carry; the web process refuses more before a runner sees them.
MAX_EMBEDDING_INPUTS = 256


def embedding_task(spec: LoadSpec) -> bool:
    return spec.parameters.get("task") == "embed"


def special_wrapping(tokenize: Callable[[str, bool], list[int]]) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text (``[CLS]`` … ``[SEP]`` for BERT,
    BOS for Llama), found by tokenizing one word with and without them. Token-array inputs get the
    same, so that the ids of a text embed exactly as the text does."""
    bare = tokenize("hello", False)
    full = tokenize("hello", True)
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


def embedding_token_lists(inputs: list, tokenize: Callable[[str, bool], list[int]], *, vocab_size: int,
                          context: int) -> list[list[int]]:
    """The token ids each input gives the model: texts tokenized with the model's special tokens
    (typed special-token text stays text), token lists checked against the vocabulary and wrapped alike."""
    prefix, suffix = special_wrapping(tokenize)
    sequences = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            ids = tokenize(item, True)
        else:
            bad = next((t for t in item if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size), None)
            if bad is not None or not item:
                raise PromptError(f"input[{index}]: token ids must be integers from 0 to {vocab_size - 1}")
            ids = prefix + list(item) + suffix
        if len(ids) > context:
            raise PromptError(f"input[{index}] is {len(ids)} tokens; this model takes at most {context}")
        sequences.append(ids)
    return sequences


def normalized(vector) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5
    return [float(v) / norm for v in vector] if norm > 0 else [float(v) for v in vector]
