"""Measurements of this host: psutil for CPU, memory, disk and network; NVML (nvidia-ml-py) for GPUs.

No Django here. Nothing blocks: CPU usage comes from a meter that the sampler advances, never from
``psutil.cpu_percent(interval=...)``. Without a GPU (or without NVML) the GPU list is empty and the
callers report ``gpu_available: false`` and GPU figures of 0.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from importlib import metadata

import psutil

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
class GpuReading:
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float
    temperature_c: float


_nvml_lock = threading.Lock()
_nvml_ready: bool | None = None


def _nvml():
    """The pynvml module once NVML is initialised, or None without a driver. Call with _nvml_lock held."""
    global _nvml_ready
    if _nvml_ready is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_ready = True
        except Exception:  # no library, no driver, no device: all mean "no GPU" here
            _nvml_ready = False
    if not _nvml_ready:
        return None
    import pynvml

    return pynvml


def gpus() -> list[GpuReading]:
    """One reading per GPU; a device that stops answering is left out rather than failing the request."""
    readings: list[GpuReading] = []
    with _nvml_lock:
        nvml = _nvml()
        if nvml is None:
            return readings
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError:
            return readings
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
                temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            except nvml.NVMLError:
                continue
            readings.append(GpuReading(
                index=index,
                name=name.decode() if isinstance(name, bytes) else str(name),
                memory_total_bytes=int(memory.total),
                memory_used_bytes=int(memory.used),
                utilization_percent=float(utilization.gpu),
                temperature_c=float(temperature),
            ))
    return readings


def gpu_memory_by_pid() -> dict[int, int]:
    """GPU memory in bytes per process id, summed over devices (compute and graphics contexts).

    NVML reports host process ids; inside a container with its own pid namespace they do not match
    and runners then show 0 GPU memory.
    """
    used: dict[int, int] = {}
    with _nvml_lock:
        nvml = _nvml()
        if nvml is None:
            return used
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for lister in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
                    for proc in lister(handle):
                        if proc.usedGpuMemory:  # None where the driver does not account per process
                            used[proc.pid] = used.get(proc.pid, 0) + int(proc.usedGpuMemory)
        except nvml.NVMLError:
            return used
    return used


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
