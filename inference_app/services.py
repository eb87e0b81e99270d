"""Chat: from a validated request to a stored reply, whatever the transport.

Every transport (REST, SSE, WebSocket, /v1, /v1/messages) calls ``chat_open``, which runs
``chat_prepare`` (access, session, context, on-demand load) and ``chat_start`` (submits to the
model's runner, then stores the user message), registers the generation for cancels and answers a
``ChatRun``: its ``ReplyBuilder`` is fed with the runner's events (``events()`` streamed,
``run_to_end()`` not), and ``chat_record`` stores its result once per reply (or, with Ray placement,
``store_orphaned_reply`` in another web process when this one dies mid-reply). Each transport keeps
only its wire format. The model test and each benchmark run go the same way from a
``prompt_plan``: a plan without a session, so that only their usage is stored. ``model_ready`` is
the preamble every generation shares.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import asdict, dataclass, field, replace

from django.db import transaction

from accounts.permissions import has_on
from beautyai_site import disconnect
from beautyai_site.api import errors
from beautyai_site.sql import ReusedQuery, field_names, instance
from inference_app import reasoning, response_parsing, tool_calls
from inference_app.models import ROLES, ChatMessage, ChatSession
from inference_app.usage import quota_check, usage_record_reply
from models_app import selectors, services as registry
from models_app.models import ModelConfig
from system_app.metrics import record_generation as record_generation_metrics

TITLE_CHARS = 60


def session_title(message: str) -> str:
    """A new chat's title: its first message on one line, cut at a word boundary with an ellipsis when long.

    chat.js's sessionTitle mirrors this for the chat list until the page reloads.
    """
    line = " ".join(message.split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS - 1]
    if line[TITLE_CHARS - 1] != " ":  # the cut fell inside a word: end at the one before, if not too far back
        space = cut.rfind(" ")
        if space >= TITLE_CHARS // 2:
            cut = cut[:space]
    return cut.rstrip(" ,.;:،؛") + "…"


@dataclass
class ChatPlan:
    request_id: str
    user: object
    model: ModelConfig
    # None for a generation that is no chat (``prompt_plan``: the model test, a benchmark's runs):
    # neither its prompt nor its reply is stored, only its usage.
    session: ChatSession | None
    messages: list[dict]
    params: object  # GenerationParams
    dropped_turns: int
    think_tags: bool
    transport: str
    api_key_id: int | None = None
    user_message: str = ""
    new_session: bool = False  # the session is saved by chat_start, with these earlier turns
    seeded: list[dict] = field(default_factory=list)
    requested_name: str = ""  # the alias the request named, when it named one (usage records keep both)
    # The request's new turns, stored by chat_start: the user's message, or tool results.
    turns: list[dict] = field(default_factory=list)
    tool_format: str | None = None  # set when the reply is parsed for tool calls
    tool_limit: int | None = None  # parallel_tool_calls: false keeps one call
    # The tokenizer's response template when it parses this reply instead of tool_format's markers.
    response_template: dict | None = None

    def another(self) -> ChatPlan:
        """The same prompt for one more generation (a benchmark's runs), under its own request id."""
        return replace(self, request_id=uuid.uuid4().hex)


def _pick_model(*, user, model_name: str | None, session: ChatSession | None):
    """The model to chat with and the alias that named it (None when the name was a model's own)."""
    if model_name:
        return registry.model_resolve_for_user(user=user, name=model_name, permission="chat")
    if session is not None and session.model is not None:
        return registry.model_get_for_user(user=user, name=session.model.name, permission="chat"), None
    default = registry.default_model()
    # A default the caller may not see is answered like no default: its name is not theirs to learn.
    if default is None or not (has_on(user, "model_read", default) or has_on(user, "chat", default)):
        raise errors.ModelNotFoundError("No model_name given and no default model is available.")
    return registry.model_get_for_user(user=user, name=default.name, permission="chat"), None


def _ready_model(*, user, model: ModelConfig, alias) -> ModelConfig:
    """``model`` loaded (on demand), or the alias's fallback when the target cannot serve this caller.

    The target cannot serve when it is not loaded and this caller may not load it, or loading it
    fails (bad files, memory budget, a crash: also what a model in ``error`` gets). The fallback
    is used only if the caller may chat with it; otherwise the target's own error stands.
    """
    try:
        ensure_loaded(user=user, model=model)
        return model
    except (errors.ConflictError, errors.ModelLoadError):
        fallback = alias.fallback if alias is not None else None
        if fallback is None or not has_on(user, "chat", fallback):
            raise
    quota_check(user=user, model=fallback)
    ensure_loaded(user=user, model=fallback)
    return fallback


_MODEL_FIELDS = field_names(ModelConfig)
# A continued chat reads its session and its history before the generation starts: their SQL is
# written once per request thread (beautyai_site/sql.py), the session with its model as
# select_related("model") would read it, the history without the columns a prompt does not use.
_SESSION = ReusedQuery(
    lambda id, owner_id: ChatSession.objects.filter(id=id, owner_id=owner_id).order_by().values(
        *field_names(ChatSession), *(f"model__{name}" for name in _MODEL_FIELDS)),
    id=uuid.UUID, owner_id=int)
_HISTORY = ReusedQuery(
    lambda session_id: ChatMessage.objects.filter(session_id=session_id).values(
        "role", "content", "tool_calls", "tool_call_id"),
    session_id=uuid.UUID)


def session_get_for_user(*, user, session_id) -> ChatSession:
    """Another user's session answers 404, exactly like a missing one (or a malformed id)."""
    try:
        session_id = session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id))
    except ValueError:
        raise errors.NotFoundError("Chat session not found.") from None
    rows = _SESSION.rows(id=session_id, owner_id=user.pk)
    if not rows:
        raise errors.NotFoundError("Chat session not found.")
    session = instance(ChatSession, rows[0])
    if session.model_id is not None:
        model = instance(ModelConfig, {name: rows[0][f"model__{name}"] for name in _MODEL_FIELDS})
        ChatSession.model.field.set_cached_value(session, model)
    return session


