"""The manager of a web process whose runners live on a Ray cluster (BEAUTYAI_PLACEMENT=ray).

It keeps the local manager's table, but only as this process's connections and in-flight requests:
the cluster is the truth. Status and the list of loaded models come from the runner actors
themselves (so every web process, on any host, reads the same), a request for a model another web
process loaded connects to its runner, an unload ends the runner for everyone, idle time is counted
from the last use on any web process, and a web process that shuts down only closes its connections.
Memory budget and model count apply per node and are enforced by RayPlacement when it places a runner.

Replies of a web process that died: its runners keep the tagged ones as orphans (runner.py); this
manager's reaper takes them from every runner actor and hands each to `orphan_callback` (set by
models_app.runtime, which stores it as the chat reply it was). A callback that fails gets the orphan
again on the next passes, up to `_ORPHAN_ATTEMPTS` times.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Callable

from models_app.serving import protocol as p
from models_app.serving.engines.contract import EngineError, LoadSpec
from models_app.serving.manager import EngineManager, RunnerInfo, _RunnerProcess
from models_app.serving.ray_placement import RayPlacement, actor_name, model_of

logger = logging.getLogger("models_app.serving.manager")

_ORPHAN_ATTEMPTS = 30  # reaper passes (2 s apart) before an orphan that cannot be stored is given up


def _at(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, timezone.utc) if epoch else None


class ClusterEngineManager(EngineManager):
    def __init__(self, *, placement: RayPlacement, orphan_callback: Callable[[dict], None] | None = None, **kwargs):
        kwargs["spares"] = False  # a spare is a local process; a Ray node starts workers itself
        self._placement: RayPlacement = placement  # before the base's configure(), which hands it the limits
        super().__init__(placement=placement, **kwargs)
        self._attach_lock = threading.Lock()
        # Without a callback the orphans stay on the actors for a web process that has one.
        self.orphan_callback = orphan_callback
        self._orphans_failed: deque[tuple[dict, int]] = deque(maxlen=1000)  # (orphan, attempts so far)
        if orphan_callback is not None:
            # From the start, not from this process's first load: it may never load anything itself
            # and still be the one left to store another process's replies (or to end idle runners).
            self._start_reaper()

    def configure(self, **limits) -> None:
        super().configure(**limits)
        self._placement.memory_budget_mb, self._placement.max_loaded_models = self.memory_budget_mb, self.max_loaded_models
        self._placement.shutdown_timeout_s = getattr(self, "shutdown_timeout_s", self._placement.shutdown_timeout_s)

    def _choose_victims(self, name: str, needed: float) -> list[_RunnerProcess]:
        return []  # per node, by RayPlacement, with what every web process is doing

    def load(self, spec: LoadSpec, *, force_reload: bool = False) -> RunnerInfo:
        with self._lock:
            local = self._runners.get(spec.name)
            if local is not None and local.spec != spec:
                # Another registry revision: requests already on it finish there (RayPlacement drains the
                # old runner before it places the new one); new ones go to the new runner.
                del self._runners[spec.name]
                local.stopping = True
        super().load(spec, force_reload=force_reload)
        return self.status(spec.name)

    def _on_exit(self, runner: _RunnerProcess, load_error: p.LoadError | None) -> None:
        super()._on_exit(runner, load_error)
        if runner.status == "error" and load_error is None:
            # Crashes and lost nodes only; a failed load is its caller's answer, not a runner's state.
            self._placement.record_error(runner.name, runner.last_error)

    # -- the cluster's truth ---------------------------------------------------------------------

    def _info(self, name: str, actor: str, info: dict) -> RunnerInfo:
        ready = p.decode(info["ready"]) if info.get("ready") else None
        spec = LoadSpec(**info["spec"]) if info.get("spec") else None
        with self._lock:
            local = self._runners.get(name)
        if local is not None and local.status == "loading" and info["status"] == "loading":
            return self._snapshot(local)
        last_used, loaded_at = _at(info.get("last_used")), _at(info.get("loaded_at"))
        in_flight = int(info.get("in_flight") or 0)
        max_concurrency = ready.max_concurrency if isinstance(ready, p.Ready) else 1
        status = info["status"]
        expires = None
        if status == "loaded" and not in_flight and spec is not None:
            keep = _RunnerProcess(spec, 0).keep_alive_s(self.default_keep_alive_s)
            if keep >= 0:
                expires = (last_used or loaded_at or datetime.now(timezone.utc)) + timedelta(seconds=keep)
        return RunnerInfo(
            name=name, status=status, pid=info.get("pid"), memory_usage_mb=float(info.get("memory_mb") or 0.0),
            load_time_seconds=ready.load_time_seconds if isinstance(ready, p.Ready) else None,
            loaded_at=loaded_at, last_used_at=last_used,
            active_requests=min(in_flight, max_concurrency), queue_depth=max(0, in_flight - max_concurrency),
            expires_at=expires, last_error=ready.message if isinstance(ready, p.LoadError) else None,
            model_id=spec.model_id if spec else None, engine=spec.engine if spec else None, prestarted=False,
            node_id=info.get("node_id"), node_address=info.get("node_address"),
            gpu_memory_mb=float(info.get("gpu_memory_mb") or 0.0),
        )

    def status(self, name: str) -> RunnerInfo:
        infos = self._placement.infos(name)
        if infos:
            actor, info = sorted(infos.items(), key=lambda item: item[1]["status"] != "loaded")[0]
            return self._info(name, actor, info)
        with self._lock:
            local = self._runners.get(name)
        if local is not None and local.status in ("loading", "error"):
            return self._snapshot(local)
        error = self._placement.errors().get(name)
        info = self._snapshot(None, name)
        if error is not None:
            info.status, info.last_error = "error", error[0]
        return info

    def is_loaded(self, name: str) -> bool:
        # Every chat asks this first: a runner this process is connected to answers without a Ray call
        # (its connection ends, and its entry with it, when the runner stops anywhere).
        return super().is_loaded(name) or self.status(name).status == "loaded"

    def loaded(self) -> list[RunnerInfo]:
        out = {}
        for actor, info in self._placement.infos().items():
            name = model_of(actor)
            if name not in out or info["status"] == "loaded":
                out[name] = self._info(name, actor, info)
        return [i for i in out.values() if i.status in ("loaded", "loading")]

    def _loaded_runner(self, name: str) -> _RunnerProcess:
        """This process's connection to `name`'s runner, made on first use when another web process loaded it."""
        with self._lock:
            runner = self._runners.get(name)
            if runner is not None and runner.status == "loaded":
                return runner
        with self._attach_lock:
            infos = {a: i for a, i in self._placement.infos(name).items() if i["status"] == "loaded" and i["spec"]}
            if not infos:
                raise EngineError("model not loaded")
            spec = LoadSpec(**next(iter(infos.values()))["spec"])
            super().load(spec)
        return super()._loaded_runner(name)

    # -- ending runners ---------------------------------------------------------------------------

    def unload(self, name: str) -> bool:
        local = super().unload(name)
        # Runners this process never connected to, and other revisions of the model.
        remote = [self._placement.stop(actor, "cancelled: model unloaded") for actor in self._placement.actors()
                  if model_of(actor) == name]
        self._placement.record_error(name, None)
        return local or any(remote)

    def _reap_once(self) -> None:
        super()._reap_once()
        try:
            self.collect_orphans()
        except Exception:
            logger.exception("collecting orphaned replies failed")

    def collect_orphans(self) -> int:
        """Takes the orphans of every runner actor and hands each to `orphan_callback`; the number stored."""
        if self.orphan_callback is None:
            return 0
        batch = [(orphan, 0) for orphan in self._placement.take_orphans()]
        while self._orphans_failed:
            batch.append(self._orphans_failed.popleft())
        stored = 0
        for orphan, attempts in batch:
            try:
                self.orphan_callback(orphan)
                stored += 1
            except Exception:
                if attempts + 1 < _ORPHAN_ATTEMPTS:
                    self._orphans_failed.append((orphan, attempts + 1))
                    logger.warning("storing an orphaned reply failed; retrying", exc_info=True)
                else:
                    logger.exception("storing an orphaned reply failed %d times; given up", _ORPHAN_ATTEMPTS)
        return stored

    def unload_idle(self) -> list[str]:
        expired = [info.name for info in self.loaded()
                   if info.expires_at is not None and info.expires_at <= datetime.now(timezone.utc)]
        return [name for name in expired if self.unload(name)]

    def release_caches(self) -> list[str]:
        for info in self.loaded():
            if info.status == "loaded":
                try:
                    self._loaded_runner(info.name)
                except EngineError:
                    pass
        return super().release_caches()

    def shutdown(self) -> None:
        """Closes this web process's connections; the runners stay for the other web processes."""
        self._closing.set()
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.stopping = True
            # Cancelled by this process, which stores their partial replies itself (below, through the
            # handles' events): the runner must not also hand them to another process as orphans.
            with runner.lock:
                ids = list(runner.handles)
            for req_id in ids:
                runner.send(p.Cancel(id=req_id))
            runner.fail_handles("cancelled: web process shutting down", p.ErrorCode.CANCELLED)
            if runner.link is not None:
                runner.link.close()
            if runner.reader is not None and runner.reader is not threading.current_thread():
                runner.reader.join(self.shutdown_timeout_s)

    def actor_name(self, spec: LoadSpec) -> str:
        return actor_name(spec)
