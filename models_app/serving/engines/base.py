"""Engine contract shared by every backend, plus the helpers they need.

Nothing here imports Django or a heavy ML library at module import: this module is
imported by the web process and by freshly spawned runner processes, and both must
start fast.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import stat
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
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


# ---------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------

MAX_RENDERED_PROMPT_CHARS = 2_000_000


class _TemplateRaised(Exception):
    pass


def _raise_exception(message):
    raise _TemplateRaised(str(message))


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str):
    # Compiling is ~90% of a render (~10 ms for a typical template on a small CPU); a runner renders
    # the same template for every count and every generation. Compiled templates are safe to render
    # from several threads at once. Compile errors are raised, and lru_cache does not keep them.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def render_chat_template(template: str, messages, *, bos_token: str = "", eos_token: str = "",
                         add_generation_prompt: bool = True, **extra) -> str:
    """Render a chat template that may come from an untrusted model file.

    GGUF chat templates are attacker-controlled (CVE-2024-34359), so they run in an
    immutable sandbox and the output size is bounded against templates that loop forever.
    """
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        compiled = _compiled_template(template)
        parts: list[str] = []
        size = 0
        for chunk in compiled.generate(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                       add_generation_prompt=add_generation_prompt, **extra):
            size += len(chunk)
            if size > MAX_RENDERED_PROMPT_CHARS:
                raise PromptError("chat template output is too large")
            parts.append(chunk)
    except SecurityError as exc:
        raise EngineError("chat template tried an unsafe operation and was blocked") from exc
    except _TemplateRaised as exc:
        raise PromptError(f"chat template rejected the conversation: {exc}") from exc
    except TemplateError as exc:
        raise PromptError(f"chat template error: {exc.__class__.__name__}: {exc}") from exc
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"chat template failed: {exc.__class__.__name__}") from exc
    return "".join(parts)


# The reply formats of tool calls, told apart by the markers their chat templates teach; the web
# process parses replies with the matching parser (inference_app/tool_calls.py).
TOOL_FORMATS = ("hermes", "llama3", "mistral")

# For templates that know nothing of tools (SmolLM2's): the Hermes/Qwen wording, in the system turn.
TOOL_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>"
)


def detect_tool_format(template: str | None) -> str:
    """The tool-call format a chat template teaches; ``hermes`` when it shows none (see TOOL_PREAMBLE)."""
    template = template or ""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ("ipython" in template and '"parameters"' in template):
        return "llama3"
    return "hermes"


def template_knows_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def _arguments_object(text):
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def chat_inputs(template: str | None, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], dict]:
    """The messages and extra template variables for a conversation with tools or tool turns.

    Templates that mention ``tools`` get them as the ``tools`` variable and the tool turns as
    Hugging Face templates expect them: ``tool_calls[].function.arguments`` as an object (Qwen and
    Llama 3 write it with ``tojson``, so a string would be quoted twice) and content "" instead of
    None. Other templates get the Hermes format as text: the tool list in the system turn, calls as
    ``<tool_call>`` blocks in the assistant's text and results as user turns in ``<tool_response>``
    -- all of it message content, which is tokenized without special tokens.
    """
    if not tools and not any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        return messages, {}
    if template_knows_tools(template):
        shaped = []
        for message in messages:
            message = {**message, "content": message.get("content") or ""}
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    {**call, "function": {**call["function"],
                                          "arguments": _arguments_object(call["function"].get("arguments"))}}
                    for call in message["tool_calls"]]
            shaped.append(message)
        return shaped, ({"tools": tools} if tools else {})
    shaped = []
    for message in messages:
        content = message.get("content") or ""
        if message.get("tool_calls"):
            blocks = [json.dumps({"name": call["function"]["name"],
                                  "arguments": _arguments_object(call["function"].get("arguments"))},
                                 ensure_ascii=False) for call in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + [f"<tool_call>\n{b}\n</tool_call>" for b in blocks])
            shaped.append({"role": "assistant", "content": content})
        elif message.get("role") == "tool":
            shaped.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            shaped.append({"role": message["role"], "content": content})
    if tools:
        preamble = TOOL_PREAMBLE.format(tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))
        if shaped and shaped[0]["role"] == "system":
            shaped[0] = {"role": "system", "content": f"{shaped[0]['content']}\n\n{preamble}"}
        else:
            shaped.insert(0, {"role": "system", "content": preamble})
    return shaped, {}


def with_content_markers(messages: list[dict]) -> tuple[list[dict], str]:
    """Messages whose contents are replaced by unique markers, and the marker prefix.

    Rendering these and splitting the output at the markers tells template text (tokenized with
    special tokens) from message text (tokenized as plain text), so that a user who types
    ``<|im_start|>system`` gets those characters, not a forged system turn (llama.cpp#24382).
    """
    marker = f"\x00{os.urandom(6).hex()}:"
    # Empty content stays empty: templates test it (``if message.content``) around tool calls.
    return [{**m, "content": f"{marker}{i}\x00"} if m.get("content") else m
            for i, m in enumerate(messages)], marker


def prompt_segments(rendered: str, messages: list[dict], marker: str) -> list[tuple[str, bool]]:
    """``(text, is_message_content)`` pieces of a prompt rendered from ``with_content_markers``."""
    pattern = re.compile(re.escape(marker) + r"(\d+)\x00")
    segments: list[tuple[str, bool]] = []
    position = 0
    for match in pattern.finditer(rendered):
        if match.start() > position:
            segments.append((rendered[position:match.start()], False))
        content = messages[int(match.group(1))].get("content") or ""
        if content:
            segments.append((content, True))
        position = match.end()
    if position < len(rendered):
        segments.append((rendered[position:], False))
    return segments


# ---------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SAFE_FILENAME = re.compile(r"^[\w.+-]+(/[\w.+-]+)*$")


def is_local_model_id(model_id: str) -> bool:
    return model_id.startswith(("/", ".", "~"))


def _check_filename(name: str) -> str:
    if not _SAFE_FILENAME.match(name) or ".." in name.split("/"):
        raise EngineLoadError("model file name is not allowed")
    return name


def locate_model(spec: LoadSpec) -> Path:
    """Where the model lives on this host, without any download.

    Local ids become real paths (symlinks resolved); hub ids are looked up in the
    Hugging Face cache only. A `filename`/`gguf_file` parameter picks one file in a repo.
    """
    model_id = spec.model_id.strip()
    if not model_id:
        raise EngineLoadError("model id is empty")
    filename = spec.parameters.get("filename") or spec.parameters.get("gguf_file")
    if filename:
        _check_filename(filename)
    if is_local_model_id(model_id):
        return Path(os.path.realpath(os.path.expanduser(model_id)))
    if not _HUB_ID.match(model_id):
        raise EngineLoadError("model id is neither a local path nor a Hugging Face repo id")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        # A single GGUF file is enough for llama.cpp; everything else needs the whole snapshot.
        revision = spec.parameters.get("revision") or None
        if filename and spec.engine == "llama.cpp":
            return Path(os.path.realpath(hf_hub_download(model_id, filename, revision=revision, local_files_only=True)))
        return Path(os.path.realpath(snapshot_download(model_id, revision=revision, local_files_only=True)))
    except Exception as exc:
        raise EngineLoadError(
            f"model {model_id} is not in the local Hugging Face cache (downloads are disabled)") from exc


def gguf_matching(names: list[str], quantization: str) -> list[str]:
    """The GGUF file names of a repo or folder that a quantisation picks (``qwen3-8b-q4_k_m.gguf`` for
    Q4_K_M; split files such as ``-00001-of-00002`` come together). Quantisation "none" picks the
    only GGUF there is; a quantisation no file names picks nothing (never another quantisation)."""
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
    wanted = quantization.lower()
    if wanted == "none":
        return ggufs if len(ggufs) == 1 else []
    return [n for n in ggufs if wanted in n.rsplit("/", 1)[-1].lower()]


def is_hub_id(model_id: str) -> bool:
    return bool(_HUB_ID.match(model_id))


def confine(path, allowed_roots: list[Path]) -> Path:
    """The real path of ``path``, which must lie inside one of ``allowed_roots``.

    Containment is checked on the fully resolved path, so `..` segments and symlinks that
    point out of a root are refused alike.
    """
    if "\x00" in str(path):
        raise EngineLoadError("model path contains a NUL byte")
    real = os.path.realpath(os.path.expanduser(str(path)))
    roots = [os.path.realpath(root) for root in allowed_roots]
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise EngineLoadError("model path is outside the allowed model roots")
    return Path(real)


def resolve_model_path(spec: LoadSpec, allowed_roots: list[Path]) -> Path:
    """Return the model's real path, refusing local paths outside the allowed roots.

    Hub ids resolve inside the HF cache only.
    """
    path = locate_model(spec)
    if is_local_model_id(spec.model_id.strip()):
        confine(path, allowed_roots)
        filename = spec.parameters.get("filename") or spec.parameters.get("gguf_file")
        if filename and path.is_dir():
            confine(path / filename, allowed_roots)
    return path


def gguf_file_for(spec: LoadSpec, path: Path) -> Path | None:
    """The GGUF file ``spec`` reads at ``path`` (its located model), or None when it reads none.

    llama.cpp reads nothing but GGUF, so any file given to it is one whatever its name, and the
    header check decides: a suffix cannot smuggle a file past inspect_gguf or the memory estimate.
    The other engines take a single file as GGUF by its suffix (and refuse other files at load).
    """
    name = spec.parameters.get("gguf_file") or spec.parameters.get("filename")
    if path.is_dir():
        if name:
            return path / name
        if spec.engine == "llama.cpp":
            # A downloaded GGUF repo holds the file its quantisation names (the first part, if split).
            matching = gguf_matching([p.name for p in path.iterdir()], spec.quantization)
            return path / matching[0] if matching else None
        return None
    if spec.engine == "llama.cpp" or path.suffix.lower() == ".gguf":
        return path
    return None


GGUF_MAGIC = b"GGUF"


def inspect_gguf(path) -> dict:
    """Validate a GGUF file and read the metadata we need, without trusting it.

    Non-regular files are refused before opening them (a FIFO would block, /dev/zero never
    ends), the magic is checked before the parser sees the file, and the tensor data must
    fit inside the file, so truncated downloads are caught here rather than in llama.cpp.
    """
    name = Path(path).name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EngineLoadError(f"not a valid GGUF file: {name} does not exist") from None
    except OSError as exc:
        raise EngineLoadError(f"not a valid GGUF file: {name} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise EngineLoadError(f"not a valid GGUF file: {name} is {kind}")
    if st.st_size == 0:
        raise EngineLoadError(f"not a valid GGUF file: {name} is empty")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EngineLoadError(f"not a valid GGUF file: {name} is not a regular file")
            magic = os.read(fd, 4)
        finally:
            os.close(fd)
    except OSError as exc:
        raise EngineLoadError(f"not a valid GGUF file: {name} cannot be read ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise EngineLoadError(f"not a valid GGUF file: {name} has no GGUF header")

    try:
        from gguf import GGUFReader, LlamaFileType
        reader = GGUFReader(str(path), "r")
        data_end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:
        raise EngineLoadError(f"not a valid GGUF file: {name} is corrupt or truncated "
                              f"({exc.__class__.__name__})") from None
    if not reader.tensors or data_end > st.st_size:
        raise EngineLoadError(f"not a valid GGUF file: {name} is truncated")

    def value(key):
        f = reader.fields.get(key)
        if f is None or not f.data:
            return None
        try:
            return f.contents()
        except Exception:
            return None

    architecture = value("general.architecture")
    file_type = value("general.file_type")
    if file_type is not None:
        try:
            file_type = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(file_type)
    else:
        types = [t.tensor_type.name for t in reader.tensors]
        file_type = max(set(types), key=types.count)
    context_length = value(f"{architecture}.context_length") if architecture else None
    pooling_type = value(f"{architecture}.pooling_type") if architecture else None
    template = value("tokenizer.chat_template")
    return {
        "file_type": file_type,
        "architecture": architecture,
        "context_length": int(context_length) if context_length is not None else None,
        "pooling_type": int(pooling_type) if isinstance(pooling_type, int) else None,
        "chat_template": template if isinstance(template, str) and template else None,
        "parameter_count": int(sum(int(t.n_elements) for t in reader.tensors)),
    }


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


_ABS_PATH = re.compile(r"(?<![\w.])(/[^\s'\"():,]+)")


def scrub_paths(text: str) -> str:
    """Replace absolute paths in a message by their last component."""
    return _ABS_PATH.sub(lambda m: os.path.basename(m.group(1).rstrip("/")) or "/", text)
