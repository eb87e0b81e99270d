"""Body of a model runner process: one loaded model, served over a multiprocessing pipe.

The web process never loads a model itself. A bad model file, an out-of-memory kill or
a segfault inside a native library therefore takes down only this process, and the
parent notices through the pipe closing.

A spare runner starts without a model: it imports its engine's libraries, then waits for
one `protocol.Load` message and from there on is an ordinary runner. The messages both ways are
in protocol.py.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields

from models_app.serving.engines import get_engine_class
from models_app.serving.engines.contract import (
    EngineError,
    GenerationParams,
    EngineUnavailableError,
    GenerationStats,
    LoadSpec,
)
from models_app.serving.engines.model_files import scrub_paths
from models_app.serving.engines.templates import detect_tool_format
from models_app.serving import prompt_bound, protocol as p

_PARAM_FIELDS = {f.name for f in fields(GenerationParams)}
_PARENT_POLL_S = 1.0
MAX_ORPHANS = 1000  # kept until a web process collects them; beyond this the oldest go


@dataclass
class _Tagged:
    """A tagged generation's reply so far, for another web process to store if its own goes away."""
    tag: dict
    text: list[str] = field(default_factory=list)  # the deltas: joined only if it becomes an orphan
    stats: dict | None = None
    error: str | None = None
    orphaned: bool = False  # its connection closed while it ran or waited

    def orphan(self) -> dict:
        return {"tag": self.tag, "text": "".join(self.text), "stats": self.stats, "error": self.error}


def error_reply(req_id, exc: BaseException, prefix: str = "") -> p.Error:
    if isinstance(exc, EngineError):
        return p.Error(id=req_id, code=p.error_code_of(exc), message=prefix + str(exc))
    return p.Error(id=req_id, code=p.ErrorCode.ENGINE,
                   message=f"{prefix}{exc.__class__.__name__}: {scrub_paths(str(exc))}")


class _PipeLogHandler(logging.Handler):
    def __init__(self, send):
        super().__init__()
        self._send = send

    def emit(self, record):
        try:
            self._send(p.Log(level=record.levelname, message=scrub_paths(self.format(record))))
        except Exception:
            pass


