"""Anthropic-compatible routes: POST /v1/messages and POST /v1/messages/count_tokens.

The same keys (``x-api-key`` or ``Authorization: Bearer``), per-model permissions, quotas, sessions
and usage as /v1/chat/completions: a request is converted to the chat service's data and runs
through ``chat_prepare`` / ``chat_start`` / ``ReplyBuilder`` like every chat (transport
``anthropic``). Errors on these routes use Anthropic's shape
``{"type": "error", "error": {"type", "message"}}``; a refused field is named in the message by
its path (``messages.1.content.0.type: ...``). The ``anthropic-version`` header is accepted and
not read: there is one version of these routes.

Tool use is converted by the pure functions below (Anthropic tools, tool_choice, ``tool_use`` and
``tool_result`` blocks to their OpenAI forms, and the chat service's ``tool_call`` /
``tool_arguments`` events to ``tool_use`` blocks); the routes refuse ``tools`` and tool blocks
until the chat service takes tools (see docs/api.md).
"""

from __future__ import annotations

import json

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from beautyai_site.api import errors
from beautyai_site.api.envelope import anthropic_error
from beautyai_site.api.exceptions import envelope_exception_handler
from beautyai_site.api.validation import parse
from inference_app import active, limits, services, streaming
from inference_app.anthropic_serializers import CountTokensRequestSerializer, MessagesRequestSerializer
from inference_app.openai_api import OpenAIView, chat_data
from inference_app.views import api_key_id
from models_app import services as registry

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


# Errors -----------------------------------------------------------------------------------------

def field_path(detail, prefix: str = "") -> tuple[str, str] | None:
    """The dotted path and message of the first refusal in a DRF error detail (lists by index)."""
    if isinstance(detail, dict):
        items = detail.items()
    elif isinstance(detail, list) and detail and all(isinstance(item, str) for item in detail):
        return prefix, str(detail[0])
    elif isinstance(detail, list):
        items = ((str(index), item) for index, item in enumerate(detail))
    else:
        return prefix, str(detail)
    for key, inner in items:
        if inner in ({}, [], None):
            continue
        found = field_path(inner, prefix if key == "non_field_errors" else f"{prefix}.{key}" if prefix else key)
        if found is not None:
            return found
    return None


def anthropic_exception_handler(exc, context):
    """The envelope handler's answer (status, headers, logging) with Anthropic's body."""
    response = envelope_exception_handler(exc, context)
    body = response.data
    details = body.get("error_details")
    fields = details.get("fields") if isinstance(details, dict) else None
    found = field_path(fields) if fields else None
    message = f"{found[0]}: {found[1]}" if found and found[0] else body["error_message"]
    response.data = anthropic_error(response.status_code, message)
    return response


class AnthropicView(OpenAIView):
    def get_exception_handler(self):
        return anthropic_exception_handler


# Requests to chat messages ----------------------------------------------------------------------

def tools_to_openai(tools: list[dict] | None) -> list[dict] | None:
    """Anthropic tools ({name, description, input_schema}) as OpenAI function tools."""
    if not tools:
        return None
    return [{"type": "function", "function": {"name": tool["name"], "description": tool.get("description", ""),
                                              "parameters": tool["input_schema"]}} for tool in tools]


def tool_choice_to_openai(choice: dict | None):
    """auto -> "auto", any -> "required", none -> "none", {"type": "tool", "name"} -> that function."""
    if not choice:
        return None
    if choice["type"] == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice["type"]]


def _joined(blocks: list[dict]) -> str:
    return "".join(block["text"] for block in blocks if block["type"] == "text")


def messages_to_chat(system: str | None, messages: list[dict]) -> list[dict]:
    """Checked Anthropic messages as chat messages (OpenAI's forms).

    A user turn's ``tool_result`` blocks become ``tool`` messages (before its text, as Anthropic
    orders them); an assistant turn's ``tool_use`` blocks become its ``tool_calls``, their ids kept:
    they are the client's references within its own history. Thinking blocks sent back are dropped
    (the chat history keeps answers only).
    """
    out = [{"role": "system", "content": system}] if system else []
    for message in messages:
        blocks = message["content"]
        if message["role"] == "user":
            for block in blocks:
                if block["type"] == "tool_result":
                    out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": block["content"]})
            if any(block["type"] == "text" for block in blocks):
                out.append({"role": "user", "content": _joined(blocks)})
            continue
        turn = {"role": "assistant", "content": _joined(blocks)}
        calls = [{"id": block["id"], "type": "function",
                  "function": {"name": block["name"], "arguments": json.dumps(block["input"], ensure_ascii=False)}}
                 for block in blocks if block["type"] == "tool_use"]
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    return out


