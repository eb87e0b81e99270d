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

import atexit
import logging
import math
import multiprocessing.util  # noqa: F401 - its atexit handler must be registered before ours
import threading
import uuid
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from models_app.serving.engines.contract import (
    KEEP_ALIVE_MAX_SECONDS,
    EngineError,
    EngineLoadError,
    EngineUnavailableError,
    GenerationParams,
    GenerationStats,
    LoadSpec,
    PromptError,
)
from models_app.serving.engines.memory import estimate_memory_mb
from models_app.serving import prompt_bound, protocol as p
from models_app.serving.handle import Event, GenerationHandle
from models_app.serving.hardware import process_memory_mb
from models_app.serving.placement import LocalPlacement, Placement, RunnerConnection
from models_app.serving.spares import SparesMixin, _Spare

logger = logging.getLogger(__name__)

_REAPER_INTERVAL_S = 2.0
_CALL_TIMEOUT_S = 60.0
MIB = 1024 * 1024


class QueueFullError(EngineError):
    def __init__(self, name: str, queue_depth: int, max_queue: int):
        super().__init__(f"{name} is busy: {queue_depth} request(s) already waiting")
        self.queue_depth = queue_depth
        self.max_queue = max_queue


class LoadCancelledError(EngineLoadError):
    """The model was unloaded while this caller waited for its load."""


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
    node_id: str | None = None  # with Ray placement: where the runner runs
    node_address: str | None = None
    gpu_memory_mb: float = 0.0  # with Ray placement, measured by the runner on its node (part of memory_usage_mb)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _RunnerProcess:
    def __init__(self, spec: LoadSpec, estimate_mb: float):
        self.spec = spec
        self.name = spec.name
        self.estimate_mb = estimate_mb
        self.status = "loading"
        self.ready: Future = Future()
        self.link: RunnerConnection | None = None
        self.open = False  # link usable for sending; cleared once the runner is gone
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
        self.response_template: dict | None = None
        self.prompt_overhead: dict | None = None
        self.stopping = False
        self.prestarted = False

    def send(self, message: p.ParentMessage) -> bool:
        with self.send_lock:
            if not self.open:
                return False
            try:
                self.link.send(message)
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

    def fail_handles(self, message: str, code: p.ErrorCode) -> None:
        with self.lock:
            handles = list(self.handles.values())
            self.handles.clear()
            calls = list(self.calls.values())
            self.calls.clear()
        for handle in handles:
            handle._push(Event("error", message=message, code=code, stats=GenerationStats(
                0, handle._tokens_seen, "cancelled", 0.0, 0.0, 0.0)))
        for call in calls:
            if not call.done():
                call.set_exception(EngineError(message))


