"""GPU figures through NVML, on a fake NVML: this host may have no GPU, the code paths must still be right."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest

from models_app.serving import hardware
from system_app import probes
from tests.envelope import assert_ok

GIB = 1024**3


class FakeNvml:
    """Two GPUs; pid 4242 holds 2 GiB (compute) + 0.5 GiB (graphics) on the first and 1 GiB on the second;
    one process NVML cannot account."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    devices = [
        {"name": b"NVIDIA H100 80GB HBM3", "total": 80 * GIB, "used": 20 * GIB, "util": 50, "temp": 61,
         "procs": [SimpleNamespace(pid=4242, usedGpuMemory=2 * GIB), SimpleNamespace(pid=7, usedGpuMemory=None)]},
        {"name": "NVIDIA H100 80GB HBM3", "total": 80 * GIB, "used": 60 * GIB, "util": 100, "temp": 70,
         "procs": [SimpleNamespace(pid=4242, usedGpuMemory=1 * GIB)]},
    ]

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices[index]

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=handle["total"], used=handle["used"], free=handle["total"] - handle["used"])

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=handle["util"], memory=0)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return handle["temp"]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return handle["procs"]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return [SimpleNamespace(pid=4242, usedGpuMemory=GIB // 2)] if handle is self.devices[0] else []


@pytest.fixture
def fake_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    monkeypatch.setattr(hardware, "_nvml_ready", None)


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as without nvidia-ml-py
    monkeypatch.setattr(hardware, "_nvml_ready", None)


def test_every_gpu_is_read_and_summed_up(fake_nvml):
    readings = probes.gpus()
    assert [(r.index, r.name, r.utilization_percent, r.temperature_c) for r in readings] == [
        (0, "NVIDIA H100 80GB HBM3", 50.0, 61.0), (1, "NVIDIA H100 80GB HBM3", 100.0, 70.0)]
    summary = probes.gpu_summary(readings)
    assert (summary.available, summary.count, summary.name) == (True, 2, "NVIDIA H100 80GB HBM3")
    assert (summary.memory_total_bytes, summary.memory_used_bytes) == (160 * GIB, 80 * GIB)
    assert (summary.utilization_percent, summary.temperature_c, summary.memory_percent) == (75.0, 70.0, 50.0)


def test_gpu_memory_is_summed_per_process_over_devices(fake_nvml):
    assert probes.gpu_memory_by_pid() == {4242: 3.5 * GIB}


def test_a_runners_gpu_memory_counts_the_contexts_system_memory_counts(fake_nvml):
    # The manager's budget and /system/memory once read NVML separately, one without graphics contexts.
    assert hardware.gpu_memory_mb(4242) * hardware.MIB == probes.gpu_memory_by_pid()[4242] == 3.5 * GIB


def test_without_nvml_there_are_no_gpus_and_every_figure_is_zero(no_nvml):
    assert probes.gpus() == [] and probes.gpu_memory_by_pid() == {}
    summary = probes.gpu_summary([])
    assert (summary.available, summary.count, summary.name, summary.memory_percent) == (False, 0, None, 0.0)
    assert summary.utilization_percent == summary.temperature_c == summary.memory_total_bytes == 0


@pytest.mark.django_db
def test_status_and_resources_report_the_gpus(api_as, fake_nvml):
    client = api_as("system_status")
    body = assert_ok(client.get("/system/status?detailed=true"))
    assert body["gpu_info"]["gpu_available"] is True and body["gpu_info"]["gpu_count"] == 2
    assert body["gpu_info"]["gpu_memory_used_gb"] == 80.0 and body["gpu_info"]["gpu_utilization_percent"] == 75.0
    assert body["memory_info"]["gpu_memory_gb"] == 160.0
    assert body["gpu_info"]["devices"][1] == {
        "index": 1, "name": "NVIDIA H100 80GB HBM3", "memory_total_gb": 80.0, "memory_used_gb": 60.0,
        "memory_usage_percent": 75.0, "utilization_percent": 100.0, "temperature_c": 70.0}
    gpu = assert_ok(client.get("/system/resources"))["data"]["gpu"]
    assert gpu == {"gpu_available": True, "gpu_count": 2, "usage_percent": 75.0, "memory_usage_percent": 50.0,
                   "temperature_c": 70.0}
    memory = assert_ok(client.get("/system/memory"))["data"]["gpu_memory"]
    assert memory == {"gpu_available": True, "total_gb": 160.0, "available_gb": 80.0, "used_gb": 80.0,
                      "usage_percent": 50.0}


def test_cpu_usage_is_measured_between_two_readings_without_waiting():
    meter = probes.CpuMeter()
    busy_until = time.perf_counter() + 0.2
    while time.perf_counter() < busy_until:
        pass
    value = meter.sample()
    assert 0 < value <= 100 and meter.current() == value and meter.sampled_at is not None