def _refuse_tools_for_now(parsed: dict) -> None:
    """The chat service does not take tools yet (docs/api.md): refused by name rather than ignored."""
    if parsed.get("tools") or parsed.get("tool_choice"):
        field = "tools" if parsed.get("tools") else "tool_choice"
        raise errors.ValidationError(f"{field}: tool use is not available on this server yet",
                                     details={"fields": {field: ["tool use is not available on this server yet"]}})
    for m_index, message in enumerate(parsed["messages"]):
        for b_index, block in enumerate(message["content"]):
            if block["type"] in ("tool_use", "tool_result"):
                path = f"messages.{m_index}.content.{b_index}.type"
                raise errors.ValidationError(f"{path}: tool use is not available on this server yet")


def message_data(parsed: dict) -> dict:
    """A checked /v1/messages request as the chat service's ChatRequest."""
    _refuse_tools_for_now(parsed)
    if parsed["messages"][-1]["role"] != "user":
        raise errors.ValidationError(
            "messages: the last message must be a user message (continuing an assistant prefill is not supported)",
            details={"fields": {"messages": ["the last message must be a user message"]}})
    options = {"model": parsed["model"], "stream": parsed["stream"], "session_id": parsed.get("session_id"),
               "max_tokens": parsed["max_tokens"], "stop": parsed.get("stop_sequences"),
               **{key: parsed.get(key) for key in ("temperature", "top_p", "top_k")}}
    data = chat_data(options, messages_to_chat(parsed.get("system"), parsed["messages"]))
    if (parsed.get("thinking") or {}).get("type") in ("enabled", "disabled"):
        data["generation_config"]["enable_thinking"] = parsed["thinking"]["type"] == "enabled"
    return data


# Answers ----------------------------------------------------------------------------------------

class AnthropicMessage:
    """The Message object of one reply and its stream events, built from the chat service's events."""

    def __init__(self, builder: services.ReplyBuilder, input_tokens: int | None = None):
        self.builder = builder
        self.id = "msg_" + builder.plan.request_id
        self.input_tokens = input_tokens
        self.index = -1  # the content block being streamed
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # tool call index -> content block index

    def _usage(self) -> dict:
        stats = self.builder.generation_stats()
        return {"input_tokens": stats.get("prompt_tokens") or self.input_tokens or 0,
                "output_tokens": stats.get("tokens_generated") or 0}

    def stop_reason(self) -> str:
        reason = self.builder.finish_reason
        if reason == "stop" and (self.builder.stats or {}).get("stop_sequence"):
            return "stop_sequence"
        return STOP_REASONS.get(reason, reason)

    def _message(self, content: list, *, stop_reason, stop_sequence, usage: dict) -> dict:
        plan = self.builder.plan
        return {"id": self.id, "type": "message", "role": "assistant", "model": plan.model.name, "content": content,
                "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage,
                "session_id": str(plan.session.id)}  # extension: where the chat was stored

    def _tool_calls(self) -> list[dict]:
        return self.builder.response_fields().get("tool_calls") or []

    def body(self) -> dict:
        thinking, answer = self.builder.texts()
        content = [{"type": "thinking", "thinking": thinking, "signature": ""}] if thinking else []
        calls = self._tool_calls()
        if answer or not calls:
            content.append({"type": "text", "text": answer})
        for call in calls:
            try:
                arguments = json.loads(call["function"]["arguments"] or "{}")
            except ValueError:
                arguments = {}
            content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": arguments})
        stop_reason = self.stop_reason()
        return self._message(content, stop_reason=stop_reason, usage=self._usage(),
                             stop_sequence=(self.builder.stats or {}).get("stop_sequence")
                             if stop_reason == "stop_sequence" else None)

    def _open(self, block: dict, kind: str) -> list[tuple[str, dict]]:
        events = self._close()
        self.index += 1
        self.open_kind = kind
        return events + [("content_block_start", {"type": "content_block_start", "index": self.index,
                                                  "content_block": block})]

    def _close(self) -> list[tuple[str, dict]]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _delta(self, index: int, delta: dict) -> tuple[str, dict]:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}

    def events_for(self, event_type: str, payload: dict) -> list[tuple[str, dict]]:
        """Anthropic's stream events for one transport event (see ReplyBuilder)."""
        if event_type == "start":
            usage = {"input_tokens": self.input_tokens or 0, "output_tokens": 0}
            return [("message_start", {"type": "message_start", "message": self._message(
                        [], stop_reason=None, stop_sequence=None, usage=usage)}),
                    ("ping", {"type": "ping"})]
        if event_type in ("delta", "reasoning"):
            kind = "text" if event_type == "delta" else "thinking"
            events = [] if self.open_kind == kind else self._open(
                {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""},
                kind)
            delta = {"type": "text_delta", "text": payload["content"]} if kind == "text" else \
                {"type": "thinking_delta", "thinking": payload["content"]}
            return events + [self._delta(self.index, delta)]
        if event_type == "tool_call":
            events = self._open({"type": "tool_use", "id": payload["id"], "name": payload["name"], "input": {}},
                                f"tool:{payload['index']}")
            self.tool_blocks[payload["index"]] = self.index
            return events
        if event_type == "tool_arguments":
            return [self._delta(self.tool_blocks[payload["index"]],
                                {"type": "input_json_delta", "partial_json": payload["arguments"]})]
        if event_type == "done":
            events = self._close()
            if self.index < 0:  # nothing was said: the final message still has its (empty) text block
                events = self._open({"type": "text", "text": ""}, "text") + self._close()
            stop_reason = self.stop_reason()
            stop_sequence = (self.builder.stats or {}).get("stop_sequence") if stop_reason == "stop_sequence" else None
            return events + [("message_delta", {"type": "message_delta",
                                                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                                "usage": self._usage()}),
                             ("message_stop", {"type": "message_stop"})]
        return [("error", anthropic_error(500, f"Generation failed: {self.builder.error}"))]


