"""Starts, tracks and stops model runner processes for the web process.

Locking (the idea of llama-cpp-python's LlamaProxy: one lock decides which model object
exists, and nobody holds it while a model loads):
  * `EngineManager._lock` guards the name -> runner table, the memory budget and the
    choice of eviction victims. It is held only for bookkeeping, never across a process
    start, a join, a pipe read or a wait, so a slow load of one model never blocks
    status calls or the load of another model.
  * A load is represented by a `Future` stored on the runner entry while the table lock
    is held; every caller that asks for the same name waits on that one future, so
    concurrent callers share a single runner and get the same answer or error.
  * Each runner has its own `lock` for its in-flight request tables (touched by request
    threads and by its reader thread) and a `send_lock` so that messages from several
    threads never interleave on the pipe.
  * Spares (with `spares=True`): after a successful load of engine E, one runner process for E
    is started without a model; it imports E's libraries (seconds for torch + transformers) and
    waits. The next load of E takes it from `_spares` under `_lock`, so two loads never share
    one, and a replacement is started after that load. A spare's slot is claimed under `_lock`
    before its process starts and checked again afterwards: a shutdown or a load that took the
    slot meanwhile makes the starter stop the process it started, so no spare outlives them.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import multiprocessing
import multiprocessing.util  # noqa: F401 - its atexit handler must be registered before ours
import os
import queue
import signal
import sys
import threading
import time
import uuid
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

from models_app.serving.engines.base import (
    KEEP_ALIVE_MAX_SECONDS,
    EngineError,
    EngineLoadError,
    EngineUnavailableError,
    GenerationParams,
    GenerationStats,
    LoadSpec,
    PromptError,
    estimate_memory_mb,
)
from models_app.serving.runner import runner_main
from models_app.serving.hardware import process_memory_mb

logger = logging.getLogger(__name__)

_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
_REAPER_INTERVAL_S = 2.0
_CALL_TIMEOUT_S = 60.0
MIB = 1024 * 1024


class QueueFullError(EngineError):
    def __init__(self, name: str, queue_depth: int, max_queue: int):
        super().__init__(f"{name} is busy: {queue_depth} request(s) already waiting")
        self.queue_depth = queue_depth
        self.max_queue = max_queue


class MemoryBudgetError(EngineLoadError):
    def __init__(self, message: str, *, needed_mb: float, available_mb: float, loaded_models: list[str]):
        super().__init__(message)
        self.needed_mb = needed_mb
        self.available_mb = available_mb
        self.loaded_models = loaded_models


@dataclass
class RunnerInfo:
    name: str
    status: str  # loaded|loading|unloaded|error
    pid: int | None
    memory_usage_mb: float
    load_time_seconds: float | None
    loaded_at: datetime | None
    last_used_at: datetime | None
    active_requests: int
    queue_depth: int
    expires_at: datetime | None
    last_error: str | None
    model_id: str | None
    engine: str | None
    prestarted: bool  # loaded in a spare runner, whose imports were already done


@dataclass
class Event:
    kind: str  # "delta" | "done" | "error"
    text: str = ""
    stats: GenerationStats | None = None
    message: str = ""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "runner exited"
    if exitcode < 0:
        try:
            return f"runner killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"runner killed by signal {-exitcode}"
    return f"runner exited with code {exitcode}"


class GenerationHandle:
    """One streamed generation. Iterate it (sync or async) for Events; the last is done or error."""

    def __init__(self, runner: "_RunnerProcess", req_id: str):
        self.id = req_id
        self.queue_time_ms: float | None = None
        self._runner = runner
        self._submitted = time.monotonic()
        self._lock = threading.Lock()
        self._sync_q: queue.Queue[Event] = queue.Queue()
        self._async_q: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished = False
        self._tokens_seen = 0

    @property
    def finished(self) -> bool:
        return self._finished

    def _started(self) -> None:
        """The runner took the request off its queue."""
        if self.queue_time_ms is None:
            self.queue_time_ms = (time.monotonic() - self._submitted) * 1000.0

    def _push(self, event: Event) -> bool:
        """Deliver an event from the reader thread; False once the stream already ended."""
        with self._lock:
            if self._finished:
                return False
            self._started()
            if event.kind == "delta":
                self._tokens_seen += 1
            else:
                self._finished = True
            if self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._async_q.put_nowait, event)
                except RuntimeError:
                    pass  # the consumer's loop is closed; nobody is listening any more
            else:
                self._sync_q.put(event)
            return True

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._sync_q.get()
            yield event
            if event.kind != "delta":
                return

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._aiter()

    async def _aiter(self):
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._async_q = asyncio.Queue()
            # Events that arrived before the async consumer subscribed move over in order.
            while not self._sync_q.empty():
                self._async_q.put_nowait(self._sync_q.get_nowait())
        while True:
            event = await self._async_q.get()
            yield event
            if event.kind != "delta":
                return

    def cancel(self) -> None:
        if not self._finished:
            self._runner.send({"op": "cancel", "id": self.id})


class _RunnerProcess:
    def __init__(self, spec: LoadSpec, estimate_mb: float):
        self.spec = spec
        self.name = spec.name
        self.estimate_mb = estimate_mb
        self.status = "loading"
        self.ready: Future = Future()
        self.process = None
        self.conn = None
        self.pid: int | None = None
        self.reader: threading.Thread | None = None
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.handles: dict[str, GenerationHandle] = {}
        self.calls: dict[str, Future] = {}
        self.load_time_seconds: float | None = None
        self.loaded_at: datetime | None = None
        self.last_used_at: datetime | None = None
        self.last_error: str | None = None
        self.context_length: int | None = None
        self.max_concurrency = 1
        self.think_tags = False
        self.tool_format = "hermes"
        self.stopping = False
        self.prestarted = False

    def send(self, message: dict) -> bool:
        with self.send_lock:
            if self.conn is None:
                return False
            try:
                self.conn.send(message)
                return True
            except (OSError, EOFError, ValueError):
                return False

    def keep_alive_s(self, default: float) -> float:
        # The registry bounds this parameter, but a row written before the bound (or edited in the
        # database) must not make every status listing and the idle reaper fail: clamp, never raise.
        try:
            value = float(self.spec.parameters.get("keep_alive_seconds", default))
        except (TypeError, ValueError):
            value = math.nan
        if math.isnan(value):
            value = float(default)
        return value if value < 0 else min(value, KEEP_ALIVE_MAX_SECONDS)

    def expires_at(self, default_keep_alive: float) -> datetime | None:
        keep = self.keep_alive_s(default_keep_alive)
        if self.status != "loaded" or keep < 0 or self.handles:
            return None
        return (self.last_used_at or self.loaded_at or _now()) + timedelta(seconds=keep)

    def fail_handles(self, message: str) -> None:
        with self.lock:
            handles = list(self.handles.values())
            self.handles.clear()
            calls = list(self.calls.values())
            self.calls.clear()
        for handle in handles:
            handle._push(Event("error", message=message, stats=GenerationStats(
                0, handle._tokens_seen, "cancelled", 0.0, 0.0, 0.0)))
        for call in calls:
            if not call.done():
                call.set_exception(EngineError(message))


class _Spare:
    """An idle runner for `engine`: libraries imported, no model. `process` is None while it starts."""

    def __init__(self, engine: str, conditions: tuple):
        self.engine = engine
        self.conditions = conditions
        self.process = None
        self.conn = None


class EngineManager:
    def __init__(self, *, memory_budget_mb: float, max_loaded_models: int, default_keep_alive_s: float,
                 load_timeout_s: float = 600, shutdown_timeout_s: float = 10,
                 log_callback: Callable[[str, str, str], None] | None = None, spares: bool = False):
        self.configure(memory_budget_mb=memory_budget_mb, max_loaded_models=max_loaded_models,
                       default_keep_alive_s=default_keep_alive_s, load_timeout_s=load_timeout_s)
        self.shutdown_timeout_s = float(shutdown_timeout_s)
        self.log_callback = log_callback
        self.spares = spares
        self._lock = threading.RLock()
        self._runners: dict[str, _RunnerProcess] = {}
        self._spares: dict[str, _Spare] = {}
        self._ctx = multiprocessing.get_context("spawn")
        self._reaper: threading.Thread | None = None
        self._closing = threading.Event()
        # A process exiting without shutdown() must not leave orphaned runners behind. multiprocessing.util
        # (imported at the top) registered its exit handler before this one; handlers run last in, first
        # out, so ours stops the runners before multiprocessing waits for them (daphne hung on SIGTERM).
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().shutdown())

    # -- loading ---------------------------------------------------------

    def configure(self, *, memory_budget_mb: float, max_loaded_models: int, default_keep_alive_s: float,
                  load_timeout_s: float) -> None:
        """Sets the limits (at start, and again on a restart that re-reads the settings); loads and
        the reaper read them on their next decision."""
        self.memory_budget_mb = float(memory_budget_mb)
        self.max_loaded_models = int(max_loaded_models)
        self.default_keep_alive_s = float(default_keep_alive_s)
        self.load_timeout_s = float(load_timeout_s)

    def load(self, spec: LoadSpec, *, force_reload: bool = False) -> RunnerInfo:
        if force_reload:
            self.unload(spec.name)
        estimate = estimate_memory_mb(spec)
        victims: list[_RunnerProcess] = []
        with self._lock:
            runner = self._runners.get(spec.name)
            starter = runner is None or runner.status not in ("loading", "loaded")
            if starter:
                victims = self._choose_victims(spec.name, estimate)
                for victim in victims:
                    self._runners.pop(victim.name, None)
                    victim.stopping = True
                runner = _RunnerProcess(spec, estimate)
                self._runners[spec.name] = runner
                self._start_reaper()
        if starter:
            for victim in victims:
                logger.info("unloading %s to make room for %s", victim.name, spec.name)
                self._stop_runner(victim, "cancelled: model unloaded")
            self._start(runner)
        try:
            runner.ready.result(timeout=self.load_timeout_s)
        except FutureTimeout:
            self._abort_load(runner, f"model load timed out after {self.load_timeout_s:.0f}s")
            raise EngineLoadError(f"model load timed out after {self.load_timeout_s:.0f}s") from None
        if self.spares:
            # Only now: a spare importing while this model loads would slow the load down on a
            # small machine, and an engine that cannot load here needs no spare.
            self._ensure_spare(spec.engine)
        return self._snapshot(runner)

    def _choose_victims(self, name: str, needed: float) -> list[_RunnerProcess]:
        """Least-recently-used idle models to unload so `needed` MiB fit; raises if impossible."""
        others = [r for r in self._runners.values() if r.name != name and r.status in ("loading", "loaded")]
        used = sum(r.estimate_mb for r in others)
        idle = sorted((r for r in others if r.status == "loaded" and not r.handles),
                      key=lambda r: r.last_used_at or r.loaded_at or _now())
        victims: list[_RunnerProcess] = []
        count = len(others)
        while (used + needed > self.memory_budget_mb or count + 1 > self.max_loaded_models) and idle:
            victim = idle.pop(0)
            victims.append(victim)
            used -= victim.estimate_mb
            count -= 1
        if used + needed > self.memory_budget_mb or count + 1 > self.max_loaded_models:
            available = self.memory_budget_mb - sum(r.estimate_mb for r in others)
            loaded = sorted(r.name for r in others)
            if needed > self.memory_budget_mb - used:
                message = (f"not enough memory for {name}: needs about {needed:.0f} MiB, "
                           f"{max(available, 0):.0f} MiB free of the {self.memory_budget_mb:.0f} MiB budget")
            else:
                message = f"cannot load {name}: {self.max_loaded_models} model(s) already loaded and busy"
            raise MemoryBudgetError(message, needed_mb=needed, available_mb=available, loaded_models=loaded)
        return victims

    def _spawn(self, name: str, spec: LoadSpec | None, spare_engine: str | None = None):
        """Starts a runner process (without `spec`, a spare); returns it and the parent's end of its pipe."""
        # spawn passes sys.path to the child; make sure models_app is importable there even
        # when the parent was started from another directory (daphne, a console script).
        if _PROJECT_ROOT not in sys.path:
            sys.path.append(_PROJECT_ROOT)
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Not a daemon: engines such as vLLM start their own worker processes.
        process = self._ctx.Process(target=runner_main,
                                    args=(child_conn, asdict(spec) if spec else None, self._log_level(), spare_engine),
                                    name=name, daemon=False)
        try:
            process.start()
        except Exception:
            parent_conn.close()
            raise
        finally:
            child_conn.close()
        return process, parent_conn

    @staticmethod
    def _log_level() -> str:
        return logging.getLevelName(logging.getLogger("models_app").getEffectiveLevel())

    def _start(self, runner: _RunnerProcess) -> None:
        spare = self._take_spare(runner.spec) if self.spares else None
        if spare is not None:
            process, conn = spare.process, spare.conn
            process.name = f"beautyai-runner-{runner.name}"
            runner.prestarted = True
        else:
            try:
                process, conn = self._spawn(f"beautyai-runner-{runner.name}", runner.spec)
            except Exception as exc:
                with self._lock:
                    runner.status = "error"
                    runner.last_error = f"could not start runner: {exc.__class__.__name__}"
                runner.ready.set_exception(EngineLoadError(runner.last_error))
                return
        runner.process, runner.conn, runner.pid = process, conn, process.pid
        if runner.stopping:
            # unload() ran while victims were being stopped; this runner is already forgotten.
            self._kill(runner)
            conn.close()
            if not runner.ready.done():
                runner.ready.set_exception(EngineLoadError("load cancelled: model unloaded"))
            return
        reader = threading.Thread(target=self._read, args=(runner,), daemon=True, name=f"runner-reader-{runner.name}")
        reader.start()
        # Published only once started: an unload racing this load joins it (joining an unstarted thread raises).
        runner.reader = reader

    # -- spares ------------------------------------------------------------

    def _spare_conditions(self) -> tuple:
        # A spare's libraries read the environment when imported (HF_HOME, CUDA_VISIBLE_DEVICES...),
        # and its log level is fixed at start; a spare started under other conditions is not used.
        # pytest rewrites PYTEST_CURRENT_TEST for every test phase and no library reads it.
        environ = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        return self._log_level(), environ

    def _ensure_spare(self, engine: str) -> None:
        with self._lock:
            current = self._spares.get(engine)
            if self._closing.is_set() or (current is not None and (current.process is None
                                                                   or current.process.is_alive())):
                return
            spare = _Spare(engine, self._spare_conditions())
            self._spares[engine] = spare
        if current is not None:
            logger.warning("the spare %s runner had stopped: %s", engine, describe_exit(current.process.exitcode))
            self._discard(current)
        try:
            process, conn = self._spawn(f"beautyai-spare-{engine}", None, engine)
        except Exception as exc:
            with self._lock:
                if self._spares.get(engine) is spare:
                    del self._spares[engine]
            logger.warning("could not start a spare %s runner: %s", engine, exc.__class__.__name__)
            return
        with self._lock:
            spare.process, spare.conn = process, conn
            kept = self._spares.get(engine) is spare
        if kept:
            logger.info("started a spare %s runner (pid %d)", engine, process.pid)
        else:
            # stop_spares() or a load emptied the slot while this process was starting.
            self._discard(spare)

    def _take_spare(self, spec: LoadSpec) -> _Spare | None:
        """The spare for `spec`'s engine, told to load `spec`; None when there is none fit to use."""
        with self._lock:
            spare = self._spares.pop(spec.engine, None)
        if spare is None or spare.process is None:
            return None
        if spare.conditions != self._spare_conditions():
            logger.info("not using the spare %s runner: the environment or log level changed since it started",
                        spec.engine)
            self._discard(spare)
            return None
        idle_mb = process_memory_mb(spare.process.pid)
        # A dead spare's pipe refuses the message (its end is closed), so a spare killed at any
        # point before this falls back to a fresh runner.
        if not spare.process.is_alive() or not self._send_load(spare, spec):
            logger.warning("the spare %s runner had stopped: %s", spec.engine, describe_exit(spare.process.exitcode))
            self._discard(spare)
            return None
        logger.info("loading %s in the spare %s runner (pid %d, %.0f MiB before the load)",
                    spec.name, spec.engine, spare.process.pid, idle_mb)
        return spare

    @staticmethod
    def _send_load(spare: _Spare, spec: LoadSpec) -> bool:
        try:
            spare.conn.send({"op": "load", "spec": asdict(spec)})
            return True
        except (OSError, EOFError, ValueError):
            return False

    def _discard(self, spare: _Spare) -> None:
        self._kill(spare)
        spare.conn.close()

    def stop_spares(self) -> None:
        """Stops the idle spares; the next load of each engine starts a fresh runner, then a new spare."""
        with self._lock:
            spares = [s for s in self._spares.values() if s.process is not None]
            self._spares.clear()
        for spare in spares:
            self._discard(spare)

    def spare_pids(self) -> dict[str, int]:
        """Engine -> pid of its idle spare runner. Spares are not models: loaded() never lists them."""
        with self._lock:
            return {engine: s.process.pid for engine, s in self._spares.items() if s.process is not None}

    def _abort_load(self, runner: _RunnerProcess, message: str) -> None:
        with self._lock:
            if self._runners.get(runner.name) is runner:
                del self._runners[runner.name]
        runner.stopping = True
        self._kill(runner)
        if not runner.ready.done():
            runner.ready.set_exception(EngineLoadError(message))

    # -- the reader thread ---------------------------------------------

    def _read(self, runner: _RunnerProcess) -> None:
        load_error: tuple[str, str] | None = None
        while True:
            try:
                msg = runner.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:
                logger.exception("unreadable message from runner %s", runner.name)
                break
            kind = msg.get("type")
            if kind in ("result", "error") and self._answer_call(runner, msg):
                continue
            if kind in ("delta", "done", "error"):
                self._dispatch(runner, msg)
            elif kind == "started":
                with runner.lock:
                    handle = runner.handles.get(msg.get("id"))
                if handle is not None:
                    handle._started()
            elif kind == "log":
                self._log(runner.name, msg.get("level", "INFO"), msg.get("message", ""))
            elif kind == "ready":
                with self._lock:
                    runner.status = "loaded"
                    runner.pid = msg.get("pid") or runner.pid
                    runner.load_time_seconds = msg.get("load_time_seconds")
                    runner.context_length = msg.get("context_length")
                    runner.max_concurrency = int(msg.get("max_concurrency") or 1)
                    runner.think_tags = bool(msg.get("think_tags"))
                    runner.tool_format = msg.get("tool_format") or "hermes"
                    runner.loaded_at = runner.last_used_at = _now()
                if not runner.ready.done():
                    runner.ready.set_result(True)
            elif kind == "load_error":
                load_error = (msg.get("message") or "model failed to load", msg.get("error_class") or "")
        self._on_exit(runner, load_error)

    @staticmethod
    def _answer_call(runner: _RunnerProcess, msg: dict) -> bool:
        """Resolves the call ``msg`` answers; False when it answers no call (then it is a generation's)."""
        with runner.lock:
            call = runner.calls.pop(msg.get("id"), None)
        if call is None:
            return False
        if not call.done():
            if msg["type"] == "result":
                call.set_result(msg.get("value"))
            else:
                error = PromptError if msg.get("code") == "prompt" else EngineError
                call.set_exception(error(msg.get("message") or "runner call failed"))
        return True

    def _dispatch(self, runner: _RunnerProcess, msg: dict) -> None:
        with runner.lock:
            handle = runner.handles.get(msg.get("id"))
            if handle is not None and msg["type"] != "delta":
                del runner.handles[msg["id"]]
        if handle is None:
            return
        if msg["type"] == "delta":
            handle._push(Event("delta", text=msg.get("text", "")))
            return
        if msg["type"] == "done":
            handle._push(Event("done", stats=GenerationStats(**msg["stats"])))
        else:
            handle._push(Event("error", message=msg.get("message", "generation failed")))
        runner.last_used_at = _now()

    def _on_exit(self, runner: _RunnerProcess, load_error: tuple[str, str] | None) -> None:
        process = runner.process
        process.join(timeout=5)
        exitcode = process.exitcode
        with runner.send_lock:
            runner.conn.close()
            runner.conn = None
        reason = describe_exit(exitcode)
        with self._lock:
            expected = runner.stopping
            if not expected:
                runner.status = "error"
                runner.last_error = load_error[0] if load_error else reason
        if not expected:
            logger.warning("runner for %s stopped: %s", runner.name, load_error[0] if load_error else reason)
        runner.fail_handles("cancelled: model unloaded" if expected else reason)
        if not runner.ready.done():
            if expected:
                runner.ready.set_exception(EngineLoadError("load cancelled: model unloaded"))
            elif load_error:
                cls = EngineUnavailableError if load_error[1] == "EngineUnavailableError" else EngineLoadError
                runner.ready.set_exception(cls(load_error[0]))
            else:
                runner.ready.set_exception(EngineLoadError(f"{reason} while loading the model"))

    def _log(self, name: str, level: str, message: str) -> None:
        if self.log_callback is not None:
            try:
                self.log_callback(name, level, message)
            except Exception:
                logger.exception("log callback failed")
            return
        levelno = logging.getLevelName(level)
        logging.getLogger(f"models_app.serving.runner.{name}").log(
            levelno if isinstance(levelno, int) else logging.INFO, "%s", message)

    # -- unloading ---------------------------------------------------------

    def unload(self, name: str) -> bool:
        with self._lock:
            runner = self._runners.pop(name, None)
            if runner is None:
                return False
            runner.stopping = True
        self._stop_runner(runner, "cancelled: model unloaded")
        return True

    def _stop_runner(self, runner: _RunnerProcess, message: str) -> None:
        runner.fail_handles(message)
        if runner.process is not None:
            # A runner still loading reads no messages until it is done; there is nothing to
            # shut down gracefully, so it is killed at once.
            if runner.status != "loading":
                runner.send({"op": "shutdown"})
                runner.process.join(self.shutdown_timeout_s)
            self._kill(runner)
        if runner.reader is not None and runner.reader is not threading.current_thread():
            runner.reader.join(self.shutdown_timeout_s)
        if not runner.ready.done():
            runner.ready.set_exception(EngineLoadError("load cancelled: model unloaded"))
        runner.status = "unloaded"

    @staticmethod
    def _kill(runner: _RunnerProcess | _Spare) -> None:
        process = runner.process
        if process is None:
            return
        if process.is_alive():
            process.kill()
        process.join(5)

    def unload_idle(self) -> list[str]:
        now = _now()
        with self._lock:
            expired = [r.name for r in self._runners.values()
                       if (at := r.expires_at(self.default_keep_alive_s)) is not None and at <= now]
        return [name for name in expired if self.unload(name)]

    def shutdown(self) -> None:
        self._closing.set()
        self.stop_spares()
        with self._lock:
            names = list(self._runners)
        threads = [threading.Thread(target=self.unload, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._closing.clear()
            self._reaper = threading.Thread(target=self._reap, daemon=True, name="model-reaper")
            self._reaper.start()

    def _reap(self) -> None:
        while not self._closing.wait(_REAPER_INTERVAL_S):
            try:
                for name in self.unload_idle():
                    logger.info("unloaded idle model %s", name)
            except Exception:
                logger.exception("idle reaper failed")

    # -- status ----------------------------------------------------------------

    def _snapshot(self, runner: _RunnerProcess | None, name: str | None = None) -> RunnerInfo:
        if runner is None:
            return RunnerInfo(name=name, status="unloaded", pid=None, memory_usage_mb=0.0, load_time_seconds=None,
                              loaded_at=None, last_used_at=None, active_requests=0, queue_depth=0,
                              expires_at=None, last_error=None, model_id=None, engine=None, prestarted=False)
        with runner.lock:
            in_flight = len(runner.handles)
        alive = runner.status in ("loaded", "loading")
        return RunnerInfo(
            name=runner.name, status=runner.status, pid=runner.pid if alive else None,
            memory_usage_mb=process_memory_mb(runner.pid) if alive else 0.0,
            load_time_seconds=runner.load_time_seconds, loaded_at=runner.loaded_at,
            last_used_at=runner.last_used_at,
            # The runner starts requests in arrival order up to max_concurrency; the rest wait.
            active_requests=min(in_flight, runner.max_concurrency),
            queue_depth=max(0, in_flight - runner.max_concurrency),
            expires_at=runner.expires_at(self.default_keep_alive_s), last_error=runner.last_error,
            model_id=runner.spec.model_id, engine=runner.spec.engine, prestarted=runner.prestarted,
        )

    def status(self, name: str) -> RunnerInfo:
        with self._lock:
            runner = self._runners.get(name)
        return self._snapshot(runner, name)

    def loaded(self) -> list[RunnerInfo]:
        with self._lock:
            runners = [r for r in self._runners.values() if r.status in ("loaded", "loading")]
        return [self._snapshot(r) for r in runners]

    # -- requests ----------------------------------------------------------------

    def _loaded_runner(self, name: str) -> _RunnerProcess:
        with self._lock:
            runner = self._runners.get(name)
            if runner is None or runner.status != "loaded":
                raise EngineError("model not loaded")
            return runner

    def generate(self, name: str, messages: list[dict], params: GenerationParams, *,
                 max_queue: int | None = None) -> GenerationHandle:
        """Submits a generation. With ``max_queue``, refuses at once (QueueFullError) when that many
        requests already wait behind the running ones, instead of letting callers pile up.

        The id is made here and only here: it keys the runner's request table, where two
        generations sharing one id would receive each other's tokens and one would never end.
        """
        runner = self._loaded_runner(name)
        handle = GenerationHandle(runner, uuid.uuid4().hex)
        with runner.lock:
            if max_queue is not None and self._queue_full(runner, max_queue):
                raise QueueFullError(name, max(0, len(runner.handles) - runner.max_concurrency), max_queue)
            runner.handles[handle.id] = handle
        runner.last_used_at = _now()
        if not runner.send({"op": "generate", "id": handle.id, "messages": messages, "params": asdict(params)}):
            with runner.lock:
                runner.handles.pop(handle.id, None)
            raise EngineError("model not loaded")
        return handle

    def _call(self, runner: _RunnerProcess, op: str, **payload):
        call_id = uuid.uuid4().hex
        future: Future = Future()
        with runner.lock:
            runner.calls[call_id] = future
        if not runner.send({"op": op, "id": call_id, **payload}):
            with runner.lock:
                runner.calls.pop(call_id, None)
            raise EngineError("model not loaded")
        try:
            return future.result(timeout=_CALL_TIMEOUT_S)
        except FutureTimeout:
            with runner.lock:
                runner.calls.pop(call_id, None)
            raise EngineError(f"{op} timed out") from None

    @staticmethod
    def _queue_full(runner: _RunnerProcess, max_queue: int) -> bool:
        # Every slot busy and max_queue more waiting; the caller holds runner.lock or accepts a stale answer.
        return len(runner.handles) >= runner.max_concurrency + max_queue

    def queue_full(self, name: str, max_queue: int) -> bool:
        return self._queue_full(self._loaded_runner(name), max_queue)

    def context_length(self, name: str) -> int | None:
        return self._loaded_runner(name).context_length

    def think_tags(self, name: str) -> bool:
        """Whether the model's chat template marks reasoning with <think> tags."""
        return self._loaded_runner(name).think_tags

    def tool_format(self, name: str) -> str:
        """The tool-call format the model's chat template teaches (engines.base.detect_tool_format)."""
        return self._loaded_runner(name).tool_format

    def count_tokens(self, name: str, messages: list[dict], tools: list[dict] | None = None) -> int:
        return int(self._call(self._loaded_runner(name), "count_tokens", messages=messages, tools=tools))

    def embed(self, name: str, inputs: list) -> tuple[list[list[float]], int]:
        """Unit vectors of ``inputs`` and the prompt tokens they took; PromptError for bad input."""
        runner = self._loaded_runner(name)
        runner.last_used_at = _now()  # calls are not counted as in flight; this keeps the reaper off meanwhile
        answer = self._call(runner, "embed", inputs=inputs)
        runner.last_used_at = _now()
        return answer["vectors"], int(answer["prompt_tokens"])

    def release_caches(self) -> list[str]:
        """Asks every loaded runner to free its caches; returns the names of those that answered."""
        with self._lock:
            runners = [r for r in self._runners.values() if r.status == "loaded"]
        released = []
        for runner in runners:
            try:
                self._call(runner, "release_caches")
                released.append(runner.name)
            except EngineError as exc:
                logger.warning("release_caches failed for %s: %s", runner.name, exc)
        return sorted(released)
