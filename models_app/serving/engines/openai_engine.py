"""A model served elsewhere behind an OpenAI-compatible API (vLLM, llama.cpp server, OpenAI...)."""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Callable, Iterator
from urllib.parse import urlsplit

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
from .constraints import ConstraintError, normalize_constraint

DEFAULT_CONTEXT_LENGTH = 4096
# A registry entry names the variable that holds its key; only variables with this prefix may be
# named, so no entry can send DJANGO_SECRET_KEY, DATABASE_URL or the like to a remote server.
API_KEY_ENV_PREFIX = "BEAUTYAI_REMOTE_KEY_"
_API_KEY_ENV = re.compile(rf"^{API_KEY_ENV_PREFIX}[A-Z0-9_]{{1,100}}$")
CHARS_PER_TOKEN = 4  # rough English average; the API has no portable tokenize endpoint


def api_key_env_allowed(name) -> bool:
    return isinstance(name, str) and bool(_API_KEY_ENV.match(name))


def response_format(constraint: dict) -> dict:
    """OpenAI's response_format for a constraint; the remote server does the constrained decoding.

    The API has no way to ask for a fixed prefix or suffix around the JSON, so such a constraint
    (tool calling's) is refused rather than half-kept.
    """
    constraint = normalize_constraint(constraint)
    if constraint["prefix"] or constraint["suffix"]:
        raise ConstraintError("constraint", "the openai engine cannot constrain a reply to text around the JSON")
    if constraint["schema"] is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": constraint["schema"], "strict": True}}


def _host(base_url: str) -> str:
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class OpenAIEngine(Engine):
    max_concurrency = 16

    def __init__(self):
        self._client = None
        self._spec: LoadSpec | None = None
        self._base_url = ""
        self._model = ""
        self._context_length = DEFAULT_CONTEXT_LENGTH

    @classmethod
    def preload(cls) -> None:
        import httpx  # noqa: F401

    def load(self, spec: LoadSpec) -> None:
        try:
            import httpx
        except ImportError:
            raise EngineUnavailableError("httpx is not installed on this host") from None
        p = spec.parameters
        base_url = str(p.get("base_url") or "").rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise EngineLoadError("the openai engine needs a base_url parameter starting with http:// or https://")
        headers = {}
        key_env = p.get("api_key_env")
        if key_env:
            # Checked here too: an entry saved before the rule existed must not leak a server secret.
            if not api_key_env_allowed(key_env):
                raise EngineLoadError(f"api_key_env must name a variable starting with {API_KEY_ENV_PREFIX}")
            key = os.environ.get(key_env)
            if not key:
                raise EngineLoadError(f"environment variable {key_env} (API key) is not set")
            # The key lives only inside the client's headers, never on self or in logs.
            headers["Authorization"] = f"Bearer {key}"
        timeout = float(p.get("timeout_s", 120))
        client = httpx.Client(base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0),
                              limits=httpx.Limits(max_connections=self.max_concurrency))
        try:
            response = client.get("/models", timeout=min(timeout, 10.0))
        except (httpx.ConnectError, httpx.TimeoutException):
            client.close()
            raise EngineLoadError(f"remote endpoint unreachable: {_host(base_url)}") from None
        except httpx.HTTPError as exc:
            client.close()
            raise EngineLoadError(f"remote endpoint error at {_host(base_url)}: {exc.__class__.__name__}") from None
        if response.status_code in (401, 403):
            client.close()
            raise EngineLoadError(f"remote endpoint rejected the API key (HTTP {response.status_code})")
        if response.status_code >= 400:
            client.close()
            raise EngineLoadError(f"remote endpoint answered HTTP {response.status_code} for /models")
        self._client = client
        self._spec = spec
        self._base_url = base_url
        self._model = str(p.get("remote_model") or spec.model_id)
        self._context_length = int(p.get("n_ctx") or self._remote_context_length(response) or DEFAULT_CONTEXT_LENGTH)

    def _remote_context_length(self, response) -> int | None:
        try:
            models = response.json().get("data") or []
        except ValueError:
            return None
        for entry in models:
            if entry.get("id") == self._model or len(models) == 1:
                # vLLM reports max_model_len; llama.cpp's server reports meta.n_ctx_train.
                value = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx_train")
                if value:
                    return int(value)
        return None

    def context_length(self) -> int:
        return self._context_length

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        """Estimate only: characters / 4 plus a few tokens of chat framing per message."""
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        return math.ceil(chars / CHARS_PER_TOKEN) + 4 * len(messages)

    def generate(self, messages: list[dict], params: GenerationParams,
                 should_stop: Callable[[], bool]) -> Iterator[str | GenerationStats]:
        import httpx

        s = resolve_sampling(params, self._spec)
        body = {"model": self._model, "messages": messages, "max_tokens": s.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": s.temperature}
        if not s.greedy and s.top_p is not None:
            body["top_p"] = s.top_p
        # Non-standard fields go out only when asked for; OpenAI itself rejects some of them.
        if not s.greedy and s.top_k is not None:
            body["top_k"] = s.top_k
        if s.repetition_penalty is not None:
            body["repetition_penalty"] = s.repetition_penalty
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if params.constraint is not None:
            body["response_format"] = response_format(params.constraint)

        started = time.perf_counter()
        first_at = None
        finish = "stop"
        deltas = 0
        usage = None
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise EngineError(f"remote endpoint answered HTTP {response.status_code}: "
                                      f"{response.text[:200]}")
                for line in response.iter_lines():
                    if should_stop():
                        finish = "cancelled"
                        break
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if first_at is None:
                                first_at = time.perf_counter()
                            deltas += 1
                            yield text
                        if choice.get("finish_reason"):
                            finish = "length" if choice["finish_reason"] == "length" else "stop"
        except (httpx.ConnectError, httpx.TimeoutException):
            raise EngineError(f"remote endpoint unreachable: {_host(self._base_url)}") from None
        except httpx.HTTPError as exc:
            raise EngineError(f"remote endpoint error: {exc.__class__.__name__}") from None
        prompt_tokens = (usage or {}).get("prompt_tokens") or self.count_tokens(messages)
        generated = (usage or {}).get("completion_tokens") or deltas
        yield make_stats(int(prompt_tokens), int(generated), finish, started, first_at, time.perf_counter())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
