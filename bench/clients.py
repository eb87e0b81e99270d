"""One timed, greedy stream per transport, all measured the same way from the caller's side.

Every function returns a ``StreamResult`` whose clock starts just before the request is sent
(for the direct engine: just before ``engine.generate`` is called) and which records the arrival
time of every text piece. From those:

* TTFT = arrival of the first non-empty text piece;
* decode tokens/s = (tokens_generated - 1) / (last piece - first piece), tokens_generated being
  what the engine counted (the runner's stats, or the ``usage`` chunk on /v1), so both sides
  count tokens with the same tokenizer;
* inter-token latency = the gaps between consecutive pieces (one piece per token from both
  engines, except where a multi-byte character spans tokens).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field

from bench import stats

PROMPT = "Write a long story about a lighthouse keeper."
GREEDY = {"temperature": 0}


@dataclass
class StreamResult:
    transport: str
    ok: bool = True
    error: str | None = None
    status_code: int | None = None
    piece_times: list[float] = field(default_factory=list)  # seconds since send
    done_at: float | None = None  # seconds since send, when the final event arrived
    tokens_generated: int | None = None
    finish_reason: str | None = None
    start_at: float | None = None  # seconds since send: the platform's "start" event (first /v1 chunk)
    server_ttft_ms: float | None = None  # as the engine/runner measured it
    queue_time_ms: float | None = None
    sent_at: float = 0.0  # perf_counter at send (for aggregates across streams)

    @property
    def ttft_ms(self) -> float | None:
        return self.piece_times[0] * 1000.0 if self.piece_times else None

    @property
    def tokens(self) -> int:
        return self.tokens_generated if self.tokens_generated is not None else len(self.piece_times)

    @property
    def decode_tps(self) -> float | None:
        if len(self.piece_times) < 2 or self.tokens < 2:
            return None
        span = self.piece_times[-1] - self.piece_times[0]
        return (self.tokens - 1) / span if span > 0 else None

    @property
    def gaps_ms(self) -> list[float]:
        t = self.piece_times
        return [(b - a) * 1000.0 for a, b in zip(t, t[1:])]

    @property
    def itl_p50_ms(self) -> float | None:
        return stats.percentile(self.gaps_ms, 50)

    @property
    def itl_p99_ms(self) -> float | None:
        return stats.percentile(self.gaps_ms, 99)

    @property
    def total_ms(self) -> float | None:
        return self.done_at * 1000.0 if self.done_at is not None else None

    def row(self) -> dict:
        """The numbers kept in the JSON (the raw arrival times too, rounded to 0.01 ms)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("piece_times", "sent_at")}
        out.update(start_ms=None if self.start_at is None else self.start_at * 1000.0,
                   ttft_ms=self.ttft_ms, decode_tps=self.decode_tps, itl_p50_ms=self.itl_p50_ms,
                   itl_p99_ms=self.itl_p99_ms, total_ms=self.total_ms, pieces=len(self.piece_times),
                   piece_times_ms=[round(t * 1000.0, 2) for t in self.piece_times])
        return out