def session_history(session: ChatSession) -> list[dict]:
    """The session's stored turns as prompt messages, oldest first."""
    return [_prompt_message(row) for row in _HISTORY.rows(session_id=session.pk) if row["role"] in ROLES]


def ensure_loaded(*, user, model: ModelConfig) -> None:
    """Loads on demand when the caller may load this model (as Ollama does); otherwise 409."""
    if selectors.model_is_loaded(model.name):
        return
    if not has_on(user, "model_load", model):
        raise errors.ConflictError(f"Model '{model.name}' is not loaded.", details={"model_name": model.name})
    registry.model_load(model=model, user=user)


def model_ready(*, user, model: ModelConfig, alias=None, field: str = "model_name",
                generating: bool = True) -> ModelConfig:
    """The model that will serve, loaded: the preamble of every generation (chats, test, benchmark).

    In this order: the server is not restarting (503); the model generates (400 naming ``field``,
    what the transport calls it); the caller's quota (429, before anything is stored or loaded);
    loaded on demand, or the alias's fallback, which must generate too. ``generating=False``
    (counting tokens) skips the restart and quota checks: nothing is generated.
    """
    if generating and not selectors.accepting_generations():
        raise errors.ServiceUnavailableError("The server is restarting; try again shortly.")
    registry.require_task(model=model, task="generate", field=field)
    if generating:
        quota_check(user=user, model=model)
    ready = _ready_model(user=user, model=model, alias=alias)
    if ready is not model:
        registry.require_task(model=ready, task="generate", field=field)
    return ready


def chat_count_tokens(*, user, model_name: str, messages: list[dict], tools: list[dict] | None = None) -> int:
    """The tokens ``messages`` (and ``tools``, as the template shows them) take as the model's prompt:
    what a chat with them would send, so access, aliases and on-demand loading are a chat's."""
    model, alias = _pick_model(user=user, model_name=model_name, session=None)
    ready = model_ready(user=user, model=model, alias=alias, field="model", generating=False)
    return registry.count_tokens(name=ready.name, messages=messages, tools=tools)


