"""The nine /system routes and the health probes: permissions, fields against psutil, validation."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

import django
import psutil
import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from models_app import runtime
from models_app.bootstrap import BUNDLED_LLAMA_CPP
from system_app import probes
from system_app.models import AuditEvent
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db

GIB = 1024**3
MIB = 1024**2

# (method, path, permission) for the nine routes of the contract.
ROUTES = [
    ("get", "/system/status", "system_status"),
    ("get", "/system/memory", "system_status"),
    ("post", "/system/memory/clear", "cache_clear"),
    ("get", "/system/cache", "system_status"),
    ("post", "/system/cache/clear", "cache_clear"),
    ("get", "/system/resources", "system_status"),
    ("get", "/system/performance", "system_status"),
    ("post", "/system/restart", "admin"),
    ("get", "/system/logs", "admin"),
]


def close(actual: float, expected: float, tolerance: float) -> bool:
    return abs(actual - expected) <= tolerance * expected


@pytest.mark.parametrize("method,path,permission", ROUTES)
def test_every_system_route_answers_401_without_a_key(anon, method, path, permission):
    assert_error(getattr(anon, method)(path), 401, "AuthenticationError")


@pytest.mark.parametrize("method,path,permission", ROUTES)
def test_every_system_route_answers_403_without_its_permission(api_as, method, path, permission):
    others = {"system_status", "cache_clear", "admin", "model_read", "chat"} - {permission}
    assert_error(getattr(api_as(*others), method)(path), 403, "PermissionDeniedError")


@pytest.mark.parametrize("method,path,permission", ROUTES)
def test_every_system_route_answers_200_with_its_permission(api_as, hf_home, method, path, permission):
    assert_ok(getattr(api_as(permission), method)(path))


def test_status_reports_versions_memory_gpu_and_models_from_the_host(api_as, registry):
    body = assert_ok(api_as("system_status", "model_read").get("/system/status"))
    memory = psutil.virtual_memory()
    assert body["data"] is None
    system = body["system_info"]
    assert system["python_version"] == platform.python_version()
    assert system["platform"] == platform.platform()
    assert system["framework_version"] == metadata.version("beautyai")
    assert system["django_version"] == django.get_version()
    assert system["drf_version"] == metadata.version("djangorestframework")
    assert close(body["memory_info"]["total_memory_gb"] * GIB, memory.total, 0.01)
    assert close(body["memory_info"]["available_memory_gb"] * GIB, psutil.virtual_memory().available, 0.05)
    assert 0 <= body["memory_info"]["memory_usage_percent"] <= 100
    gpus = probes.gpus()
    assert body["gpu_info"]["gpu_available"] is bool(gpus)
    assert body["gpu_info"]["gpu_count"] == len(gpus)
    if not gpus:
        assert body["gpu_info"]["gpu_name"] is None
        assert body["gpu_info"]["gpu_memory_used_gb"] == body["gpu_info"]["gpu_utilization_percent"] == 0
        assert body["memory_info"]["gpu_memory_gb"] == 0
    assert body["model_info"]["default_model"] == "alpha"
    assert "devices" not in body["gpu_info"] and "runners" not in body["model_info"]


def test_status_and_memory_report_each_runner_by_pid_when_a_model_is_loaded(api_as, load_model):
    load_model()
    pid = runtime.status(BUNDLED_LLAMA_CPP)["pid"]
    client = api_as("system_status", "model_read")
    body = assert_ok(client.get("/system/status?detailed=true"))
    assert body["model_info"]["loaded_models"] == [BUNDLED_LLAMA_CPP]
    assert body["model_info"]["total_loaded"] == 1
    assert body["model_info"]["default_model"] == BUNDLED_LLAMA_CPP
    assert len(body["gpu_info"]["devices"]) == len(probes.gpus())
    [runner] = body["model_info"]["runners"]
    assert runner["pid"] == pid and runner["status"] == "loaded"
    assert close(runner["rss_mb"] * MIB, psutil.Process(pid).memory_info().rss, 0.1)

    data = assert_ok(client.get("/system/memory"))["data"]
    [runner] = data["runners"]
    assert runner["model_name"] == BUNDLED_LLAMA_CPP and runner["pid"] == pid
    assert runner["memory_usage_mb"] >= runner["rss_mb"] > 50


def test_memory_reports_system_gpu_and_this_process_like_psutil(api_as):
    data = assert_ok(api_as("system_status").get("/system/memory"))["data"]
    memory = psutil.virtual_memory()
    system = data["system_memory"]
    assert close(system["total_gb"] * GIB, memory.total, 0.01)
    assert close(system["used_gb"] + system["available_gb"], system["total_gb"], 0.01)
    assert close(system["usage_percent"], memory.percent, 0.1)
    process = data["process_memory"]
    assert process["pid"] == os.getpid()
    assert close(process["rss_mb"] * MIB, psutil.Process().memory_info().rss, 0.1)
    assert process["vms_mb"] >= process["rss_mb"]
    gpu = data["gpu_memory"]
    if not probes.gpus():
        assert gpu == {"gpu_available": False, "total_gb": 0.0, "available_gb": 0.0, "used_gb": 0.0, "usage_percent": 0.0}
    assert data["runners"] == []


def test_resources_report_cpu_memory_gpu_disk_and_network_without_blocking(api_as, settings):
    client = api_as("system_status")
    sent_before = psutil.net_io_counters().bytes_sent
    started = time.perf_counter()
    data = assert_ok(client.get("/system/resources"))["data"]
    assert time.perf_counter() - started < 0.5  # psutil.cpu_percent(interval=1) alone would take a second
    assert 0 <= data["cpu"]["usage_percent"] <= 100
    assert data["cpu"]["cores"] == psutil.cpu_count(logical=True)
    # The frequency moves from one reading to the next; it is there exactly when psutil has one.
    assert (data["cpu"]["frequency_mhz"] is None) is (probes.cpu_frequency_mhz() is None)
    assert close(data["memory"]["total_gb"] * GIB, psutil.virtual_memory().total, 0.01)
    disk = psutil.disk_usage(str(settings.DATA_DIR))
    assert close(data["disk"]["total_gb"] * GIB, disk.total, 0.01)
    assert 0 <= data["disk"]["usage_percent"] <= 100
    assert data["network"]["bytes_sent"] >= sent_before
    assert data["network"]["bytes_received"] > 0
    if not probes.gpus():
        assert data["gpu"] == {"gpu_available": False, "gpu_count": 0, "usage_percent": 0.0,
                               "memory_usage_percent": 0.0, "temperature_c": 0.0}


def test_resources_report_the_cpu_figure_of_the_last_sample(api_as):
    value = probes.cpu_meter.sample()
    data = assert_ok(api_as("system_status").get("/system/resources"))["data"]
    assert data["cpu"]["usage_percent"] == value
    assert data["cpu"]["sampled_at"].endswith("Z")


@pytest.mark.parametrize("query", ["detailed=maybe", "detailed=2", "unknown=1"])
def test_status_refuses_a_bad_or_unknown_query_parameter(api_as, query):
    body = assert_error(api_as("system_status").get(f"/system/status?{query}"), 400, "ValidationError")
    assert query.split("=")[0] in body["error_message"]


@pytest.mark.parametrize("path", ["/system/memory?x=1", "/system/resources?x=1", "/system/memory/clear?force=yes"])
def test_parameterless_routes_refuse_unknown_or_bad_parameters(api_as, path):
    client = api_as("system_status", "cache_clear")
    response = client.post(path) if "clear" in path else client.get(path)
    assert_error(response, 400, "ValidationError")


def test_healthz_answers_ok_without_a_key_and_without_details(anon):
    body = assert_ok(anon.get("/healthz"))
    assert body["data"] == {"status": "ok"}
    assert not AuditEvent.objects.exists()


def test_healthz_ignores_a_bad_key_instead_of_answering_401(anon):
    anon.credentials(HTTP_AUTHORIZATION="Bearer bai_00000000_not-a-key")
    assert_ok(anon.get("/healthz"))
    assert not AuditEvent.objects.exists()


def test_readyz_lists_its_checks_when_ready(anon, settings):
    settings.REDIS_URL = ""
    body = assert_ok(anon.get("/readyz"))
    assert body["data"] == {"status": "ready", "checks": {
        "database": "ok", "migrations": "ok", "channel_layer": "not_configured"}}


def test_readyz_checks_redis_when_a_channel_layer_is_configured(anon, settings):
    # Redis runs wherever the suite runs (this machine, CI's .ci/run); a missing one is a failure.
    settings.REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    assert assert_ok(anon.get("/readyz"))["data"]["checks"]["channel_layer"] == "ok"


def test_readyz_answers_503_naming_an_unreachable_channel_layer(anon, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    body = assert_error(anon.get("/readyz"), 503, "ServiceUnavailableError")
    assert body["error_details"]["failed"] == ["channel_layer"]
    assert body["error_details"]["checks"]["database"] == "ok"


def test_readyz_answers_503_while_a_migration_is_unapplied(anon, settings):
    settings.REDIS_URL = ""
    MigrationRecorder(connection).migration_qs.filter(app="system_app", name="0002_metrics_samples_logs").delete()
    body = assert_error(anon.get("/readyz"), 503, "ServiceUnavailableError")
    assert body["error_details"]["failed"] == ["migrations"]