class _Runner:
    """Serves one loaded engine. Every request arrives with the `reply` function of the connection it
    came on, and its answers go back there: a local runner has one connection (its pipe), a runner on
    a Ray cluster one per web process (ray_placement.py).

    Orphans: a generation that carries a `tag` keeps its text and final stats while it runs. When its
    connection closes before it ended (its web process died) and that connection had not cancelled it
    itself, it is cancelled and then kept as an orphan, `{tag, text, stats, error}`, until a web process
    takes it (`take_orphans`, each orphan once) and stores it. A connection's own Cancel (its client
    left, or it shuts down on purpose) means it stores the reply itself: no orphan then."""

    def __init__(self, engine):
        self.engine = engine
        self.cancel_events: dict[str, threading.Event] = {}
        self.owners: dict[str, object] = {}  # generation id -> the reply function of its connection
        self.tagged: dict[str, _Tagged] = {}  # generation id -> its reply so far, for tagged generations
        self.orphans: deque[dict] = deque(maxlen=MAX_ORPHANS)
        self.events_lock = threading.Lock()
        self.last_used = time.time()
        # Pending generations wait here in arrival order; a fixed pool of workers
        # (engine.max_concurrency of them) takes them, which bounds concurrency.
        self.pending: queue.Queue = queue.Queue()
        self.workers = [threading.Thread(target=self._worker, daemon=True, name=f"generate-{i}")
                        for i in range(max(1, int(engine.max_concurrency)))]
        for w in self.workers:
            w.start()

    @property
    def in_flight(self) -> int:
        """Generations running or waiting, from every connection."""
        with self.events_lock:
            return len(self.cancel_events)

    def cancel_all(self, owner=None) -> None:
        """Stops the generations of one connection (a web process that went away: its tagged ones
        become orphans when they end), or all of them (the runner stops: nobody is left to store them)."""
        with self.events_lock:
            ids = [req_id for req_id in self.cancel_events if owner is None or self.owners.get(req_id) is owner]
            events = [self.cancel_events[req_id] for req_id in ids]
            if owner is not None:
                for req_id in ids:
                    if req_id in self.tagged:
                        self.tagged[req_id].orphaned = True
        for event in events:
            event.set()

    def take_orphans(self) -> list[dict]:
        """The orphans so far, removed: each goes to exactly one caller."""
        with self.events_lock:
            taken = list(self.orphans)
            self.orphans.clear()
        return taken

    def _worker(self):
        while True:
            item = self.pending.get()
            if item is None:
                return
            self._generate(*item)

    def _generate(self, reply, req_id: str, messages: list, params: GenerationParams, cancel: threading.Event):
        with self.events_lock:
            kept = self.tagged.get(req_id)
        try:
            if cancel.is_set():
                stats = asdict(GenerationStats(0, 0, "cancelled", 0.0, 0.0, 0.0))
                if kept is not None:
                    kept.stats = stats
                reply(p.Done(id=req_id, stats=stats))
                return
            # Marks the end of the wait in the queue, so the parent can report queue time apart from TTFT.
            reply(p.Started(id=req_id))
            for item in self.engine.generate(messages, params, cancel.is_set):
                if isinstance(item, GenerationStats):
                    stats = asdict(item)
                    if kept is not None:
                        kept.stats = stats
                    reply(p.Done(id=req_id, stats=stats))
                elif item:
                    if kept is not None:
                        kept.text.append(item)
                    reply(p.Delta(id=req_id, text=item))
        except EngineError as exc:
            answer = error_reply(req_id, exc)
            if kept is not None:
                kept.error = answer.message
            reply(answer)
        except Exception as exc:
            logging.getLogger(__name__).exception("generation failed")
            answer = error_reply(req_id, exc, prefix="generation failed: ")
            if kept is not None:
                kept.error = answer.message
            reply(answer)
        finally:
            self.last_used = time.time()
            with self.events_lock:
                self.cancel_events.pop(req_id, None)
                self.owners.pop(req_id, None)
                self.tagged.pop(req_id, None)
                # Under the lock cancel_all marks with: an orphan is kept exactly when its connection
                # closed while it was still in flight.
                if kept is not None and kept.orphaned:
                    self.orphans.append(kept.orphan())

    def _call(self, reply, req_id: str, fn):
        self.last_used = time.time()
        try:
            reply(p.Result(id=req_id, value=fn()))
        except Exception as exc:
            reply(error_reply(req_id, exc))

    def _embed(self, inputs: list) -> dict:
        vectors, prompt_tokens = self.engine.embed(inputs)
        return {"vectors": vectors, "prompt_tokens": int(prompt_tokens)}

    def handle(self, raw: dict, reply) -> bool:
        """Dispatch one message from the connection whose send function is `reply`; False means stop serving."""
        try:
            msg = p.decode(raw)
        except p.ProtocolError as exc:
            # The caller waits for an answer under this id; silence would hold it until its timeout.
            reply(error_reply(raw.get("id") if isinstance(raw, dict) else None, exc))
            return True
        if isinstance(msg, p.Generate):
            params = GenerationParams(**{k: v for k, v in (msg.params or {}).items() if k in _PARAM_FIELDS})
            cancel = threading.Event()
            with self.events_lock:
                self.cancel_events[msg.id] = cancel
                self.owners[msg.id] = reply
                if msg.tag is not None:
                    self.tagged[msg.id] = _Tagged(msg.tag)
            self.last_used = time.time()
            self.pending.put((reply, msg.id, msg.messages or [], params, cancel))
        elif isinstance(msg, p.Cancel):
            with self.events_lock:
                event = self.cancel_events.get(msg.id)
                if self.owners.get(msg.id) is reply:
                    # Its own web process cancelled it and stores the reply itself.
                    self.tagged.pop(msg.id, None)
            if event is not None:
                event.set()
        elif isinstance(msg, p.CountTokens):
            self._call_in_thread(reply, msg.id, lambda: self.engine.count_tokens(msg.messages or [], tools=msg.tools or None))
        elif isinstance(msg, p.Embed):
            self._call_in_thread(reply, msg.id, lambda: self._embed(msg.inputs or []))
        elif isinstance(msg, p.ReleaseCaches):
            self._call_in_thread(reply, msg.id, self.engine.release_caches)
        elif isinstance(msg, p.Shutdown):
            return False
        else:  # a Load after the model is loaded
            reply(p.Error(id=getattr(msg, "id", None), code=p.ErrorCode.PROTOCOL,
                              message=f"unexpected runner op: {msg.OP.value}"))
        return True

    def _call_in_thread(self, reply, req_id: str, fn) -> None:
        threading.Thread(target=self._call, args=(reply, req_id, fn), daemon=True).start()

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
        msg = p.decode(conn.recv())
    except (EOFError, OSError):
        os._exit(0)
    if not isinstance(msg, p.Load):
        raise p.ProtocolError(f"a spare runner expects a load first, not {type(msg).__name__}")
    return msg.spec