def generation_params(model: ModelConfig, config: dict):
    """The request's generation_config over the registry entry's defaults; max_tokens capped by the entry."""
    merged = {**model.generation_defaults, **config}
    merged["max_tokens"] = min(config.get("max_tokens", model.max_new_tokens), model.max_new_tokens)
    # ResponseFormatField already made the engines' constraint of it (None for "text").
    merged["constraint"] = config.get("response_format")
    return registry.GenerationParams(**{k: v for k, v in merged.items() if k in registry.GenerationParams.__dataclass_fields__})


def fit_context(*, model_name: str, messages: list[dict], params, tail: int = 1) -> tuple[list[dict], int]:
    """Drops the oldest turns (system messages kept) until the prompt and max_tokens fit the window.

    The last ``tail`` messages (the new turn, or tool results with the call they answer) are always
    kept. A prompt that cannot fit even with every earlier turn dropped is refused; when the prompt
    fits but leaves less room than max_tokens, max_tokens shrinks (the reply then ends with "length").
    """
    window = selectors.context_length(model_name)
    if not window:
        return messages, 0
    # The common case, a prompt far inside the window, is told by a bound: no round trip to the runner.
    if selectors.prompt_surely_fits(model_name, messages, params.tools, window - params.max_tokens):
        return messages, 0
    count = lambda msgs: registry.count_tokens(name=model_name, messages=msgs, tools=params.tools)  # noqa: E731 - local shorthand
    total = count(messages)
    if total + params.max_tokens <= window:
        return messages, 0
    systems = [m for m in messages[:-tail] if m["role"] == "system"]
    history = [m for m in messages[:-tail] if m["role"] != "system"]
    last = messages[-tail:]
    if count(systems + last) >= window:
        raise errors.ValidationError(
            "message: longer than the model's context window on its own",
            details={"context_window_tokens": window},
        )
    dropped = 0
    while history and total + params.max_tokens > window:
        history.pop(0)
        dropped += 1
        # A tool result without the call it answers means nothing (and some templates refuse it).
        while history and history[0]["role"] == "tool":
            history.pop(0)
            dropped += 1
        total = count(systems + history + last)
    params.max_tokens = max(1, min(params.max_tokens, window - total))
    return systems + history + last, dropped


def _prompt_message(row: dict) -> dict:
    turn = {"role": row["role"], "content": row["content"]}
    if row["tool_calls"]:
        turn["tool_calls"] = row["tool_calls"]
    if row["role"] == "tool":
        turn["tool_call_id"] = row["tool_call_id"]
    return turn


def _check_tool_results(history: list[dict], turns: list[dict]) -> None:
    """Tool results must answer the calls of the assistant turn just before them."""
    previous = history[-1] if history else {}
    ids = {call["id"] for call in previous.get("tool_calls") or []}
    if not ids:
        raise errors.ValidationError("messages: tool results must follow an assistant message with tool_calls",
                                     details={"fields": {"messages": ["tool results follow no tool calls"]}})
    for turn in turns:
        if turn["tool_call_id"] not in ids:
            message = f"tool_call_id {turn['tool_call_id']!r} answers no call of the previous assistant message"
            raise errors.ValidationError(f"messages: {message}", details={"fields": {"messages": [message]}})


def _bad_tools(message: str):
    return errors.ValidationError(f"tools: {message}", details={"fields": {"tools": [message]}})


def tool_setup(*, model: ModelConfig, data: dict, params) -> str | None:
    """Puts the request's tools (and, for a forced call, the decoding constraint) into ``params``;
    answers the format the reply is parsed with, or None when it is not parsed for calls.

    ``tool_choice: "none"`` hands the template no tools at all, so the model is not told of them.
    """
    tools = data.get("tools") or None
    choice = data.get("tool_choice") or "auto"
    if not tools or choice == "none":
        return None
    fmt = selectors.tool_call_format(model)
    params.tools = [{"type": "function", "function": dict(tool["function"])} for tool in tools]
    if choice == "required" or isinstance(choice, dict):
        # Checked here, before anything is stored, so that a schema the engines cannot enforce is a
        # 400 naming tools rather than a failed generation.
        try:
            params.constraint = registry.normalize_constraint(tool_calls.constraint_for(params.tools, choice, fmt),
                                                     field="tools")
        except (registry.ConstraintError, tool_calls.DefinitionClash) as exc:
            raise _bad_tools(f"cannot force a call with these parameters: {exc}") from None
    return fmt