class EngineManager(SparesMixin):
    def __init__(self, *, memory_budget_mb: float, max_loaded_models: int, default_keep_alive_s: float,
                 load_timeout_s: float = 600, shutdown_timeout_s: float = 10,
                 log_callback: Callable[[str, str, str], None] | None = None, spares: bool = False,
                 placement: Placement | None = None):
        self.configure(memory_budget_mb=memory_budget_mb, max_loaded_models=max_loaded_models,
                       default_keep_alive_s=default_keep_alive_s, load_timeout_s=load_timeout_s)
        self.shutdown_timeout_s = float(shutdown_timeout_s)
        self.log_callback = log_callback
        self.spares = spares
        self._lock = threading.RLock()
        self._runners: dict[str, _RunnerProcess] = {}
        self._spares: dict[str, _Spare] = {}
        self._placement = placement or LocalPlacement()
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
                self._stop_runner(victim, "cancelled: model unloaded", p.ErrorCode.CANCELLED)
            self._start(runner)
        try:
            runner.ready.result(timeout=self.load_timeout_s)
        except FutureTimeout:
            message = f"model load timed out after {self.load_timeout_s:.0f}s"
            pending = getattr(runner.link, "pending_reason", None)
            if pending is not None and (why := pending()):
                message = f"{message}: {why}"
            self._abort_load(runner, message)
            raise EngineLoadError(message) from None
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

    def _spawn(self, name: str, spec: LoadSpec | None, spare_engine: str | None = None) -> RunnerConnection:
        """Starts a runner (without `spec`, a spare) where the placement puts it."""
        return self._placement.start(name, spec, log_level=self._log_level(), spare_engine=spare_engine)

    @staticmethod
    def _log_level() -> str:
        return logging.getLevelName(logging.getLogger("models_app").getEffectiveLevel())

    def _start(self, runner: _RunnerProcess) -> None:
        spare = self._take_spare(runner.spec) if self.spares else None
        if spare is not None:
            link = spare.link
            runner.prestarted = True
        else:
            try:
                link = self._spawn(f"beautyai-runner-{runner.name}", runner.spec)
            except Exception as exc:
                # A placement's own refusal (no node offers the resources, no room) is the answer as it
                # stands; anything else is reported by class only (its text may hold paths).
                error = exc if isinstance(exc, EngineError) else EngineLoadError(
                    f"could not start runner: {exc.__class__.__name__}")
                with self._lock:
                    runner.status = "error"
                    runner.last_error = str(error)
                runner.ready.set_exception(error)
                return
        runner.link, runner.pid, runner.open = link, link.pid, True
        if runner.stopping:
            # unload() ran while victims were being stopped; this runner is already forgotten.
            self._kill(runner)
            link.close()
            if not runner.ready.done():
                runner.ready.set_exception(LoadCancelledError("load cancelled: model unloaded"))
            return
        reader = threading.Thread(target=self._read, args=(runner,), daemon=True, name=f"runner-reader-{runner.name}")
        reader.start()
        # Published only once started: an unload racing this load joins it (joining an unstarted thread raises).
        runner.reader = reader

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
        load_error: p.LoadError | None = None
        while True:
            try:
                msg = runner.link.recv()
            except p.ProtocolError:
                logger.exception("undecodable message from runner %s", runner.name)
                continue
            except (EOFError, OSError):
                break
            except Exception:
                logger.exception("unreadable message from runner %s", runner.name)
                break
            if isinstance(msg, (p.Result, p.Error)) and self._answer_call(runner, msg):
                continue
            if isinstance(msg, (p.Delta, p.Done, p.Error)):
                self._dispatch(runner, msg)
            elif isinstance(msg, p.Started):
                with runner.lock:
                    handle = runner.handles.get(msg.id)
                if handle is not None:
                    handle._started()
            elif isinstance(msg, p.Log):
                self._log(runner.name, msg.level or "INFO", msg.message or "")
            elif isinstance(msg, p.Ready):
                with self._lock:
                    runner.status = "loaded"
                    runner.pid = msg.pid or runner.pid
                    runner.load_time_seconds = msg.load_time_seconds
                    runner.context_length = msg.context_length
                    runner.max_concurrency = int(msg.max_concurrency or 1)
                    runner.think_tags = bool(msg.think_tags)
                    runner.tool_format = msg.tool_format or "hermes"
                    runner.response_template = msg.response_template or None
                    runner.prompt_overhead = msg.prompt_overhead or None
                    runner.loaded_at = runner.last_used_at = _now()
                if not runner.ready.done():
                    runner.ready.set_result(True)
            elif isinstance(msg, p.LoadError):
                load_error = msg
            elif isinstance(msg, p.Stopping):
                # A shared runner ended on purpose by another web process: unloaded here too, not failed.
                with self._lock:
                    runner.stopping = True
                    if self._runners.get(runner.name) is runner:
                        del self._runners[runner.name]
        self._on_exit(runner, load_error)

    @staticmethod
    def _answer_call(runner: _RunnerProcess, msg: p.Result | p.Error) -> bool:
        """Resolves the call ``msg`` answers; False when it answers no call (then it is a generation's)."""
        with runner.lock:
            call = runner.calls.pop(msg.id, None)
        if call is None:
            return False
        if not call.done():
            if isinstance(msg, p.Result):
                call.set_result(msg.value)
            else:
                error = PromptError if msg.code is p.ErrorCode.PROMPT else EngineError
                call.set_exception(error(msg.message or "runner call failed"))
        return True

    def _dispatch(self, runner: _RunnerProcess, msg: p.Delta | p.Done | p.Error) -> None:
        delta = isinstance(msg, p.Delta)
        with runner.lock:
            handle = runner.handles.get(msg.id)
            if handle is not None and not delta:
                del runner.handles[msg.id]
        if handle is None:
            return
        if delta:
            handle._push(Event("delta", text=msg.text))
            return
        if isinstance(msg, p.Done):
            handle._push(Event("done", stats=GenerationStats(**msg.stats)))
        else:
            handle._push(Event("error", message=msg.message or "generation failed", code=msg.code))
        runner.last_used_at = _now()

    def _on_exit(self, runner: _RunnerProcess, load_error: p.LoadError | None) -> None:
        runner.link.join(timeout=5)
        reason = runner.link.exit_reason()
        with runner.send_lock:
            runner.link.close()
            runner.open = False
        with self._lock:
            expected = runner.stopping
            if not expected:
                runner.status = "error"
                runner.last_error = load_error.message if load_error else reason
        if not expected:
            logger.warning("runner for %s stopped: %s", runner.name, load_error.message if load_error else reason)
        runner.fail_handles("cancelled: model unloaded" if expected else reason,
                            p.ErrorCode.CANCELLED if expected else p.ErrorCode.ENGINE)
        if not runner.ready.done():
            if expected:
                runner.ready.set_exception(LoadCancelledError("load cancelled: model unloaded"))
            elif load_error:
                cls = EngineUnavailableError if load_error.code is p.ErrorCode.UNAVAILABLE else EngineLoadError
                runner.ready.set_exception(cls(load_error.message))
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
        self._stop_runner(runner, "cancelled: model unloaded", p.ErrorCode.CANCELLED)
        return True

    def _stop_runner(self, runner: _RunnerProcess, message: str, code: p.ErrorCode) -> None:
        runner.fail_handles(message, code)
        if runner.link is not None:
            # A runner still loading reads no messages until it is done; there is nothing to
            # shut down gracefully, so it is killed at once.
            if runner.status != "loading":
                runner.send(p.Shutdown())
                runner.link.join(self.shutdown_timeout_s)
            self._kill(runner)
        if runner.reader is not None and runner.reader is not threading.current_thread():
            runner.reader.join(self.shutdown_timeout_s)
        if not runner.ready.done():
            runner.ready.set_exception(LoadCancelledError("load cancelled: model unloaded"))
        runner.status = "unloaded"

    @staticmethod
    def _kill(runner: _RunnerProcess | _Spare) -> None:
        if runner.link is not None:
            runner.link.kill()

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
            self._reap_once()

    def _reap_once(self) -> None:
        """One pass of the reaper thread (every 2 s once a model was loaded)."""
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

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            runner = self._runners.get(name)
            return runner is not None and runner.status == "loaded"

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
                 max_queue: int | None = None, tag: dict | None = None) -> GenerationHandle:
        """Submits a generation. With ``max_queue``, refuses at once (QueueFullError) when that many
        requests already wait behind the running ones, instead of letting callers pile up.

        ``tag`` (opaque, JSON-able) goes to a runner that other web processes share, which hands the
        reply to one of them if this process dies before it ends (ClusterEngineManager's orphans);
        a local runner dies with this process, so it is not sent there.

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
        tag = tag if getattr(runner.link, "shared", False) else None
        if not runner.send(p.Generate(id=handle.id, messages=messages, params=asdict(params), tag=tag)):
            with runner.lock:
                runner.handles.pop(handle.id, None)
            raise EngineError("model not loaded")
        return handle

    def _call(self, runner: _RunnerProcess, op: str, **payload):
        call_id = uuid.uuid4().hex
        message = p.call(op, call_id, **payload)
        future: Future = Future()
        with runner.lock:
            runner.calls[call_id] = future
        if not runner.send(message):
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
        """The tool-call format the model's chat template teaches (engines.templates.detect_tool_format)."""
        return self._loaded_runner(name).tool_format

    def response_template(self, name: str) -> dict | None:
        """The tokenizer's response template and the turn prefix it parses after (Engine.response_template)."""
        return self._loaded_runner(name).response_template

    def prompt_fits(self, name: str, messages: list[dict], tools: list[dict] | None, room: int) -> bool:
        """Whether the prompt of ``messages`` surely takes at most ``room`` tokens, told without the
        runner (prompt_bound); False means only a count can tell."""
        return prompt_bound.fits(self._loaded_runner(name).prompt_overhead, messages, tools, room)

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