def messages_for(prompt: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": prompt}]


# -- the engine in this process ----------------------------------------------------------------

def load_spec_from_config(name: str, config: dict):
    """The LoadSpec the platform builds for a registry entry (as returned by GET /models/{name})."""
    from models_app.serving.engines.contract import LoadSpec

    defaults = {k: config[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "do_sample")
                if config.get(k) is not None}
    return LoadSpec(name=name, engine=config["engine"], model_id=config["model_id"],
                    quantization=config.get("quantization") or "none", dtype=config.get("dtype") or "auto",
                    max_new_tokens=int(config.get("max_new_tokens") or 512),
                    parameters=dict(config.get("parameters") or {}), generation_defaults=defaults)


class DirectWorker:
    """bench.direct_worker in a child process: one raw engine, timed inside that process."""

    def __init__(self, timeout: float = 900):
        import os
        import subprocess
        import sys
        from pathlib import Path

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.timeout = timeout
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.direct_worker"],
                                     cwd=Path(__file__).resolve().parents[1], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"direct worker exited (code {self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"direct worker: {answer['error']}")
        return answer

    def load(self, spec) -> float:
        import dataclasses

        return float(self._ask({"op": "load", "spec": dataclasses.asdict(spec)})["load_s"])

    def stream(self, max_tokens: int, prompt: str = PROMPT, constraint: dict | None = None) -> StreamResult:
        return StreamResult(**self._ask({"op": "generate", "max_tokens": max_tokens, "prompt": prompt,
                                         "constraint": constraint})["result"])

    def close_engine(self) -> None:
        self._ask({"op": "close"})

    def stop(self) -> None:
        """Asks the worker to exit; kills it by its pid if it does not."""
        import subprocess

        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def load_direct_engine(spec):
    """(engine, seconds) — the engine's own load in this process."""
    from models_app.serving.engines import get_engine_class

    engine = get_engine_class(spec.engine)()
    started = time.perf_counter()
    engine.load(spec)
    return engine, time.perf_counter() - started


_FRESH_LOAD = """
import json, os, sys
from models_app.serving.engines import get_engine_class
from models_app.serving.engines.contract import LoadSpec
spec = LoadSpec(**json.loads(sys.argv[1]))
get_engine_class(spec.engine)().load(spec)
sys.stdout.write("READY\\n")
sys.stdout.flush()
os._exit(0)
"""


def fresh_process_load(spec, timeout: float = 600) -> float:
    """Seconds from starting a new interpreter to the engine being loaded in it (imports included):
    what a runner process pays before the platform adds anything."""
    import dataclasses
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-B", "-c", _FRESH_LOAD, json.dumps(dataclasses.asdict(spec))],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - started
        if line.strip() != "READY":
            raise RuntimeError(f"fresh-process load failed (exit {proc.wait(timeout)})")
        proc.wait(timeout)
        return elapsed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def direct_stream(engine, max_tokens: int, prompt: str = PROMPT, constraint: dict | None = None) -> StreamResult:
    from models_app.serving.engines.contract import GenerationParams, GenerationStats

    result = StreamResult("direct")
    params = GenerationParams(max_tokens=max_tokens, constraint=constraint, **GREEDY)
    result.sent_at = t0 = time.perf_counter()
    try:
        for item in engine.generate(messages_for(prompt), params, lambda: False):
            now = time.perf_counter() - t0
            if isinstance(item, GenerationStats):
                result.done_at = now
                result.tokens_generated = item.tokens_generated
                result.finish_reason = item.finish_reason
                result.server_ttft_ms = item.time_to_first_token_ms
            elif item:
                result.piece_times.append(now)
    except Exception as exc:  # recorded, never hidden
        result.ok, result.error = False, f"{exc.__class__.__name__}: {exc}"
    if result.done_at is None and result.ok:
        result.ok, result.error = False, "no final stats"
    return result


# -- Server-Sent Events --------------------------------------------------------------------------

def chat_body(model: str, max_tokens: int, prompt: str = PROMPT, stream: bool = True) -> dict:
    return {"model_name": model, "message": prompt, "stream": stream,
            "generation_config": {**GREEDY, "max_tokens": max_tokens}}


class _SSEParser:
    """Feeds ``event:``/``data:`` lines; calls on_event(type, payload) per complete event."""

    def __init__(self):
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str):
        if line == "":
            if not self.data:
                return None
            payload = "\n".join(self.data)
            kind, self.event, self.data = self.event, "message", []
            return kind, payload
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def _apply_chat_event(result: StreamResult, kind: str, payload: dict, now: float) -> bool:
    """Updates ``result`` with one BeautyAI chat event; True when the stream is over."""
    if kind == "start":
        result.start_at = now
        return False
    if kind in ("delta", "reasoning"):
        if payload.get("content"):
            result.piece_times.append(now)
        return False
    if kind == "done":
        gs = payload.get("generation_stats") or {}
        result.done_at = now
        result.tokens_generated = gs.get("tokens_generated")
        result.finish_reason = gs.get("finish_reason")
        result.server_ttft_ms = gs.get("time_to_first_token_ms")
        result.queue_time_ms = gs.get("queue_time_ms")
        return True
    if kind == "error":
        result.done_at = now
        result.ok = False
        result.error = payload.get("error_message") or payload.get("message") or json.dumps(payload)[:300]
        return True
    return False


def sse_stream(client, model: str, max_tokens: int, prompt: str = PROMPT, session_id: str | None = None) -> StreamResult:
    """POST /inference/chat with stream=true on a keep-alive ``httpx.Client`` (auth headers set);
    a new session, or the turn after those of ``session_id``."""
    result = StreamResult("sse")
    parser = _SSEParser()
    body = chat_body(model, max_tokens, prompt)
    if session_id is not None:
        body["session_id"] = session_id
    result.sent_at = t0 = time.perf_counter()
    try:
        with client.stream("POST", "/inference/chat", json=body) as response:
            result.status_code = response.status_code
            if response.status_code != 200:
                response.read()
                result.done_at = time.perf_counter() - t0
                result.ok, result.error = False, f"HTTP {response.status_code}: {response.text[:300]}"
                return result
            for line in response.iter_lines():
                got = parser.feed(line)
                if got is None:
                    continue
                if _apply_chat_event(result, got[0], json.loads(got[1]), time.perf_counter() - t0):
                    break
    except Exception as exc:
        result.ok, result.error = False, f"{exc.__class__.__name__}: {exc}"
    if result.done_at is None and result.ok:
        result.ok, result.error = False, "stream ended without done"
    return result