def reply_parser_setup(*, model: ModelConfig, params, fmt: str | None) -> dict | None:
    """The tokenizer's response template when it should parse this reply's calls: after a
    ``tool_parser`` parameter, before the chat template's markers (docs/engines.md "Tool calls")."""
    if fmt is None:
        return None
    return response_parsing.select(selectors.response_template(model), tools=params.tools,
                                   constraint=params.constraint, fmt=fmt)


def chat_prepare(*, user, data: dict, transport: str = "rest", api_key_id: int | None = None,
                 model_field: str = "model_name") -> ChatPlan:
    """Checks access, resolves the session and model, loads on demand, builds the context, stores the user message.

    The generation's id is made here, never taken from the client: it keys the runner's request
    table and the cancel registry, so a client-chosen id (an ``X-Request-ID`` a proxy sets to a
    constant, a guess) would join two users' generations.
    """
    # Also model_ready's first check; here before any lookup, so that a restart answers every chat 503.
    if not selectors.accepting_generations():
        raise errors.ServiceUnavailableError("The server is restarting; try again shortly.")
    session = session_get_for_user(user=user, session_id=data["session_id"]) if data.get("session_id") else None
    if session is not None and data.get("chat_history"):
        raise errors.ValidationError("chat_history: only for a new session; this session has its own history")
    model, alias = _pick_model(user=user, model_name=data.get("model_name"), session=session)
    registry.require_task(model=model, task="generate", field=model_field)
    if data.get("tools") and data.get("tool_choice") != "none" and model.engine == "openai":
        # The remote server would answer calls as structured deltas, which the engine's text stream drops.
        raise _bad_tools("not supported for models served by the openai engine")
    model = model_ready(user=user, model=model, alias=alias, field=model_field)
    params = generation_params(model, dict(data.get("generation_config") or {}))
    # A full queue answers 429 before anything is counted or stored (chat_start checks again, atomically).
    registry.check_queue(model=model)

    seeded = [dict(turn) for turn in data.get("chat_history") or []]
    history = seeded if session is None else session_history(session)
    turns = [dict(turn) for turn in data.get("turns") or []] or [{"role": "user", "content": data["message"]}]
    tail = len(turns)
    if turns[0]["role"] == "tool":
        _check_tool_results(history, turns)
        tail += 1  # the call they answer stays with them
    tool_format = tool_setup(model=model, data=data, params=params)
    response_template = reply_parser_setup(model=model, params=params, fmt=tool_format)
    messages, dropped = fit_context(model_name=model.name, messages=history + turns, params=params, tail=tail)

    new_session = session is None
    if new_session:
        # Not saved yet (chat_start stores it), but its id is already fixed for the start event.
        first = data["message"] or next((t["content"] for t in seeded if t["role"] == "user"), "")
        session = ChatSession(owner=user, model=model, model_name=model.name, title=session_title(first))
    return ChatPlan(
        request_id=uuid.uuid4().hex,
        user=user,
        model=model,
        session=session,
        messages=messages,
        params=params,
        dropped_turns=dropped,
        think_tags=selectors.uses_think_tags(model),
        transport=transport,
        api_key_id=api_key_id,
        user_message=data["message"],
        new_session=new_session,
        seeded=seeded,
        requested_name=alias.name if alias is not None else "",
        turns=turns,
        tool_format=tool_format,
        tool_limit=1 if data.get("parallel_tool_calls") is False else None,
        response_template=response_template,
    )


def prompt_plan(*, user, model: ModelConfig, prompt: str, generation_config: dict, transport: str,
                api_key_id: int | None = None) -> ChatPlan:
    """One prompt as a single user turn, for a generation that is no chat (the model test, a
    benchmark's runs): the model readied (``model_ready``), the turn fitted to its context window.

    The plan has no session, so ``chat_start`` and ``chat_record`` store nothing of it but its
    usage. The caller has checked access to ``model`` itself (the test and benchmark permissions).
    """
    model_ready(user=user, model=model)
    params = generation_params(model, generation_config)
    messages, dropped = fit_context(model_name=model.name, messages=[{"role": "user", "content": prompt}],
                                    params=params)
    return ChatPlan(request_id=uuid.uuid4().hex, user=user, model=model, session=None, messages=messages,
                    params=params, dropped_turns=dropped, think_tags=selectors.uses_think_tags(model),
                    transport=transport, api_key_id=api_key_id, user_message=prompt)


