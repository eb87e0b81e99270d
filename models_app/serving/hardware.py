"""What a model's runner costs the host: resident memory by psutil, GPU memory and devices by NVML.

The one implementation both the serving core (a runner's memory, the budget) and the system routes
(``/system/*``, the metrics sampler) read, so the figures they show side by side agree. No Django.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

MIB = 1024 * 1024


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


def gpu_memory_mb(pid: int) -> float:
    """GPU memory used by ``pid`` on all devices, in MiB; 0 without a GPU or NVML."""
    return gpu_memory_by_pid().get(pid, 0) / MIB


def process_memory_mb(pid: int | None) -> float:
    """Resident memory of ``pid`` plus its GPU memory, in MiB, measured now."""
    if not pid:
        return 0.0
    import psutil

    try:
        rss = psutil.Process(pid).memory_info().rss / MIB
    except psutil.Error:
        return 0.0
    return rss + gpu_memory_mb(pid)