def stream_response(message: AnthropicMessage, handle):
    async def body():
        async for event_type, payload in streaming.events_for(message.builder, handle):
            for name, data in message.events_for(event_type, payload):
                yield streaming.sse(name, data)

    return streaming.streaming_response(message.builder, handle, body())


class MessagesView(AnthropicView):
    required_permissions = {"post": "chat"}
    throttle_scope = limits.SCOPE

    @extend_schema(request=MessagesRequestSerializer, responses={200: dict},
                   description="Anthropic-compatible Messages API; stream=true answers Anthropic's SSE events "
                               "(message_start ... message_stop). Auth: x-api-key or Authorization: Bearer.")
    def post(self, request):
        parsed = parse(MessagesRequestSerializer, request.data)
        plan = services.chat_prepare(user=request.user, data=message_data(parsed), transport="anthropic",
                                     api_key_id=api_key_id(request), model_field="model")
        # message_start carries the prompt's size; counted before the runner is busy generating.
        input_tokens = registry.count_tokens(name=plan.model.name, messages=plan.messages) if parsed["stream"] else None
        handle = services.chat_start(plan)
        active.register(plan.request_id, request.user.pk, handle)
        message = AnthropicMessage(services.ReplyBuilder(plan), input_tokens)
        if parsed["stream"]:
            return stream_response(message, handle)
        services.chat_run_to_end(message.builder, handle)
        if message.builder.error is not None:
            raise errors.SystemError(f"Generation failed: {message.builder.error}")
        return Response(message.body())


class CountTokensView(AnthropicView):
    required_permissions = {"post": "chat"}
    throttle_scope = limits.SCOPE

    @extend_schema(request=CountTokensRequestSerializer, responses={200: dict},
                   description="The number of tokens the prompt of these messages takes, through the model's chat "
                               "template (the chat permission; the model is loaded on demand as for a chat).")
    def post(self, request):
        parsed = parse(CountTokensRequestSerializer, request.data)
        _refuse_tools_for_now(parsed)
        count = services.chat_count_tokens(user=request.user, model_name=parsed["model"],
                                           messages=messages_to_chat(parsed.get("system"), parsed["messages"]))
        return Response({"input_tokens": count})