def _store_user_turn(plan: ChatPlan) -> None:
    session, model = plan.session, plan.model
    with transaction.atomic():
        if plan.new_session:
            session.save(force_insert=True)
            ChatMessage.objects.bulk_create(ChatMessage(session=session, **turn) for turn in plan.seeded)
        elif session.model_id != model.pk:
            session.model, session.model_name = model, model.name
            session.save(update_fields=["model", "model_name", "updated_at"])
        for turn in plan.turns:
            ChatMessage.objects.create(session=session, **turn)


def orphan_tag(plan: ChatPlan) -> dict | None:
    """What another web process needs to store this reply if this one dies before it ends (Ray
    placement: the runner keeps the reply's text for it; ``store_orphaned_reply``). None for a
    generation without a session: a model test or benchmark run that dies with its process is gone."""
    if plan.session is None:
        return None
    tag = {"session_id": str(plan.session.id), "request_id": plan.request_id, "model_name": plan.model.name,
           "requested_name": plan.requested_name, "transport": plan.transport, "api_key_id": plan.api_key_id,
           "dropped_turns": plan.dropped_turns, "think_tags": plan.think_tags}
    if plan.tool_format is not None:  # the reply is parsed for calls: the parser needs these again
        tag.update(tool_format=plan.tool_format, tool_limit=plan.tool_limit,
                   response_template=plan.response_template, tools=plan.params.tools)
    return tag


def chat_start(plan: ChatPlan):
    """Submits the generation, then stores the user's message (and a new session) while the runner
    processes the prompt, so that the write does not add to the time to first token.

    A full queue answers 429 at once, with nothing stored. The message is committed before this
    returns, so a reply that fails later never loses it; when the write itself fails, the
    generation is cancelled and the error propagates.
    """
    handle = registry.generate(model=plan.model, messages=plan.messages, params=plan.params, tag=orphan_tag(plan))
    if plan.session is None:  # no chat to store the prompt in
        return handle
    try:
        _store_user_turn(plan)
    except BaseException:
        handle.cancel()
        raise
    return handle


