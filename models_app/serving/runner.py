"""Body of a model runner process: one loaded model, served over a multiprocessing pipe.

The web process never loads a model itself. A bad model file, an out-of-memory kill or
a segfault inside a native library therefore takes down only this process, and the
parent notices through the pipe closing.

A spare runner starts without a model: it imports its engine's libraries, then waits for
one {"op": "load", "spec": ...} message and from there on is an ordinary runner.

Protocol (dicts, multiplexed by request id):
  parent -> runner: load (a spare only, first), then generate, cancel, count_tokens, embed, release_caches, shutdown
  runner -> parent: ready | load_error first, then started, delta, done, error, result, log

Every message with an id gets an answer under that id: a generation ends with done or error, a
call (count_tokens, release_caches, or an op this runner does not know) with result or error.
An error's ``code`` says whose fault it is: "prompt" (the messages; the caller's input), "engine".
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, fields

from models_app.serving.engines import get_engine_class
from models_app.serving.engines.base import (
    EngineError,
    GenerationParams,
    GenerationStats,
    LoadSpec,
    PromptError,
    detect_tool_format,
    scrub_paths,
)

_PARAM_FIELDS = {f.name for f in fields(GenerationParams)}
_PARENT_POLL_S = 1.0


def error_reply(req_id, exc: BaseException) -> dict:
    if isinstance(exc, EngineError):
        return {"type": "error", "id": req_id, "code": "prompt" if isinstance(exc, PromptError) else "engine",
                "message": str(exc)}
    return {"type": "error", "id": req_id, "code": "engine",
            "message": f"{exc.__class__.__name__}: {scrub_paths(str(exc))}"}


class _PipeLogHandler(logging.Handler):
    def __init__(self, send):
        super().__init__()
        self._send = send

    def emit(self, record):
        try:
            self._send({"type": "log", "level": record.levelname, "message": scrub_paths(self.format(record))})
        except Exception:
            pass


class _Runner:
    def __init__(self, conn, engine, send_lock: threading.Lock):
        self.conn = conn
        self.engine = engine
        self.send_lock = send_lock
        self.cancel_events: dict[str, threading.Event] = {}
        self.events_lock = threading.Lock()
        # Pending generations wait here in arrival order; a fixed pool of workers
        # (engine.max_concurrency of them) takes them, which bounds concurrency.
        self.pending: queue.Queue = queue.Queue()
        self.workers = [threading.Thread(target=self._worker, daemon=True, name=f"generate-{i}")
                        for i in range(max(1, int(engine.max_concurrency)))]
        for w in self.workers:
            w.start()

    def send(self, message: dict) -> None:
        with self.send_lock:
            try:
                self.conn.send(message)
            except (OSError, EOFError, BrokenPipeError):
                # Parent is gone; the main loop sees EOF and exits.
                pass

    def _worker(self):
        while True:
            item = self.pending.get()
            if item is None:
                return
            self._generate(*item)

    def _generate(self, req_id: str, messages: list, params: GenerationParams, cancel: threading.Event):
        try:
            if cancel.is_set():
                self.send({"type": "done", "id": req_id, "stats": asdict(GenerationStats(0, 0, "cancelled", 0.0, 0.0, 0.0))})
                return
            # Marks the end of the wait in the queue, so the parent can report queue time apart from TTFT.
            self.send({"type": "started", "id": req_id})
            for item in self.engine.generate(messages, params, cancel.is_set):
                if isinstance(item, GenerationStats):
                    self.send({"type": "done", "id": req_id, "stats": asdict(item)})
                elif item:
                    self.send({"type": "delta", "id": req_id, "text": item})
        except EngineError as exc:
            self.send(error_reply(req_id, exc))
        except Exception as exc:
            logging.getLogger(__name__).exception("generation failed")
            reply = error_reply(req_id, exc)
            self.send({**reply, "message": f"generation failed: {reply['message']}"})
        finally:
            with self.events_lock:
                self.cancel_events.pop(req_id, None)

    def _call(self, req_id: str, fn):
        try:
            self.send({"type": "result", "id": req_id, "value": fn()})
        except Exception as exc:
            self.send(error_reply(req_id, exc))

    def _embed(self, inputs: list) -> dict:
        vectors, prompt_tokens = self.engine.embed(inputs)
        return {"vectors": vectors, "prompt_tokens": int(prompt_tokens)}

    def handle(self, msg: dict) -> bool:
        """Dispatch one parent message; False means stop serving."""
        op = msg.get("op")
        if op == "generate":
            params = GenerationParams(**{k: v for k, v in (msg.get("params") or {}).items() if k in _PARAM_FIELDS})
            cancel = threading.Event()
            with self.events_lock:
                self.cancel_events[msg["id"]] = cancel
            self.pending.put((msg["id"], msg.get("messages") or [], params, cancel))
        elif op == "cancel":
            with self.events_lock:
                event = self.cancel_events.get(msg.get("id"))
            if event is not None:
                event.set()
        elif op == "count_tokens":
            threading.Thread(target=self._call, args=(msg["id"], lambda: self.engine.count_tokens(
                msg.get("messages") or [], tools=msg.get("tools") or None)), daemon=True).start()
        elif op == "embed":
            threading.Thread(target=self._call, args=(msg["id"], lambda: self._embed(msg.get("inputs") or [])),
                             daemon=True).start()
        elif op == "release_caches":
            threading.Thread(target=self._call, args=(msg["id"], lambda: self.engine.release_caches()), daemon=True).start()
        elif op == "shutdown":
            return False
        else:
            # The caller waits for an answer under this id; silence would hold it until its timeout.
            self.send({"type": "error", "id": msg.get("id"), "code": "engine", "message": f"unknown runner op: {op!r}"})
        return True

    def stop(self, timeout: float = 5.0) -> None:
        with self.events_lock:
            for event in self.cancel_events.values():
                event.set()
        for _ in self.workers:
            self.pending.put(None)
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))


def _watch_parent(parent_pid: int) -> None:
    # A parent killed while we are still loading never closes the pipe from our side's
    # point of view until we read it; polling the parent pid avoids orphaned runners.
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(3)


def _wait_as_spare(conn, engine: str) -> dict:
    try:
        get_engine_class(engine).preload()
    except Exception:
        # Only a head start is lost: load() imports the same libraries and reports a failure properly.
        logging.getLogger(__name__).warning("preloading the %s engine failed", engine, exc_info=True)
    try:
        msg = conn.recv()
    except (EOFError, OSError):
        os._exit(0)
    return msg["spec"]


def runner_main(conn, spec_dict: dict | None, log_level: str, spare_engine: str | None = None) -> None:
    """Loads `spec_dict` and serves it; without a spec, a spare for `spare_engine` that waits for one."""
    send_lock = threading.Lock()

    def send(message):
        with send_lock:
            conn.send(message)

    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(send)]
    root.setLevel(getattr(logging, str(log_level).upper(), logging.INFO))
    logging.captureWarnings(True)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    if spec_dict is None:
        spec_dict = _wait_as_spare(conn, spare_engine)
    spec = LoadSpec(**spec_dict)
    started = time.monotonic()
    try:
        engine = get_engine_class(spec.engine)()
        engine.load(spec)
    except EngineError as exc:
        send({"type": "load_error", "message": str(exc), "error_class": exc.__class__.__name__})
        conn.close()
        sys.exit(1)
    except BaseException as exc:
        send({"type": "load_error", "error_class": exc.__class__.__name__,
              "message": f"failed to load model: {exc.__class__.__name__}: {scrub_paths(str(exc))}"})
        conn.close()
        sys.exit(1)

    runner = _Runner(conn, engine, send_lock)
    template = engine.chat_template()
    send({"type": "ready", "pid": os.getpid(), "load_time_seconds": time.monotonic() - started,
          "context_length": engine.context_length(), "max_concurrency": engine.max_concurrency,
          "chat_template_present": bool(template),
          # Reasoning models mark their reasoning with <think>…</think>; their templates mention the tags.
          "think_tags": bool(template) and "</think>" in template,
          "tool_format": detect_tool_format(template)})

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            # The parent went away: nobody can read our output, so stop right now.
            os._exit(0)
        if not runner.handle(msg):
            break

    runner.stop()
    try:
        engine.close()
    finally:
        conn.close()
    # Worker threads may still be inside a native call; do not wait on them at exit.
    os._exit(0)
