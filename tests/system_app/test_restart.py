"""POST /system/restart and POST /system/memory/clear against a real runner of the bundled model."""

from __future__ import annotations

import threading

import psutil
import pytest

from models_app import runtime
from models_app.bootstrap import BUNDLED_LLAMA_CPP
from models_app.serving.engines.contract import GenerationParams
from models_app.models import ModelConfig
from system_app.models import AuditEvent
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db

STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]


def generate(max_tokens: int):
    return runtime.get_manager().generate(BUNDLED_LLAMA_CPP, STORY, GenerationParams(max_tokens=max_tokens, temperature=0))


@pytest.fixture
def with_spares(monkeypatch):
    """The process's manager keeping spare runners (the test settings switch them off)."""
    manager = runtime.get_manager()
    monkeypatch.setattr(manager, "spares", True)
    yield manager
    manager.stop_spares()


def test_restart_stops_and_reloads_a_loaded_model_in_a_new_runner(api_as, with_spares, load_model):
    load_model()
    old_pid = runtime.status(BUNDLED_LLAMA_CPP)["pid"]
    old_spares = set(runtime.get_manager().spare_pids().values())
    assert old_spares
    data = assert_ok(api_as("admin").post("/system/restart"))["data"]
    state = runtime.status(BUNDLED_LLAMA_CPP)
    assert state["status"] == "loaded" and state["pid"] not in (None, old_pid)
    # Spares hold the libraries imported before the restart: none of them is used or kept.
    assert state["pid"] not in old_spares and not old_spares & set(runtime.get_manager().spare_pids().values())
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in old_spares)
    assert data["models_stopped"] == [BUNDLED_LLAMA_CPP]
    assert data["models_reloaded"] == [{"model_name": BUNDLED_LLAMA_CPP, "pid": state["pid"],
                                        "load_time_seconds": state["load_time_seconds"]}]
    assert data["models_failed"] == [] and data["drained_requests"] == data["cancelled_requests"] == 0
    assert data["registry_models"] == 1 and data["duration_seconds"] > 0
    assert runtime.accepting_generations()
    assert AuditEvent.objects.filter(route="/system/restart", status_code=200).exists()


def test_restart_waits_for_a_running_generation_and_refuses_new_ones_meanwhile(api_as, load_model):
    load_model()
    admin = api_as("admin")
    handle = generate(48)
    seen: dict = {}

    def consume():
        seen["events"] = [event.kind for event in handle]
        seen["accepting_at_end"] = runtime.accepting_generations()

    consumer = threading.Thread(target=consume)
    consumer.start()
    data = assert_ok(admin.post("/system/restart"))["data"]
    consumer.join(10)
    assert seen["events"][-1] == "done" and "delta" in seen["events"]
    assert seen["accepting_at_end"] is False
    assert data["drained_requests"] == 1 and data["cancelled_requests"] == 0
    assert runtime.is_loaded(BUNDLED_LLAMA_CPP) and runtime.accepting_generations()


def test_restart_with_force_cancels_running_generations(api_as, load_model):
    load_model()
    admin = api_as("admin")
    handle = generate(1500)
    data = assert_ok(admin.post("/system/restart?force=true"))["data"]
    events = list(handle)
    assert events[-1].kind == "error" and "cancelled" in events[-1].message
    assert data["cancelled_requests"] == 1 and data["drained_requests"] == 0
    assert [entry["model_name"] for entry in data["models_reloaded"]] == [BUNDLED_LLAMA_CPP]


def test_restart_without_force_gives_up_after_the_drain_timeout_and_stops_nothing(api_as, load_model, settings):
    settings.RESTART_DRAIN_TIMEOUT_SECONDS = 0.2
    load_model()
    pid = runtime.status(BUNDLED_LLAMA_CPP)["pid"]
    admin = api_as("admin")
    handle = generate(1500)
    try:
        body = assert_error(admin.post("/system/restart"), 409, "ConflictError")
        assert body["error_details"] == {"in_flight_requests": 1, "drain_timeout_seconds": 0.2}
        assert runtime.status(BUNDLED_LLAMA_CPP)["pid"] == pid and runtime.accepting_generations()
    finally:
        handle.cancel()
        list(handle)


def test_a_model_removed_from_the_registry_meanwhile_is_reported_as_failed(api_as, load_model):
    load_model()
    ModelConfig.objects.filter(name=BUNDLED_LLAMA_CPP).delete()
    data = assert_ok(api_as("admin").post("/system/restart"))["data"]
    assert data["models_stopped"] == [BUNDLED_LLAMA_CPP] and data["models_reloaded"] == []
    assert data["models_failed"] == [{"model_name": BUNDLED_LLAMA_CPP, "error": "no longer in the registry"}]
    assert not runtime.is_loaded(BUNDLED_LLAMA_CPP)


def test_memory_clear_releases_runner_caches_and_keeps_models_loaded(api_as, load_model):
    load_model()
    data = assert_ok(api_as("cache_clear", "model_read").post("/system/memory/clear"))["data"]
    assert data["caches_released"] == [BUNDLED_LLAMA_CPP] and data["models_unloaded"] == []
    assert data["gc_collected_objects"] >= 0
    assert data["memory_before"]["runners_mb"] > 50 and data["memory_after"]["runners_mb"] > 50
    assert runtime.is_loaded(BUNDLED_LLAMA_CPP)


def test_memory_clear_with_force_unloads_idle_models_and_measures_the_memory_freed(api_as, load_model):
    load_model()
    data = assert_ok(api_as("cache_clear", "model_read").post("/system/memory/clear?force=true"))["data"]
    assert data["models_unloaded"] == [BUNDLED_LLAMA_CPP] and data["caches_released"] == []
    assert data["memory_after"]["runners_mb"] == 0
    assert data["freed_mb"]["runners_mb"] == data["memory_before"]["runners_mb"] > 50
    assert not runtime.is_loaded(BUNDLED_LLAMA_CPP)


def test_memory_clear_with_force_keeps_a_model_that_is_generating(api_as, load_model):
    load_model()
    client = api_as("cache_clear", "model_read")
    handle = generate(1500)
    try:
        data = assert_ok(client.post("/system/memory/clear?force=true"))["data"]
        assert data["models_unloaded"] == [] and runtime.is_loaded(BUNDLED_LLAMA_CPP)
    finally:
        handle.cancel()
        list(handle)
