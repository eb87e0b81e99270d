"""The messages between the manager (parent) and a runner process, both ways, in one place.

Each message is a dataclass; `encode` turns it into a plain dict for the pipe (plain, so that any
transport can carry it: a multiprocessing pipe today, a Ray actor's channel next) and `decode` turns
a dict back into the dataclass, refusing an unknown version, op or kind with `ProtocolError`.

Parent -> runner (key "op"): load (a spare only, first), then generate, cancel, count_tokens, embed,
release_caches, shutdown.
Runner -> parent (key "kind"): ready | load_error first, then started, delta, done, error, result, log;
stopping last when a runner shared by several web processes ends on purpose (an unload from another one).

A generation may carry a `tag` the core never reads (Generate); see runner.py's orphans.

Every message with an id gets an answer under that id: a generation ends with done or error, a call
(count_tokens, embed, release_caches, or an op the runner cannot decode) with result or error. An
error's `code` says whose fault it is (`ErrorCode`); callers branch on it, never on message text.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

from models_app.serving.engines.contract import EngineError, EngineUnavailableError, PromptError

VERSION = 1


class Op(str, Enum):
    LOAD = "load"
    GENERATE = "generate"
    CANCEL = "cancel"
    COUNT_TOKENS = "count_tokens"
    EMBED = "embed"
    RELEASE_CACHES = "release_caches"
    SHUTDOWN = "shutdown"


class Kind(str, Enum):
    READY = "ready"
    LOAD_ERROR = "load_error"
    STARTED = "started"
    DELTA = "delta"
    DONE = "done"
    ERROR = "error"
    RESULT = "result"
    LOG = "log"
    STOPPING = "stopping"


class ErrorCode(str, Enum):
    PROMPT = "prompt"            # the caller's messages or inputs: a 400, not a server fault
    ENGINE = "engine"            # the engine failed
    UNAVAILABLE = "unavailable"  # the engine cannot run here (library missing, no GPU)
    LOAD = "load"                # the model could not be loaded
    CANCELLED = "cancelled"      # stopped on purpose (unload, eviction, shutdown): the reply so far stands
    PROTOCOL = "protocol"        # a message the other side cannot decode (unknown op, version)


class ProtocolError(EngineError):
    """A message that is not part of this protocol version."""

    code = ErrorCode.PROTOCOL


# -- parent -> runner -------------------------------------------------------

@dataclass
class Load:
    spec: dict
    OP = Op.LOAD


@dataclass
class Generate:
    id: str
    messages: list
    params: dict
    # Opaque to the serving core: what the web process needs to store this reply if it dies before the
    # reply ends. A runner shared by several web processes keeps such a generation's text for another
    # one to collect (`_Runner.take_orphans`); a message without it is valid (and sent without the key).
    tag: dict | None = None
    OP = Op.GENERATE


@dataclass
class Cancel:
    id: str
    OP = Op.CANCEL


@dataclass
class CountTokens:
    id: str
    messages: list
    tools: list | None = None
    OP = Op.COUNT_TOKENS


@dataclass
class Embed:
    id: str
    inputs: list
    OP = Op.EMBED


@dataclass
class ReleaseCaches:
    id: str
    OP = Op.RELEASE_CACHES


@dataclass
class Shutdown:
    OP = Op.SHUTDOWN


# -- runner -> parent -------------------------------------------------------

@dataclass
class Ready:
    pid: int
    load_time_seconds: float
    context_length: int | None
    max_concurrency: int
    chat_template_present: bool
    think_tags: bool  # reasoning is marked with <think>…</think>
    tool_format: str
    # The tokenizer's response template and turn prefix (Engine.response_template), or None.
    response_template: dict | None = None
    # The template's tokens around plain messages (prompt_bound.measure), or None: count exactly.
    prompt_overhead: dict | None = None
    KIND = Kind.READY


@dataclass
class LoadError:
    code: ErrorCode
    message: str
    KIND = Kind.LOAD_ERROR


@dataclass
class Started:
    id: str  # the runner took the request off its queue: queue time ends here
    KIND = Kind.STARTED


@dataclass
class Delta:
    id: str
    text: str
    KIND = Kind.DELTA


@dataclass
class Done:
    id: str
    stats: dict  # GenerationStats' fields
    KIND = Kind.DONE


@dataclass
class Error:
    id: str | None
    code: ErrorCode
    message: str
    KIND = Kind.ERROR


@dataclass
class Result:
    id: str
    value: object = None
    KIND = Kind.RESULT


@dataclass
class Log:
    level: str
    message: str
    KIND = Kind.LOG


@dataclass
class Stopping:
    reason: str  # the runner ends on purpose: its entry becomes unloaded, not an error
    KIND = Kind.STOPPING


CALLS = {Op.COUNT_TOKENS: CountTokens, Op.EMBED: Embed, Op.RELEASE_CACHES: ReleaseCaches}
_BY_OP = {cls.OP: cls for cls in (Load, Generate, Cancel, CountTokens, Embed, ReleaseCaches, Shutdown)}
_BY_KIND = {cls.KIND: cls for cls in (Ready, LoadError, Started, Delta, Done, Error, Result, Log, Stopping)}
_FIELDS = {cls: {f.name for f in fields(cls)} for cls in (*_BY_OP.values(), *_BY_KIND.values())}
_CODED = (LoadError, Error)

ParentMessage = Load | Generate | Cancel | CountTokens | Embed | ReleaseCaches | Shutdown
RunnerMessage = Ready | LoadError | Started | Delta | Done | Error | Result | Log | Stopping


def encode(msg: ParentMessage | RunnerMessage) -> dict:
    # vars(), not asdict(): asdict deep-copies every field, and a delta goes out per token.
    out = dict(vars(msg))
    out["v"] = VERSION
    if isinstance(msg, Generate) and msg.tag is None:
        del out["tag"]  # the message as runners before the tag read it
    if isinstance(msg, _CODED):
        out["code"] = ErrorCode(msg.code).value
    if hasattr(msg, "OP"):
        out["op"] = msg.OP.value
    else:
        out["kind"] = msg.KIND.value
    return out


def decode(data: dict) -> ParentMessage | RunnerMessage:
    if not isinstance(data, dict):
        raise ProtocolError(f"not a protocol message: {type(data).__name__}")
    if data.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version: {data.get('v')!r} (this side speaks {VERSION})")
    try:
        cls = _BY_OP[Op(data["op"])] if "op" in data else _BY_KIND[Kind(data.get("kind"))]
    except ValueError:
        what = f"op: {data['op']!r}" if "op" in data else f"message kind: {data.get('kind')!r}"
        raise ProtocolError(f"unknown runner {what}") from None
    values = {k: v for k, v in data.items() if k not in ("v", "op", "kind")}
    unknown = set(values) - _FIELDS[cls]
    if unknown:
        raise ProtocolError(f"unknown field(s) in {cls.__name__}: {', '.join(sorted(unknown))}")
    try:
        if cls in _CODED:
            values["code"] = ErrorCode(values.get("code"))
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {cls.__name__} message: {exc}") from None


def call(op: str, id: str, **payload) -> CountTokens | Embed | ReleaseCaches:
    """The request message for a call op; ProtocolError for an op that is not a call."""
    try:
        cls = CALLS[Op(op)]
    except (ValueError, KeyError):
        raise ProtocolError(f"unknown runner op: {op!r}") from None
    return cls(id=id, **payload)


def error_code_of(exc: BaseException) -> ErrorCode:
    """The code an exception travels under; the receiving side rebuilds the class from it."""
    if isinstance(exc, PromptError):
        return ErrorCode.PROMPT
    if isinstance(exc, EngineUnavailableError):
        return ErrorCode.UNAVAILABLE
    if isinstance(exc, ProtocolError):
        return ErrorCode.PROTOCOL
    return ErrorCode.ENGINE