class ReplyBuilder:
    """Turns runner events into transport events and remembers the reply.

    Transport events are ``(type, payload)`` with type start | delta | reasoning | done | error,
    the same for SSE and WebSocket; a request with tools adds tool_call (index, id, name) and
    tool_arguments (index, the next piece of the arguments' JSON text).
    """

    def __init__(self, plan: ChatPlan):
        self.plan = plan
        fmt = getattr(plan, "tool_format", None)  # the tests' stand-in plans may have none
        limit, template = getattr(plan, "tool_limit", None), getattr(plan, "response_template", None)
        # A response template with a reasoning field reads the reasoning itself (from the turn's prefix on).
        think_tags = plan.think_tags and not response_parsing.has_reasoning(template)
        self.splitter = reasoning.ThinkSplitter() if think_tags else None
        if template is not None:
            self.tools = response_parsing.TemplateCallParser(template, tools=plan.params.tools, limit=limit)
        else:
            self.tools = tool_calls.ToolCallParser(fmt, limit=limit) if fmt else None
        self.call_ids: dict[int, str] = {}
        self.answer: list[str] = []
        self.thinking: list[str] = []
        self.stats: dict | None = None
        self.error: str | None = None
        self.queue_time_ms: float | None = None
        self.recorded = False
        self.streamed = False  # events_for began: its own cleanup covers an early stop
        self.deltas = 0
        self.lock = threading.Lock()

    @property
    def session_id(self) -> str | None:
        return str(self.plan.session.id) if self.plan.session is not None else None

    def start_event(self) -> tuple[str, dict]:
        return "start", {"session_id": self.session_id, "request_id": self.plan.request_id,
                         "model_name": self.plan.model.name}

    def _tool_events(self, parsed: list[tuple]) -> list[tuple[str, dict]]:
        out = []
        for kind, *rest in parsed:
            if kind == "content":
                self.answer.append(rest[0])
                out.append(("delta", {"content": rest[0]}))
            elif kind == "reasoning":  # only a response template's parser reads reasoning
                self.thinking.append(rest[0])
                out.append(("reasoning", {"content": rest[0]}))
            elif kind == "call":
                index, name = rest
                # Call ids join a call to its result in the next request: made here, never by the model.
                self.call_ids[index] = "call_" + secrets.token_hex(12)
                out.append(("tool_call", {"index": index, "id": self.call_ids[index], "name": name}))
            else:
                out.append(("tool_arguments", {"index": rest[0], "arguments": rest[1]}))
        return out

    def _route(self, pieces: list[tuple[str, str]]) -> list[tuple[str, dict]]:
        out = []
        for kind, piece in pieces:
            if kind == "reasoning":
                self.thinking.append(piece)
                out.append(("reasoning", {"content": piece}))
            elif self.tools is not None:
                out += self._tool_events(self.tools.feed(piece))
            else:
                self.answer.append(piece)
                out.append(("delta", {"content": piece}))
        return out

    def _pieces(self, text: str) -> list[tuple[str, dict]]:
        return self._route(self.splitter.feed(text) if self.splitter else [("content", text)])

    def on_event(self, event, queue_time_ms: float | None = None) -> list[tuple[str, dict]]:
        self.queue_time_ms = queue_time_ms
        if event.kind == "delta":
            self.deltas += 1
            return self._pieces(event.text)
        tail = self._route(self.splitter.flush() if self.splitter else [])
        if self.tools is not None:
            tail += self._tool_events(self.tools.flush())
        if event.kind == "done":
            self.stats = asdict(event.stats) if event.stats is not None else None
            return tail + [("done", self.response_fields())]
        if event.cancelled and self.plan.session is not None:
            # e.g. the model was unloaded: a cancellation, not a failure; the reply so far stands.
            # A generation without a session (model test, benchmark run) keeps no partial reply: it failed.
            self.cancelled_locally(reason=event.message)
            return tail + [("done", self.response_fields())]
        self.error = event.message or "generation failed"
        return tail + [("error", self.error_payload())]

    def cancelled_locally(self, reason: str = "cancelled") -> None:
        """The stream ended before the runner's final stats: keep what arrived, marked cancelled.

        Token counts are the deltas received (the runner sends one delta per generated token).
        """
        if self.stats is None and self.error is None:
            self.stats = {"prompt_tokens": 0, "tokens_generated": self.deltas, "finish_reason": "cancelled",
                          "time_to_first_token_ms": None, "inference_time_ms": 0.0, "tokens_per_second": 0.0,
                          "cancel_reason": reason}

    @property
    def finish_reason(self) -> str:
        if self.error is not None:
            return "error"
        reason = (self.stats or {}).get("finish_reason", "error")
        return "tool_calls" if reason == "stop" and self.tool_calls() else reason

    def tool_calls(self) -> list[dict]:
        """The reply's complete calls, as OpenAI writes them."""
        if self.tools is None:
            return []
        return [{"id": self.call_ids[call["index"]], "type": "function",
                 "function": {"name": call["name"], "arguments": call["arguments"]}} for call in self.tools.calls]

    def texts(self) -> tuple[str, str]:
        return reasoning.finish("".join(self.thinking), "".join(self.answer), self.splitter)

    def generation_stats(self) -> dict:
        stats = dict(self.stats or {"prompt_tokens": 0, "tokens_generated": 0, "inference_time_ms": 0.0,
                                      "time_to_first_token_ms": None, "tokens_per_second": 0.0})
        stats["finish_reason"] = self.finish_reason
        stats["queue_time_ms"] = self.queue_time_ms
        stats["dropped_turns"] = self.plan.dropped_turns
        return stats

    def response_fields(self) -> dict:
        thinking, answer = self.texts()
        return {
            "response": answer,
            "reasoning": thinking,
            "session_id": self.session_id,
            "request_id": self.plan.request_id,
            "model_name": self.plan.model.name,
            "generation_stats": self.generation_stats(),
            "tool_calls": self.tool_calls(),
        }

    def error_payload(self) -> dict:
        from beautyai_site.api.envelope import error_body

        return error_body(None, code="SystemError", message=self.error,
                          details={"request_id": self.plan.request_id, "session_id": self.session_id})