async def sse_stream_async(client, model: str, max_tokens: int, prompt: str = PROMPT) -> StreamResult:
    """The same on an ``httpx.AsyncClient``, for many concurrent streams."""
    result = StreamResult("sse")
    parser = _SSEParser()
    result.sent_at = t0 = time.perf_counter()
    try:
        async with client.stream("POST", "/inference/chat", json=chat_body(model, max_tokens, prompt)) as response:
            result.status_code = response.status_code
            if response.status_code != 200:
                await response.aread()
                result.done_at = time.perf_counter() - t0
                result.ok, result.error = False, f"HTTP {response.status_code}: {response.text[:300]}"
                return result
            async for line in response.aiter_lines():
                got = parser.feed(line)
                if got is None:
                    continue
                if _apply_chat_event(result, got[0], json.loads(got[1]), time.perf_counter() - t0):
                    break
    except Exception as exc:
        result.ok, result.error = False, f"{exc.__class__.__name__}: {exc}"
    if result.done_at is None and result.ok:
        result.ok, result.error = False, "stream ended without done"
    return result


# -- WebSocket -------------------------------------------------------------------------------------

class WSChat:
    """One authenticated socket (Authorization header), reused for several chats like a chat page."""

    def __init__(self, url: str, api_key: str, open_timeout: float = 30):
        from websockets.sync.client import connect

        ws_url = url.replace("http://", "ws://", 1) + "/ws/chat/"
        # Entered like a context manager: the form every websockets version since 13 supports without warning.
        self.ws = connect(ws_url, additional_headers={"Authorization": f"Bearer {api_key}"},
                          open_timeout=open_timeout, max_size=2 ** 24).__enter__()
        ready = json.loads(self.ws.recv(timeout=open_timeout))
        if ready.get("type") != "ready":
            raise RuntimeError(f"expected ready, got {ready}")
        self._n = 0

    def stream(self, model: str, max_tokens: int, prompt: str = PROMPT, timeout: float = 900) -> StreamResult:
        result = StreamResult("websocket")
        self._n += 1
        request_id = f"bench-{self._n}"
        body = chat_body(model, max_tokens, prompt)
        body.pop("stream")
        message = json.dumps({"type": "chat", "request_id": request_id, **body})
        result.sent_at = t0 = time.perf_counter()
        try:
            self.ws.send(message)
            while True:
                raw = self.ws.recv(timeout=timeout)
                now = time.perf_counter() - t0
                event = json.loads(raw)
                if event.get("request_id") != request_id:
                    continue
                if _apply_chat_event(result, event.get("type"), event, now):
                    break
        except Exception as exc:
            result.ok, result.error = False, f"{exc.__class__.__name__}: {exc}"
        return result

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


# -- /v1 through the official openai client --------------------------------------------------------

def openai_client(url: str, api_key: str):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=900)


def openai_stream(client, model: str, max_tokens: int, prompt: str = PROMPT) -> StreamResult:
    result = StreamResult("v1")
    result.sent_at = t0 = time.perf_counter()
    try:
        stream = client.chat.completions.create(
            model=model, messages=messages_for(prompt), max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True})
        for chunk in stream:
            now = time.perf_counter() - t0
            if result.start_at is None:
                result.start_at = now  # the role chunk, sent when the platform hands the request to the runner
            if chunk.usage is not None:
                result.tokens_generated = chunk.usage.completion_tokens
            for choice in chunk.choices or []:
                if choice.delta is not None and choice.delta.content:
                    result.piece_times.append(now)
                if choice.finish_reason:
                    result.finish_reason = choice.finish_reason
        result.done_at = time.perf_counter() - t0
    except Exception as exc:
        result.ok, result.error = False, f"{exc.__class__.__name__}: {exc}"
        result.status_code = getattr(exc, "status_code", None)
    return result


# -- running several at once ---------------------------------------------------------------------

def run_concurrent_sse(url: str, api_key: str, model: str, max_tokens: int, streams: int,
                       prompt: str = PROMPT) -> tuple[list[StreamResult], float]:
    """``streams`` SSE chats sent together; (results, wall seconds from the first send to the last end)."""
    import httpx

    async def main():
        limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api_key}"},
                                     timeout=900, limits=limits) as client:
            started = time.perf_counter()
            results = await asyncio.gather(*(sse_stream_async(client, model, max_tokens, prompt)
                                             for _ in range(streams)))
            ended = time.perf_counter()
        return list(results), ended - started

    return asyncio.run(main())
