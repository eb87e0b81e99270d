"""OpenAI-compatible routes under /v1: models, chat completions, completions and embeddings.

The same API keys and per-model permissions as the rest of the API (``model_read`` to list,
``chat`` to generate). Generations run through the chat service, so each request is stored as a
chat session (a new one unless the ``session_id`` extension names one of the caller's) and counts
toward usage and quotas like any chat. Errors on these routes only use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

``/v1/completions``: the engines take chat messages only (there is no raw-prompt operation), so
the prompt is sent as one user message through the model's chat template.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from array import array

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from beautyai_site.api import errors
from beautyai_site.api.exceptions import envelope_exception_handler
from beautyai_site.api.envelope import openai_error
from beautyai_site.api.validation import parse
from inference_app import embeddings, limits, services
from inference_app.tool_serializers import (
    ChatCompletionRequestSerializer,
    CompletionRequestSerializer,
    EmbeddingRequestSerializer,
)
from inference_app.views import api_key_id
from models_app import services as registry

FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}


def openai_exception_handler(exc, context):
    """The envelope handler's answer (status, headers, logging) with OpenAI's body."""
    response = envelope_exception_handler(exc, context)
    body = response.data
    details = body.get("error_details")
    fields = details.get("fields") if isinstance(details, dict) else None
    param = next(iter(fields), None) if isinstance(fields, dict) else None
    response.data = openai_error(response.status_code, body["error_code"], body["error_message"], param)
    return response


class RetryAfterMixin:
    """Adds ``Retry-After`` to a 429 that knows when the limit resets (OpenAI-shaped errors bypass the envelope handler)."""

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            response["Retry-After"] = str(retry_after)
        return response


class OpenAIView(RetryAfterMixin, APIView):
    def get_exception_handler(self):
        return openai_exception_handler


def model_object(model, name: str | None = None) -> dict:
    """``model`` as OpenAI lists it; ``name``: the alias it is listed under."""
    return {"id": name or model.name, "object": "model", "created": int(model.created_at.timestamp()),
            "owned_by": "beautyai"}


class ModelListView(OpenAIView):
    required_permissions = {"get": "model_read"}

    @extend_schema(operation_id="v1_models_list", responses={200: dict},
                   description="OpenAI-compatible model list: the models you may read, and the aliases of those.")
    def get(self, request):
        entries = [(model.name, model_object(model)) for model in registry.models_readable_by(request.user)]
        entries += [(alias.name, model_object(alias, alias.name)) for alias in registry.aliases_readable_by(request.user)]
        return Response({"object": "list", "data": [entry for _, entry in sorted(entries, key=lambda e: e[0])]})


class ModelDetailView(OpenAIView):
    required_permissions = {"get": "model_read"}

    @extend_schema(responses={200: dict})
    def get(self, request, model: str):
        target, alias = registry.model_resolve_for_user(user=request.user, name=model, permission="model_read")
        return Response(model_object(alias or target, model))


# Requests to chat data --------------------------------------------------------------------------

def _bad(param: str, message: str):
    return errors.ValidationError(f"{param}: {message}", details={"fields": {param: [message]}})


def chat_data(parsed: dict, messages: list[dict]) -> dict:
    """An OpenAI request as the chat service's validated ChatRequest."""
    config = {key: parsed[key] for key in ("temperature", "top_p", "seed", "top_k", "repetition_penalty")
              if parsed.get(key) is not None}
    max_tokens = parsed.get("max_completion_tokens") or parsed.get("max_tokens")
    if max_tokens is not None:
        config["max_tokens"] = max_tokens
    if parsed.get("stop"):
        config["stop"] = parsed["stop"]
    if parsed.get("response_format") is not None:
        config["response_format"] = parsed["response_format"]
    results = len(messages) - next((i + 1 for i in reversed(range(len(messages))) if messages[i]["role"] != "tool"), 0)
    if results:  # tool results answering the previous assistant turn's calls
        history, turns, message = messages[:-results], messages[-results:], ""
    else:
        *history, last = messages
        if last["role"] != "user" or not last["content"].strip():
            raise _bad("messages", "the last message must be a non-empty user message or tool results")
        turns, message = None, last["content"]
    if parsed.get("session_id") and history:
        raise _bad("messages", "with session_id, send only the new user message or tool results; "
                               "the session has its history")
    return {
        "model_name": parsed["model"],
        "message": message,
        "turns": turns,
        "session_id": parsed.get("session_id"),
        "chat_history": history,
        "generation_config": config,
        "stream": parsed["stream"],
        "tools": parsed.get("tools"),
        "tool_choice": parsed.get("tool_choice"),
        "parallel_tool_calls": parsed.get("parallel_tool_calls"),
    }


def prompt_message(message: dict) -> dict:
    """A validated /v1 message as the chat service's turn (content "" rather than null)."""
    turn = {"role": "system" if message["role"] == "developer" else message["role"],
            "content": message.get("content") or ""}
    if message.get("tool_calls"):
        turn["tool_calls"] = [{"id": call["id"], "type": "function",
                               "function": {"name": call["function"]["name"],
                                            "arguments": call["function"]["arguments"]}}
                              for call in message["tool_calls"]]
    if message["role"] == "tool":
        turn["tool_call_id"] = message["tool_call_id"]
    return turn


# Answers ----------------------------------------------------------------------------------------