def chat_record(builder: ReplyBuilder) -> ChatMessage | None:
    """Stores the assistant reply once, with what was generated even when cancelled or failed.

    A generation without a session (model test, benchmark run) stores only its usage record, and only
    when the runner finished it; it feeds no chat metrics.
    """
    with builder.lock:
        if builder.recorded:
            return None
        builder.recorded = True
    stats = builder.generation_stats()
    if builder.plan.session is None:
        if builder.stats is not None:
            usage_record_reply(builder.plan, stats)
        return None
    thinking, answer = builder.texts()
    message = ChatMessage.objects.create(
        session=builder.plan.session,
        role="assistant",
        content=answer,
        reasoning=thinking,
        prompt_tokens=stats.get("prompt_tokens"),
        completion_tokens=stats.get("tokens_generated"),
        stats=stats,
        finish_reason=builder.finish_reason,
        tool_calls=builder.tool_calls(),
    )
    ChatSession.objects.filter(pk=builder.plan.session.pk).update(updated_at=message.created_at)
    record_generation_metrics(builder.plan.model.name, stats.get("tokens_generated") or 0,
                              stats.get("time_to_first_token_ms"))
    usage_record_reply(builder.plan, stats)
    return message


@dataclass
class ChatRun:
    """One reply in flight, as every transport (and the model test and benchmark) gets it from ``chat_open``."""

    plan: ChatPlan
    handle: object  # the runner's GenerationHandle
    builder: ReplyBuilder
    prompt_tokens: int | None = None  # counted before the start when chat_open was asked to

    def events(self):
        """The transport events (start ... done | error), asynchronously; a consumer that stops early
        cancels the generation and the partial reply is stored (streaming.events_for)."""
        from inference_app import streaming

        return streaming.events_for(self.builder, self.handle)

    def stream_response(self, body=None):
        """The event-stream response of ``body`` (an async iterator over ``events()`` in the
        transport's wire format), or of the events themselves as SSE (REST's stream)."""
        from inference_app import streaming

        if body is None:
            return streaming.sse_response(self.builder, self.handle)
        return streaming.streaming_response(self.builder, self.handle, body)

    def read_to_end(self, *, client: disconnect.ClientGone | None = None, observe=None) -> ReplyBuilder:
        """Feeds the builder a non-streamed reply's events up to the last, storing nothing (``chat_record``).

        A client that leaves meanwhile cancels the generation: ``client``, by default the current
        request's (a benchmark's pool threads do not share the request's context, so they are given it).
        ``observe`` sees each runner event as it arrives, before the builder does (a benchmark's timings).
        """
        from inference_app import active

        try:
            with (client or disconnect.current()).watch(self.handle.cancel):
                for event in self.handle:
                    if observe is not None:
                        observe(event)
                    self.builder.on_event(event, self.handle.queue_time_ms)
        finally:
            active.unregister(self.plan.request_id)
        return self.builder

    def run_to_end(self) -> ReplyBuilder:
        """A non-streamed reply, read to its end and stored, even when reading fails (a client that
        leaves cancels it: stored as cancelled); a failed generation raises SystemError."""
        try:
            self.read_to_end()
        finally:
            chat_record(self.builder)
        if self.builder.error is not None:
            details = {"request_id": self.plan.request_id}
            if self.plan.session is not None:
                details = {"session_id": self.builder.session_id, **details}
            raise errors.SystemError(f"Generation failed: {self.builder.error}", details=details)
        return self.builder


