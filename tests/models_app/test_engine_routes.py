"""Routes 5–9 on real runner processes: load, unload, status, validate, delete."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from models_app import runtime, services
from models_app.models import ModelConfig
from tests.conditions import wait_for
from tests.conftest import BUNDLED
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db


@pytest.fixture
def unloaded(bundled_model):
    runtime.unload(bundled_model.name)
    yield bundled_model
    runtime.unload(bundled_model.name)


def test_load_answers_measured_memory_and_load_time(api_as, unloaded):
    body = assert_ok(api_as("model_load").post(f"/models/{BUNDLED}/load", {"force_reload": False}, format="json"))
    assert body["model_name"] == BUNDLED and body["model_id"] == unloaded.model_id and body["data"] is None
    assert body["load_time_seconds"] > 0
    pid = runtime.status(BUNDLED)["pid"]
    rss_mb = psutil.Process(pid).memory_info().rss / 2**20
    assert abs(body["memory_usage_mb"] - rss_mb) / rss_mb < 0.05


def test_status_reports_the_live_runner(api_as, unloaded):
    client = api_as("model_load", "model_read")
    assert assert_ok(client.get(f"/models/{BUNDLED}/status"))["data"]["status"] == "unloaded"
    client.post(f"/models/{BUNDLED}/load")
    data = assert_ok(client.get(f"/models/{BUNDLED}/status"))["data"]
    assert data["status"] == "loaded" and psutil.pid_exists(data["pid"])
    assert data["loaded_at"].endswith("Z") and data["expires_at"] is not None
    assert (data["active_requests"], data["queue_depth"], data["last_error"]) == (0, 0, None)
    listed = assert_ok(client.get("/models/"))["models"]
    assert [m["status"] for m in listed if m["model_name"] == BUNDLED] == ["loaded"]
    assert assert_ok(client.get(f"/models/{BUNDLED}"))["data"]["memory_usage_mb"] > 0


def test_unload_ends_the_runner_process(api_as, unloaded):
    client = api_as("model_load")
    client.post(f"/models/{BUNDLED}/load")
    pid = runtime.status(BUNDLED)["pid"]
    data = assert_ok(client.post(f"/models/{BUNDLED}/unload"))["data"]
    assert data["was_loaded"] is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert assert_ok(client.post(f"/models/{BUNDLED}/unload"))["data"]["was_loaded"] is False


def test_force_reload_starts_a_new_runner(api_as, unloaded):
    client = api_as("model_load")
    client.post(f"/models/{BUNDLED}/load")
    first = runtime.status(BUNDLED)["pid"]
    assert_ok(client.post(f"/models/{BUNDLED}/load", {"force_reload": True}, format="json"))
    assert runtime.status(BUNDLED)["pid"] != first


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_load_requests_start_one_runner(make_user, client_for, unloaded):
    client = client_for(make_user("model_load"))
    pids, answers = [], []

    def load():
        from django.db import connection

        try:
            answers.append(client.post(f"/models/{BUNDLED}/load").status_code)
            pids.append(runtime.status(BUNDLED)["pid"])
        finally:
            connection.close()

    threads = [threading.Thread(target=load) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 20 and len(set(pids)) == 1


@pytest.mark.django_db(transaction=True)
def test_interleaved_loads_and_unloads_leave_status_matching_the_processes(make_user, client_for, unloaded):
    user = make_user("model_load", "model_read")
    clients = [client_for(user) for _ in range(6)]
    errors = []

    def worker(i):
        from django.db import connection

        client = clients[i]
        try:
            for step in range(3):
                path = "load" if (i + step) % 2 == 0 else "unload"
                response = client.post(f"/models/{BUNDLED}/{path}")
                # 409: this load was cancelled by another client's unload, which is a fair answer.
                if response.status_code not in (200, 409):
                    errors.append(response.content)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    state = runtime.status(BUNDLED)
    runners = [p for p in psutil.Process().children(recursive=True)
               if "spawn_main" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE]
    if state["status"] == "loaded":
        assert psutil.pid_exists(state["pid"]) and state["pid"] in [p.pid for p in runners]
    else:
        assert state["status"] in ("unloaded", "error") and state["pid"] is None


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00", os.urandom(4096)], ids=["empty", "truncated", "random"])
def test_a_bad_model_file_answers_model_load_error_and_changes_nothing(api_as, settings, tmp_path, content):
    settings.MODEL_ROOTS = [tmp_path]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    model = services.registry_add(name="bad", config={"model_id": str(bad), "engine": "llama.cpp"})
    before = list(ModelConfig.objects.values())
    error = assert_error(api_as("model_load").post("/models/bad/load"), 500, "ModelLoadError")
    assert "bad" in error["error_message"]
    assert list(ModelConfig.objects.values()) == before
    assert runtime.status(model.name)["status"] in ("unloaded", "error")
    assert runtime.status(model.name)["pid"] is None


def test_a_missing_file_answers_model_load_error(api_as, settings, tmp_path):
    settings.MODEL_ROOTS = [tmp_path]
    services.registry_add(name="gone", config={"model_id": str(tmp_path / "gone.gguf"), "engine": "llama.cpp"})
    assert_error(api_as("model_load").post("/models/gone/load"), 500, "ModelLoadError")


@pytest.mark.parametrize("model_id", ["/etc/hostname", "/tmp/../etc/passwd", "../secrets.gguf"])
def test_a_local_model_id_outside_the_roots_is_refused(api_as, model_id):
    body = {"model_name": "outside", "model_config": {"model_id": model_id, "engine": "llama.cpp"}}
    error = assert_error(api_as("model_write").post("/models/", body, format="json"), 400, "ValidationError")
    assert "model_id" in error["error_message"]
    assert not ModelConfig.objects.filter(name="outside").exists()


@pytest.mark.parametrize("inside", ["secret_key", "beautyai.sqlite3", "cache/api-keys"])
def test_the_data_dir_is_not_a_model_root_only_its_models_folder(api_as, settings, tmp_path, inside):
    settings.DATA_DIR, settings.MODEL_ROOTS = tmp_path, None
    (tmp_path / "secret_key").write_text("not for models")
    client = api_as("model_write")
    body = {"model_name": "leak", "model_config": {"model_id": str(tmp_path / inside), "engine": "llama.cpp"}}
    error = assert_error(client.post("/models/", body, format="json"), 400, "ValidationError")
    assert "model_id" in error["error_message"] and str(tmp_path) not in str(error)
    assert not ModelConfig.objects.filter(name="leak").exists()
    inside_models = str(tmp_path / "models" / "x.gguf")
    body = {"model_name": "kept", "model_config": {"model_id": inside_models, "engine": "llama.cpp"}}
    assert_ok(client.post("/models/", body, format="json"), 201)


def test_validate_reads_the_gguf_header_of_a_llama_cpp_file_whatever_its_name(api_as, registry, settings, tmp_path):
    from models_app.serving.engines.bundled import bundled_gguf_path

    settings.MODEL_ROOTS = [tmp_path]
    (tmp_path / "notes.bin").write_bytes(b"not a gguf at all")
    os.link(bundled_gguf_path(), tmp_path / "weights")
    services.registry_add(name="junk", config={"model_id": str(tmp_path / "notes.bin"), "engine": "llama.cpp"})
    services.registry_add(name="renamed", config={"model_id": str(tmp_path / "weights"), "engine": "llama.cpp",
                                                  "quantization": "Q8_0"})
    client = api_as("model_read")
    junk = assert_ok(client.post("/models/junk/validate"))["data"]
    assert junk["valid"] is False and any("notes.bin has no GGUF header" in e for e in junk["errors"])
    renamed = assert_ok(client.post("/models/renamed/validate"))["data"]
    assert renamed["valid"] is False and any("the file is Q4_1" in e for e in renamed["errors"])


def test_a_symlink_escaping_the_roots_is_refused(api_as, settings, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape.gguf").symlink_to("/etc/hostname")
    settings.MODEL_ROOTS = [root]
    body = {"model_name": "escape", "model_config": {"model_id": str(root / "escape.gguf"), "engine": "llama.cpp"}}
    assert_error(api_as("model_write").post("/models/", body, format="json"), 400, "ValidationError")


def test_validate_checks_the_bundled_model_without_loading_it(api_as, unloaded):
    data = assert_ok(api_as("model_read").post(f"/models/{BUNDLED}/validate"))["data"]
    assert data["valid"] is True, data["errors"]
    assert data["estimated_memory_mb"] > 50
    assert runtime.status(BUNDLED)["status"] == "unloaded"


def test_validate_reports_a_quantization_that_does_not_match_the_file(api_as, unloaded):
    ModelConfig.objects.filter(name=BUNDLED).update(quantization="Q8_0")
    data = assert_ok(api_as("model_read").post(f"/models/{BUNDLED}/validate"))["data"]
    assert data["valid"] is False and any("Q4_1" in e for e in data["errors"])


def test_validate_reports_a_missing_hub_model_and_an_unreadable_file(api_as, registry, settings, tmp_path):
    settings.MODEL_ROOTS = [tmp_path]
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    services.registry_add(name="junk", config={"model_id": str(tmp_path / "junk.gguf"), "engine": "llama.cpp"})
    client = api_as("model_read")
    assert assert_ok(client.post("/models/alpha/validate"))["data"]["valid"] is False
    junk = assert_ok(client.post("/models/junk/validate"))["data"]
    assert junk["valid"] is False and any("GGUF" in e for e in junk["errors"])


def test_a_load_beyond_the_memory_budget_answers_409_with_the_numbers(api_as, unloaded):
    manager = runtime.get_manager()
    budget, manager.memory_budget_mb = manager.memory_budget_mb, 1
    try:
        error = assert_error(api_as("model_load").post(f"/models/{BUNDLED}/load"), 409, "ConflictError")
    finally:
        manager.memory_budget_mb = budget
    assert error["error_details"]["needed_mb"] > 1 and "available_mb" in error["error_details"]
    assert "loaded_models" in error["error_details"]


def test_delete_unloads_the_model_first(api_as, unloaded):
    client = api_as("model_load", "model_delete")
    assert_ok(client.post(f"/models/{BUNDLED}/load"))
    pid = runtime.status(BUNDLED)["pid"]
    data = assert_ok(client.delete(f"/models/{BUNDLED}"))["data"]
    assert data["unloaded"] is True and data["cache_cleared_bytes"] == 0
    wait_for(lambda: runner_gone(pid), timeout=10, message="the runner outlived the delete")


def runner_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_update_of_a_loaded_model_says_a_reload_is_needed(api_as, unloaded):
    client = api_as("model_load", "model_write")
    client.post(f"/models/{BUNDLED}/load")
    data = assert_ok(client.put(f"/models/{BUNDLED}", {"updates": {"parameters": {"n_ctx": 512}}}, format="json"))["data"]
    assert data["reload_required"] is True
    data = assert_ok(client.put(f"/models/{BUNDLED}", {"updates": {"description": "new words"}}, format="json"))["data"]
    assert data["reload_required"] is False


@pytest.mark.django_db(transaction=True)
def test_other_requests_are_answered_while_a_model_loads(live_server_url, make_user, client_for):
    """The transformers engine takes many seconds to load the GGUF; the server keeps answering meanwhile."""
    import httpx

    from models_app.bootstrap import BUNDLED_TRANSFORMERS, bundled_entries

    services.registry_add(name=BUNDLED_TRANSFORMERS, config=bundled_entries()[BUNDLED_TRANSFORMERS])
    headers = {"Authorization": f"Bearer {client_for(make_user('model_load', 'model_read')).raw_key}"}
    result = {}

    def load():
        started = time.monotonic()
        result["load"] = httpx.post(f"{live_server_url}/models/{BUNDLED_TRANSFORMERS}/load", headers=headers, timeout=300)
        result["load_seconds"] = time.monotonic() - started

    def status():
        return httpx.get(f"{live_server_url}/models/{BUNDLED_TRANSFORMERS}/status", headers=headers, timeout=30)

    loader = threading.Thread(target=load)
    loader.start()
    deadline = time.monotonic() + 60
    while status().json()["data"]["status"] != "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    listing = httpx.get(f"{live_server_url}/models/", headers=headers, timeout=30)
    still = status().json()["data"]["status"]
    loader.join()
    assert listing.status_code == 200 and still == "loading"  # answered while the load was under way
    assert result["load"].status_code == 200, result["load"].text
    httpx.post(f"{live_server_url}/models/{BUNDLED_TRANSFORMERS}/unload", headers=headers, timeout=60)


@pytest.mark.parametrize("keep_alive", [1e300, "soon"])
def test_a_bad_keep_alive_already_stored_breaks_no_listing_and_not_the_reaper(api_as, unloaded, keep_alive):
    # Written before the registry bounded it, or straight into the database: not through the API.
    ModelConfig.objects.filter(pk=unloaded.pk).update(parameters={**unloaded.parameters,
                                                                  "keep_alive_seconds": keep_alive})
    unloaded.refresh_from_db()
    runtime.load(unloaded)
    client = api_as("model_read", "system_status")
    assert [m["status"] for m in assert_ok(client.get("/models/"))["models"]] == ["loaded"]
    assert assert_ok(client.get(f"/models/{BUNDLED}/status"))["data"]["expires_at"].endswith("Z")
    assert_ok(client.get("/system/status?detailed=true"))
    assert client.get("/metrics").status_code == 200
    assert runtime.get_manager().unload_idle() == []
    assert runtime.status(BUNDLED)["status"] == "loaded"
