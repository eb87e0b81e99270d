"""The resource sampler: a background thread that measures the host every few seconds.

Each tick advances the CPU meter (so /system/resources reads a CPU figure without waiting), keeps
the reading in memory, stores a ResourceSample row and, once in a while, prunes old rows. A
failing database only costs the row: the tick is counted in ``failures`` and the next one
reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import psutil

from system_app import probes

logger = logging.getLogger(__name__)


@dataclass
class Reading:
    taken_at: float
    cpu_percent: float
    memory_percent: float
    gpu_percent: float
    gpu_memory_percent: float


def measure() -> Reading:
    gpu = probes.gpu_summary(probes.gpus())
    return Reading(
        taken_at=time.time(),
        cpu_percent=probes.cpu_meter.sample(),
        memory_percent=psutil.virtual_memory().percent,
        gpu_percent=gpu.utilization_percent,
        gpu_memory_percent=gpu.memory_percent,
    )


class Sampler:
    def __init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.interval_s = 10.0
        self.prune_interval_s = 3600.0
        self.latest: Reading | None = None
        self.written = 0
        self.failures = 0
        self._next_prune = 0.0
        self._failing = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, interval_s: float, prune_interval_s: float) -> None:
        with self._lock:
            if self.running:
                return
            self.interval_s = interval_s
            self.prune_interval_s = prune_interval_s
            self._next_prune = time.monotonic()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="beautyai-sampler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread = self._thread
            self._stop.set()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._thread = None

    def _run(self) -> None:
        from django.db import connection

        try:
            while True:
                self.tick()
                if self._stop.wait(self.interval_s):
                    return
        finally:
            connection.close()

    def tick(self) -> None:
        try:
            reading = measure()
        except Exception:  # a probe failing (a GPU falling off the bus) must not end the thread
            logger.exception("resource measurement failed")
            self.failures += 1
            return
        self.latest = reading
        self._store(reading)

    def _store(self, reading: Reading) -> None:
        from django.db import close_old_connections, connection
        from django.utils import timezone

        from system_app.models import ResourceSample
        from system_app.services import prune_old_rows

        try:
            close_old_connections()
            ResourceSample.objects.create(
                created_at=timezone.now(), cpu_percent=reading.cpu_percent, memory_percent=reading.memory_percent,
                gpu_percent=reading.gpu_percent, gpu_memory_percent=reading.gpu_memory_percent,
            )
            if time.monotonic() >= self._next_prune:
                prune_old_rows()
                self._next_prune = time.monotonic() + self.prune_interval_s
        except Exception as exc:
            self.failures += 1
            if not self._failing:
                logger.warning("resource samples cannot be stored (%s); retrying at every tick", exc.__class__.__name__)
                self._failing = True
            try:
                connection.close()
            except Exception:  # the server is gone; so is the connection
                pass
            return
        self.written += 1
        if self._failing:
            logger.warning("resource samples are stored again")
            self._failing = False


sampler = Sampler()