class Completion:
    """The OpenAI objects of one reply; ``kind`` is chat (chat.completion) or text (text_completion)."""

    def __init__(self, builder: services.ReplyBuilder, *, kind: str, include_usage: bool = False):
        self.builder = builder
        self.kind = kind
        self.include_usage = include_usage
        self.created = int(time.time())
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        self.id = prefix + builder.plan.request_id

    def _envelope(self, choices: list, *, chunk: bool) -> dict:
        suffix = ".chunk" if chunk and self.kind == "chat" else ""
        body = {"id": self.id, "object": ("chat.completion" if self.kind == "chat" else "text_completion") + suffix,
                "created": self.created, "model": self.builder.plan.model.name, "choices": choices,
                "session_id": str(self.builder.plan.session.id)}  # extension: where the chat was stored
        if not chunk or self.include_usage:
            body["usage"] = None
        return body

    def usage(self) -> dict:
        stats = self.builder.generation_stats()
        prompt, completion = stats.get("prompt_tokens") or 0, stats.get("tokens_generated") or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def finish_reason(self) -> str:
        return FINISH_REASONS.get(self.builder.finish_reason, self.builder.finish_reason)

    def body(self) -> dict:
        thinking, answer = self.builder.texts()
        if self.kind == "chat":
            calls = self.builder.tool_calls()
            message = {"role": "assistant", "content": answer or (None if calls else "")}
            if calls:
                message["tool_calls"] = calls
            if self.builder.plan.think_tags:
                message["reasoning_content"] = thinking or None
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason()}
        else:
            choice = {"index": 0, "text": answer, "logprobs": None, "finish_reason": self.finish_reason()}
        body = self._envelope([choice], chunk=False)
        body["usage"] = self.usage()
        return body

    def chunk(self, delta: dict | str | None, finish_reason: str | None = None) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish_reason}
        return self._envelope([choice], chunk=True)

    def chunks_for(self, event_type: str, payload: dict) -> list[dict]:
        """The chunks of one transport event (see ReplyBuilder)."""
        if event_type == "start":
            return [self.chunk({"role": "assistant", "content": ""})] if self.kind == "chat" else []
        if event_type == "delta":
            return [self.chunk({"content": payload["content"]} if self.kind == "chat" else payload["content"])]
        if event_type == "reasoning":
            return [self.chunk({"reasoning_content": payload["content"]})] if self.kind == "chat" else []
        if event_type == "tool_call":
            return [self.chunk({"tool_calls": [{"index": payload["index"], "id": payload["id"], "type": "function",
                                                "function": {"name": payload["name"], "arguments": ""}}]})]
        if event_type == "tool_arguments":
            return [self.chunk({"tool_calls": [{"index": payload["index"],
                                                "function": {"arguments": payload["arguments"]}}]})]
        if event_type == "done":
            out = [self.chunk(None, self.finish_reason())]
            if self.include_usage:
                last = self._envelope([], chunk=True)
                last["usage"] = self.usage()
                out.append(last)
            return out
        return [openai_error(500, "SystemError", f"Generation failed: {self.builder.error}")]


def _sse(payload: dict | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, default=str)
    return f"data: {text}\n\n".encode()


async def stream_body(completion: Completion, run: services.ChatRun):
    async for event_type, payload in run.events():
        for chunk in completion.chunks_for(event_type, payload):
            yield _sse(chunk)
    yield _sse("[DONE]")


def complete(request, parsed: dict, data: dict, *, kind: str):
    """Runs one reply through the chat service and answers it as OpenAI would."""
    run = services.chat_open(user=request.user, data=data, transport="openai", api_key_id=api_key_id(request),
                             model_field="model")
    completion = Completion(run.builder, kind=kind,
                            include_usage=bool((parsed.get("stream_options") or {}).get("include_usage")))
    if parsed["stream"]:
        return run.stream_response(stream_body(completion, run))
    run.run_to_end()
    return Response(completion.body())


class ChatCompletionsView(OpenAIView):
    required_permissions = {"post": "chat"}
    throttle_scope = limits.SCOPE

    @extend_schema(request=ChatCompletionRequestSerializer, responses={200: dict},
                   description="OpenAI-compatible chat completion; stream=true answers OpenAI's SSE chunks.")
    def post(self, request):
        parsed = parse(ChatCompletionRequestSerializer, request.data)
        messages = [prompt_message(m) for m in parsed["messages"]]
        return complete(request, parsed, chat_data(parsed, messages), kind="chat")


class CompletionsView(OpenAIView):
    required_permissions = {"post": "chat"}
    throttle_scope = limits.SCOPE

    @extend_schema(request=CompletionRequestSerializer, responses={200: dict},
                   description="OpenAI-compatible completion; the prompt is sent as one user message.")
    def post(self, request):
        parsed = parse(CompletionRequestSerializer, request.data)
        return complete(request, parsed, chat_data(parsed, [{"role": "user", "content": parsed["prompt"]}]),
                        kind="text")


def encoded_embedding(vector: list[float], encoding_format: str):
    """OpenAI's base64 form is the vector's little-endian float32 bytes (what its client decodes with numpy)."""
    if encoding_format == "float":
        return vector
    values = array("f", vector)
    if sys.byteorder != "little":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


class EmbeddingsView(OpenAIView):
    required_permissions = {"post": "chat"}
    throttle_scope = limits.SCOPE

    @extend_schema(request=EmbeddingRequestSerializer, responses={200: dict},
                   description="OpenAI-compatible embeddings from a model whose entry has parameter task: embed.")
    def post(self, request):
        parsed = parse(EmbeddingRequestSerializer, request.data)
        result = embeddings.embeddings_create(user=request.user, model_name=parsed["model"], inputs=parsed["input"],
                                              dimensions=parsed.get("dimensions"), api_key_id=api_key_id(request))
        data = [{"object": "embedding", "index": index, "embedding": encoded_embedding(vector, parsed["encoding_format"])}
                for index, vector in enumerate(result["vectors"])]
        tokens = result["prompt_tokens"]
        return Response({"object": "list", "data": data, "model": result["model"],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