def chat_open(*, user=None, data: dict | None = None, transport: str = "rest", api_key_id: int | None = None,
              model_field: str = "model_name", count_prompt: bool = False, plan: ChatPlan | None = None) -> ChatRun:
    """Prepares and starts one generation and registers it for cancels: the start of every chat, and
    of the model test's and each benchmark run's generation.

    A chat's ``data`` is prepared here (``chat_prepare``) for ``user`` over ``transport``; the model
    test and the benchmark pass the ``plan`` of their prompt instead (``prompt_plan``).
    ``count_prompt``: the prompt's tokens are counted (tools included) before the generation starts,
    while the runner is not busy with it, for a transport that announces them first (Anthropic's
    ``message_start``).
    """
    from inference_app import active

    if (plan is None) == (data is None):
        raise TypeError("chat_open takes a chat's data or a prepared plan")
    if plan is None:
        plan = chat_prepare(user=user, data=data, transport=transport, api_key_id=api_key_id,
                            model_field=model_field)
    prompt_tokens = (registry.count_tokens(name=plan.model.name, messages=plan.messages, tools=plan.params.tools)
                     if count_prompt else None)
    handle = chat_start(plan)
    active.register(plan.request_id, plan.user.pk, handle)
    return ChatRun(plan=plan, handle=handle, builder=ReplyBuilder(plan), prompt_tokens=prompt_tokens)


def store_orphaned_reply(*, tag: dict, text: str, stats: dict | None, error: str | None = None,
                         **_signal) -> ChatMessage | None:
    """Stores the reply of a web process that died mid-generation (Ray placement), as that process's
    ``chat_record`` would have: the assistant message of its session, content split from reasoning
    (and tool calls) by a ``ReplyBuilder`` rebuilt from ``orphan_tag``, the runner's final stats (its
    finish reason: "cancelled" unless the reply ended on its own first), the session's ``updated_at``,
    the usage record and the generation metrics. The message's stats also hold ``request_id`` (which
    makes this idempotent) and, when cancelled, ``cancel_reason``. The receiver of
    ``models_app.signals.reply_orphaned``.

    Nothing is stored for a session that is gone (deleted since, or never stored: the process died
    before ``chat_start`` stored it), nor for a tag that is not ``orphan_tag``'s.
    """
    if not isinstance(tag, dict) or "session_id" not in tag or "request_id" not in tag:
        return None
    session = ChatSession.objects.filter(pk=tag["session_id"]).select_related("owner").first()
    if session is None:
        return None
    request_id = tag["request_id"]
    if session.messages.filter(role="assistant", stats__request_id=request_id).exists():
        return None
    model = ModelConfig.objects.filter(name=tag["model_name"]).first() or ModelConfig(name=tag["model_name"])
    plan = ChatPlan(
        request_id=request_id, user=session.owner, model=model, session=session, messages=[],
        params=registry.GenerationParams(tools=tag.get("tools")), dropped_turns=tag.get("dropped_turns") or 0,
        think_tags=bool(tag.get("think_tags")), transport=tag.get("transport") or "rest",
        api_key_id=tag.get("api_key_id"), requested_name=tag.get("requested_name") or "",
        tool_format=tag.get("tool_format"), tool_limit=tag.get("tool_limit"),
        response_template=tag.get("response_template"),
    )
    builder = ReplyBuilder(plan)
    if text:
        builder.on_event(_OrphanEvent("delta", text=text))
    if stats is not None:
        known = registry.GenerationStats.__dataclass_fields__
        builder.on_event(_OrphanEvent("done", stats=registry.GenerationStats(
            **{k: v for k, v in stats.items() if k in known})))
    else:
        builder.on_event(_OrphanEvent("error", message=error or "generation failed"))
    # A failed generation has no stats of its own: the zeros chat_record stores for one.
    builder.stats = {**(builder.stats or {"prompt_tokens": 0, "tokens_generated": 0, "inference_time_ms": 0.0,
                                          "time_to_first_token_ms": None, "tokens_per_second": 0.0}),
                     "request_id": request_id}
    if builder.finish_reason == "cancelled":
        builder.stats["cancel_reason"] = "cancelled: web process gone"
    return chat_record(builder)


@dataclass
class _OrphanEvent:
    """A runner event as ``ReplyBuilder.on_event`` reads it, for a reply collected after the fact."""

    kind: str
    text: str = ""
    stats: object = None
    message: str = ""
    cancelled: bool = False
