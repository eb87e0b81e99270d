"""A bench-only OpenAI-compatible token source: a "remote engine" faster than any model (part 6).

    .venv/bin/python -m bench.token_source [--port N]

Serves, on 127.0.0.1 only, what the ``openai`` engine calls: ``GET /v1/models`` (one model) and
``POST /v1/chat/completions`` with ``stream: true``, answered at once with ``max_tokens``
``chat.completion.chunk`` deltas of one short word each, a ``finish_reason: "length"`` chunk, the
usage chunk when ``stream_options.include_usage`` asks for it, and ``[DONE]``. No model, no
tokenizer: each chunk is written as soon as the socket takes it, so whatever relays these chunks
is the slowest link. Plain asyncio and HTTP/1.1 (keep-alive, chunked responses) rather than a web
framework, so that the source costs as little CPU as possible next to what it feeds.

It prints ``listening on http://127.0.0.1:PORT`` once ready and runs until SIGTERM, SIGINT or the
end of its standard input: ``TokenSource`` (below) starts it with a pipe as stdin, so it also ends
when the benchmark that started it dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MODEL_ID = "bench-token-source"
# Short words, one per chunk, so each chunk is one "token" of plain text (no markup the relay parses).
WORDS = (" the", " keeper", " lit", " a", " lamp", " and", " watched", " sea", ".")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required", 413: "Payload Too Large"}
MAX_BODY = 4 * 1024 * 1024


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict) -> bytes:
    return _chunked(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def completion_chunks(request: dict):
    """The chunked-encoded SSE frames of one streamed chat completion, as bytes, in order."""
    tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
    model = str(request.get("model") or MODEL_ID)
    cid = f"chatcmpl-bench-{time.monotonic_ns()}"
    head = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    yield _event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}]})
    # Every content chunk differs only in its word: the frames are built once per request.
    frames = [_event({**head, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
              for word in WORDS]
    for i in range(tokens):
        yield frames[i % len(frames)]
    yield _event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    if (request.get("stream_options") or {}).get("include_usage"):
        prompt = sum(len(str(m.get("content") or "")) for m in request.get("messages") or []) // 4
        yield _event({**head, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": tokens,
                                                       "total_tokens": prompt + tokens}})
    yield _chunked(b"data: [DONE]\n\n")
    yield b"0\r\n\r\n"


def _plain(status: int, payload: dict, keep_alive: bool) -> bytes:
    body = json.dumps(payload).encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
            ).encode() + body


def _error(status: int, message: str, keep_alive: bool = False) -> bytes:
    return _plain(status, {"error": {"message": message, "type": "invalid_request_error"}}, keep_alive)


MODELS = {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "bench",
                                      "max_model_len": 1_048_576}]}
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            keep_alive = headers.get("connection", "").lower() != "close"
            length = headers.get("content-length")
            if method == "POST" and length is None:
                writer.write(_error(411, "Content-Length required"))
                return
            if length is not None and int(length) > MAX_BODY:
                writer.write(_error(413, "body too large"))
                return
            body = await reader.readexactly(int(length)) if length else b""
            path = path.split("?", 1)[0]
            if method == "GET" and path == "/v1/models":
                writer.write(_plain(200, MODELS, keep_alive))
            elif method == "POST" and path == "/v1/chat/completions":
                try:
                    request = json.loads(body)
                except ValueError:
                    writer.write(_error(400, "the body is not JSON", keep_alive))
                else:
                    if request.get("stream") is not True:
                        writer.write(_error(400, "this source only streams (stream: true)", keep_alive))
                    else:
                        writer.write(STREAM_HEAD)
                        for frame in completion_chunks(request):
                            writer.write(frame)
                            # Returns at once while the socket keeps up; waits only when the reader lags.
                            await writer.drain()
            else:
                writer.write(_error(404, f"no route {method} {path}", keep_alive))
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(port: int = 0) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def watch_stdin():
        # EOF on stdin: the process that started this one is gone (or closed the pipe to stop it).
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True, name="stdin-watch").start()
    server = await asyncio.start_server(_serve, "127.0.0.1", port, limit=MAX_BODY)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    async with server:
        await stop.wait()


class TokenSource:
    """``python -m bench.token_source`` as a child process; ``base_url`` is what an ``openai`` entry needs."""

    def __init__(self, timeout: float = 30):
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "TokenSource":
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.token_source"],
                                     cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        # readline() blocks until the source prints its address or exits (EOF): no busy wait needed.
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the token source did not start (exit {self.proc.poll()}): {line!r}")
        self.url = line.split()[-1]
        return self

    def stop(self) -> int | None:
        """Closes its stdin (it exits), then kills it by pid if it has not within `timeout` seconds."""
        if self.proc is None:
            return None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
