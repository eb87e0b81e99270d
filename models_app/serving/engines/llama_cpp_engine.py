"""llama.cpp through llama-cpp-python, for GGUF files."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from .contract import (
    Engine,
    EngineError,
    EngineLoadError,
    EngineUnavailableError,
    GenerationParams,
    GenerationStats,
    LoadSpec,
    PromptError,
    embedding_task,
    embedding_token_lists,
    make_stats,
    normalized,
    resolve_sampling,
    TextStream,
)
from .model_files import gguf_file_for, inspect_gguf, locate_model, scrub_paths
from .templates import chat_inputs, prompt_segments, render_chat_template, with_content_markers
from .constraints import CompiledCache, ConstraintError, json_value_closed, llama_gbnf

# Used when a GGUF carries no template of its own; ChatML is what most small chat models expect.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# llama.cpp's enum llama_pooling_type, by the names the registry's ``pooling`` parameter uses.
POOLING_TYPES = {"mean": 1, "cls": 2, "last": 3}


class LlamaCppEngine(Engine):
    max_concurrency = 1  # one llama_context cannot decode two sequences from two threads

    def __init__(self):
        self._llm = None
        self._spec: LoadSpec | None = None
        self._template: str | None = None
        self._bos = ""
        self._specials: list[str] | None = None
        self._eos = ""
        self._grammars = CompiledCache(self._compile_grammar)
        self._embed_context: int | None = None  # set for an embedding model (task embed)
        # One llama_context: embeddings arrive as concurrent runner calls, so they take turns.
        self._embed_lock = threading.Lock()

    @classmethod
    def preload(cls) -> None:
        import llama_cpp  # noqa: F401

    def load(self, spec: LoadSpec) -> None:
        path = gguf_file_for(spec, locate_model(spec))
        if path is None:
            raise EngineLoadError("llama.cpp needs a .gguf file; set the `filename` parameter for a folder")
        info = inspect_gguf(path)
        try:
            import llama_cpp
        except ImportError:
            raise EngineUnavailableError("llama-cpp-python is not installed on this host") from None
        p = spec.parameters
        kwargs = {"model_path": str(path), "n_ctx": int(p.get("n_ctx", 2048)),
                  "n_gpu_layers": int(p.get("n_gpu_layers", 0)), "verbose": False}
        if p.get("n_threads"):
            kwargs["n_threads"] = int(p["n_threads"])
        if p.get("seed") is not None:
            kwargs["seed"] = int(p["seed"])
        embed = embedding_task(spec)
        if embed:
            # A non-causal encoder (BERT) must see a whole input in one micro-batch, and positions past
            # its trained context have no embedding: n_ctx defaults to, and is capped at, the trained one.
            trained = info["context_length"] or 512
            asked = int(p.get("n_ctx") or 0)
            n_ctx = min(asked, trained) if asked > 0 else trained
            pooling = POOLING_TYPES.get(p.get("pooling")) or (
                info["pooling_type"] if info["pooling_type"] in POOLING_TYPES.values() else POOLING_TYPES["mean"])
            kwargs.update(embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, pooling_type=pooling)
        try:
            self._llm = llama_cpp.Llama(**kwargs)
        except Exception as exc:
            raise EngineLoadError(f"llama.cpp could not load {path.name}: {scrub_paths(str(exc))}") from None
        self._spec = spec
        if embed:
            self._embed_context = int(self._llm.n_ctx())
        self._template = info["chat_template"]
        self._bos = self._token_text(self._llm.token_bos())
        self._eos = self._token_text(self._llm.token_eos())

    def _token_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    def chat_template(self) -> str | None:
        return self._template

    def _special_tokens(self) -> list[str]:
        """The text of every control token (<|im_start|>, <|eot_id|>, ...), read once from the vocabulary."""
        if self._specials is None:
            import llama_cpp

            vocab = self._llm._model.vocab
            self._specials = [
                llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")
                for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
                if llama_cpp.llama_vocab_get_attr(vocab, token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL]
        return self._specials

    def context_length(self) -> int:
        return int(self._llm.n_ctx())

    def _prompt_tokens(self, messages: list[dict], enable_thinking: bool | None = None,
                       tools: list[dict] | None = None) -> list[int]:
        template = self._template or CHATML_TEMPLATE
        messages, extra = chat_inputs(template, messages, tools, self._special_tokens)
        if enable_thinking is not None:
            extra["enable_thinking"] = enable_thinking
        marked, marker = with_content_markers(messages)
        prompt = render_chat_template(template, marked, bos_token=self._bos,
                                      eos_token=self._eos, add_generation_prompt=True, **extra)
        # The template already wrote BOS where the model wants it. Special tokens are parsed in
        # the template's own text only, never in what users wrote.
        tokens: list[int] = []
        for text, is_content in prompt_segments(prompt, messages, marker):
            tokens += self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=not is_content)
        return tokens

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        self._refuse_if_embedding()
        return len(self._prompt_tokens(messages, tools=tools))

    def _compile_grammar(self, constraint: dict):
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        gbnf = llama_gbnf(constraint)
        # LlamaGrammar only holds the text; llama.cpp parses it when generate() builds its sampler, and
        # a grammar it refuses would become a NULL sampler in the chain. Parse it once here instead.
        sampler = llama_cpp.llama_sampler_init_grammar(self._llm._model.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise ConstraintError("constraint", "llama.cpp refused the grammar made from this schema")
        llama_cpp.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(gbnf)

    def _refuse_if_embedding(self) -> None:
        # The web process refuses chats to embedding models first; a stray one must not reach the context.
        if self._embed_context is not None:
            raise PromptError("this is an embedding model; it cannot generate")

    def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        import llama_cpp

        if self._embed_context is None:
            raise EngineError("this model is not loaded for embeddings (parameter task: embed)")
        llm = self._llm
        # Text a user typed is never parsed for special tokens; the model's own go around it.
        sequences = embedding_token_lists(
            inputs, lambda text, special: llm.tokenize(text.encode("utf-8"), add_bos=special, special=False),
            vocab_size=llm.n_vocab(), context=self._embed_context)
        width = llm.n_embd()
        vectors = []
        # One input per decode: its pooled vector is sequence 0's, whatever the context's n_seq_max.
        with self._embed_lock:
            try:
                for tokens in sequences:
                    llm._ctx.kv_cache_clear()
                    llm._batch.reset()
                    llm._batch.add_sequence(tokens, 0, True)
                    llm._ctx.decode(llm._batch)
                    vectors.append(normalized(llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)[:width]))
            except RuntimeError as exc:
                raise EngineError(f"llama.cpp could not embed: {exc}") from None
            finally:
                llm._batch.reset()
                llm._ctx.kv_cache_clear()
        return vectors, sum(len(tokens) for tokens in sequences)

    def generate(self, messages: list[dict], params: GenerationParams,
                 should_stop: Callable[[], bool]) -> Iterator[str | GenerationStats]:
        """Samples token by token (llama-cpp-python's ``generate``), so that counts are exact,
        each delta is one token's text, and cancellation is checked between tokens."""
        import llama_cpp

        self._refuse_if_embedding()
        s = resolve_sampling(params, self._spec)
        constraint = params.constraint
        grammar = self._grammars.get(constraint) if constraint is not None else None
        tokens = self._prompt_tokens(messages, params.enable_thinking, params.tools)
        n_ctx = self.context_length()
        if len(tokens) >= n_ctx:
            raise EngineError(f"prompt is longer than the context window ({len(tokens)} >= {n_ctx} tokens)")
        max_tokens = min(s.max_tokens, n_ctx - len(tokens))
        sampling = {"temp": s.temperature}
        if not s.greedy:
            sampling.update({k: v for k, v in (("top_p", s.top_p), ("top_k", s.top_k)) if v is not None})
        if s.repetition_penalty is not None:
            sampling["repeat_penalty"] = float(s.repetition_penalty)
        if s.seed is not None:
            self._llm.set_seed(int(s.seed))
            # Reusing the cached prefix of the previous prompt evaluates fewer tokens in another batch
            # shape, which moves the logits slightly: enough for a sampled reply to differ under the same
            # seed. A seeded request therefore evaluates its whole prompt.
            self._llm.reset()

        stream = TextStream(self._decode, s.stop)
        vocab = self._llm._model.vocab
        started = time.perf_counter()
        first_at = None
        finish = "length"
        closed = False
        for token in self._llm.generate(tokens, reset=True, grammar=grammar, **sampling):
            if should_stop():
                finish = "cancelled"
                break
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            if first_at is None:
                first_at = time.perf_counter()
            delta, stopped = stream.push(token)
            if delta:
                yield delta
            if stopped:
                finish = "stop"
                break
            # The grammar would allow nothing but end of sequence now: spare the model that step.
            if grammar is not None and json_value_closed(stream.text, constraint):
                finish, closed = "stop", True
                break
            if stream.count >= max_tokens:
                break
        if finish != "stop" or closed:
            rest = stream.flush()
            if rest:
                yield rest
        yield make_stats(len(tokens), stream.count, finish, started, first_at, time.perf_counter(),
                         stop_sequence=stream.stop_sequence)

    def _decode(self, ids: list[int]) -> str:
        return self._llm.detokenize(ids).decode("utf-8", "replace")

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        super().close()
