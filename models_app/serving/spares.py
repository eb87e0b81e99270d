"""Spare runners: after a load of engine E, one runner process for E starts without a model, imports
E's libraries and waits, so the next load of E skips those seconds (the locking is described in
manager.py). The manager mixes this in; it owns the table lock, `_spawn` and `_kill`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from models_app.serving.engines.contract import LoadSpec
from models_app.serving import protocol as p
from models_app.serving.handle import describe_exit
from models_app.serving.hardware import process_memory_mb

logger = logging.getLogger("models_app.serving.manager")


class _Spare:
    """An idle runner for `engine`: libraries imported, no model. `link` is None while it starts."""

    def __init__(self, engine: str, conditions: tuple):
        self.engine = engine
        self.conditions = conditions
        self.link = None


class SparesMixin:
    def _spare_conditions(self) -> tuple:
        # A spare's libraries read the environment when imported (HF_HOME, CUDA_VISIBLE_DEVICES...),
        # and its log level is fixed at start; a spare started under other conditions is not used.
        # pytest rewrites PYTEST_CURRENT_TEST for every test phase and no library reads it.
        environ = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        return self._log_level(), environ

    def _ensure_spare(self, engine: str) -> None:
        with self._lock:
            current = self._spares.get(engine)
            if self._closing.is_set() or (current is not None and (current.link is None
                                                                   or current.link.alive())):
                return
            spare = _Spare(engine, self._spare_conditions())
            self._spares[engine] = spare
        if current is not None:
            logger.warning("the spare %s runner had stopped: %s", engine, describe_exit(current.link.exitcode))
            self._discard(current)
        try:
            link = self._spawn(f"beautyai-spare-{engine}", None, engine)
        except Exception as exc:
            with self._lock:
                if self._spares.get(engine) is spare:
                    del self._spares[engine]
            logger.warning("could not start a spare %s runner: %s", engine, exc.__class__.__name__)
            return
        with self._lock:
            spare.link = link
            kept = self._spares.get(engine) is spare
        if kept:
            logger.info("started a spare %s runner (pid %d)", engine, link.pid)
        else:
            # stop_spares() or a load emptied the slot while this process was starting.
            self._discard(spare)

    def _take_spare(self, spec: LoadSpec) -> _Spare | None:
        """The spare for `spec`'s engine, told to load `spec`; None when there is none fit to use."""
        with self._lock:
            spare = self._spares.pop(spec.engine, None)
        if spare is None or spare.link is None:
            return None
        if spare.conditions != self._spare_conditions():
            logger.info("not using the spare %s runner: the environment or log level changed since it started",
                        spec.engine)
            self._discard(spare)
            return None
        idle_mb = process_memory_mb(spare.link.pid)
        # A dead spare's pipe refuses the message (its end is closed), so a spare killed at any
        # point before this falls back to a fresh runner.
        if not spare.link.alive() or not self._send_load(spare, spec):
            logger.warning("the spare %s runner had stopped: %s", spec.engine, describe_exit(spare.link.exitcode))
            self._discard(spare)
            return None
        logger.info("loading %s in the spare %s runner (pid %d, %.0f MiB before the load)",
                    spec.name, spec.engine, spare.link.pid, idle_mb)
        return spare

    @staticmethod
    def _send_load(spare: _Spare, spec: LoadSpec) -> bool:
        try:
            spare.link.send(p.Load(spec=asdict(spec)))
            return True
        except (OSError, EOFError, ValueError):
            return False

    def _discard(self, spare: _Spare) -> None:
        self._kill(spare)
        spare.link.close()

    def stop_spares(self) -> None:
        """Stops the idle spares; the next load of each engine starts a fresh runner, then a new spare."""
        with self._lock:
            spares = [s for s in self._spares.values() if s.link is not None]
            self._spares.clear()
        for spare in spares:
            self._discard(spare)

    def spare_pids(self) -> dict[str, int]:
        """Engine -> pid of its idle spare runner. Spares are not models: loaded() never lists them."""
        with self._lock:
            return {engine: s.link.pid for engine, s in self._spares.items() if s.link is not None}