def load_engine(spec: LoadSpec):
    """Loads `spec`: (engine, Ready) on success, (None, LoadError) on failure. Shared by the local runner
    process and the Ray runner actor, so both report a load the same way."""
    started = time.monotonic()
    try:
        engine = get_engine_class(spec.engine)()
        engine.load(spec)
    except EngineError as exc:
        code = p.ErrorCode.UNAVAILABLE if isinstance(exc, EngineUnavailableError) else p.ErrorCode.LOAD
        return None, p.LoadError(code=code, message=str(exc))
    except BaseException as exc:
        return None, p.LoadError(code=p.ErrorCode.LOAD,
                                 message=f"failed to load model: {exc.__class__.__name__}: {scrub_paths(str(exc))}")
    template = engine.chat_template()
    return engine, p.Ready(pid=os.getpid(), load_time_seconds=time.monotonic() - started,
                           context_length=engine.context_length(), max_concurrency=engine.max_concurrency,
                           chat_template_present=bool(template),
                           # Reasoning models mark their reasoning with <think>…</think>; their templates mention the tags.
                           think_tags=bool(template) and "</think>" in template,
                           tool_format=detect_tool_format(template),
                           response_template=engine.response_template(),
                           # An embedding model refuses to count: measure() answers None.
                           prompt_overhead=prompt_bound.measure(engine.count_tokens))


def runner_main(conn, spec_dict: dict | None, log_level: str, spare_engine: str | None = None) -> None:
    """Loads `spec_dict` and serves it; without a spec, a spare for `spare_engine` that waits for one."""
    send_lock = threading.Lock()

    def send(message):
        with send_lock:
            conn.send(p.encode(message))

    def reply(message):
        try:
            send(message)
        except (OSError, EOFError, BrokenPipeError):
            pass  # the parent is gone; the main loop sees EOF and exits

    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(send)]
    root.setLevel(getattr(logging, str(log_level).upper(), logging.INFO))
    logging.captureWarnings(True)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    if spec_dict is None:
        spec_dict = _wait_as_spare(conn, spare_engine)
    engine, answer = load_engine(LoadSpec(**spec_dict))
    send(answer)
    if engine is None:
        conn.close()
        sys.exit(1)

    runner = _Runner(engine)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            # The parent went away: nobody can read our output, so stop right now.
            os._exit(0)
        if not runner.handle(msg, reply):
            break

    runner.stop()
    try:
        engine.close()
    finally:
        conn.close()
    # Worker threads may still be inside a native call; do not wait on them at exit.
    os._exit(0)
