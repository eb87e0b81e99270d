"""Measurements of this host: psutil for CPU, memory, disk and network; GPUs through the serving
core's NVML reader (models_app/serving/hardware.py), so runners' figures and these agree.
Nothing blocks: CPU usage comes from a meter that the sampler advances, never from
``psutil.cpu_percent(interval=...)``. Without a GPU (or without NVML) the GPU list is empty and the
callers report ``gpu_available: false`` and GPU figures of 0.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from importlib import metadata

import psutil

# GPU devices and per-process GPU memory: one NVML implementation, shared with the serving core.
from models_app.services import GpuReading, gpu_memory_by_pid, gpus  # noqa: F401 - re-exported

GIB = 1024**3
MIB = 1024**2


def gb(value: float) -> float:
    return round(value / GIB, 3)


def mb(value: float) -> float:
    return round(value / MIB, 2)


def percent(part: float, whole: float) -> float:
    return round(part / whole * 100, 2) if whole else 0.0


# CPU ------------------------------------------------------------------------------------------------

def _busy_and_total(times) -> tuple[float, float]:
    # psutil's own accounting: guest time is already inside user/nice, and iowait is idle time.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class CpuMeter:
    """System-wide CPU usage between two readings of ``psutil.cpu_times()``, which never blocks.

    The sampler calls ``sample()`` at each tick; requests read ``current()``: the last sample, or
    before the first one, the usage since this meter was created (process start).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._last = psutil.cpu_times()
        self._latest: float | None = None
        self.sampled_at: float | None = None

    @staticmethod
    def _between(before, after) -> float:
        busy_before, total_before = _busy_and_total(before)
        busy_after, total_after = _busy_and_total(after)
        elapsed = total_after - total_before
        if elapsed <= 0:
            return 0.0
        return round(min(100.0, max(0.0, (busy_after - busy_before) / elapsed * 100)), 2)

    def sample(self) -> float:
        now = psutil.cpu_times()
        with self._lock:
            value = self._between(self._last, now)
            self._last = now
            self._latest = value
            self.sampled_at = time.time()
        return value

    def current(self) -> float:
        with self._lock:
            if self._latest is not None:
                return self._latest
            return self._between(self._last, psutil.cpu_times())


cpu_meter = CpuMeter()


def cpu_frequency_mhz() -> int | None:
    """None where the kernel exposes no frequency (some containers and VMs)."""
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError):
        return None
    return round(freq.current) if freq and freq.current else None


# Processes ---------------------------------------------------------------------------------------

@dataclass
class ProcessMemory:
    rss_bytes: int
    vms_bytes: int


def process_memory(pid: int | None = None) -> ProcessMemory | None:
    """RSS and VMS of ``pid`` (this process by default); None once it has exited."""
    try:
        info = psutil.Process(pid).memory_info()
    except psutil.Error:
        return None
    return ProcessMemory(rss_bytes=info.rss, vms_bytes=info.vms)


# GPUs --------------------------------------------------------------------------------------------

@dataclass
class GpuSummary:
    available: bool
    count: int
    name: str | None
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float
    temperature_c: float

    @property
    def memory_percent(self) -> float:
        return percent(self.memory_used_bytes, self.memory_total_bytes)


def gpu_summary(readings: list[GpuReading]) -> GpuSummary:
    """All GPUs as one: memory summed, utilisation averaged, the hottest temperature."""
    names = sorted({r.name for r in readings})
    return GpuSummary(
        available=bool(readings),
        count=len(readings),
        name=", ".join(names) if names else None,
        memory_total_bytes=sum(r.memory_total_bytes for r in readings),
        memory_used_bytes=sum(r.memory_used_bytes for r in readings),
        utilization_percent=round(sum(r.utilization_percent for r in readings) / len(readings), 2) if readings else 0.0,
        temperature_c=max((r.temperature_c for r in readings), default=0.0),
    )


# Versions ----------------------------------------------------------------------------------------

def package_version(name: str) -> str | None:
    """The installed version from the package metadata, without importing the package (torch takes seconds)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
