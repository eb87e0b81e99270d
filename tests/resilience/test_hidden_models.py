"""A caller who may read one model probes every system route, the metrics and the errors for another's name.

Two real runners, ``visible-a`` (readable by the caller through a per-model grant) and ``hidden-b``
(not), both read from the same hub-cache repo; ``hidden-b`` is the default model. No body the
caller gets may contain ``hidden-b``, and none may contain an absolute path of the server.
"""

from __future__ import annotations

import pytest

from models_app import runtime, services
from models_app.bootstrap import BUNDLED_LLAMA_CPP, bundled_entries
from models_app.serving.engines.bundled import bundled_gguf_path
from system_app.metrics import record_generation
from tests.envelope import INTERNALS, assert_error, assert_ok
from tests.system_app.conftest import make_hub_repo

pytestmark = pytest.mark.django_db

HIDDEN = "hidden-b"
VISIBLE = "visible-a"


@pytest.fixture
def two_loaded_models(settings, tmp_path):
    settings.HF_HOME = tmp_path / "hf"
    repo = make_hub_repo(tmp_path / "hf" / "hub", "test-org/shared", {"model.gguf": bundled_gguf_path()})
    snapshot_file = next((repo / "snapshots").iterdir()) / "model.gguf"
    config = {**bundled_entries()[BUNDLED_LLAMA_CPP], "model_id": str(snapshot_file)}
    models = {name: services.registry_add(name=name, config=config) for name in (HIDDEN, VISIBLE)}
    try:
        for model in models.values():
            runtime.load(model)
        yield models
    finally:
        for name in models:
            runtime.unload(name)


@pytest.fixture
def prober(two_loaded_models, make_user, client_for, grant):
    """A key for a user with system_status and cache_clear, and model_read on visible-a only."""
    user = make_user("system_status", "cache_clear")
    grant(user, "model_read", two_loaded_models[VISIBLE])
    return client_for(user)


def assert_hidden(response):
    text = response.content.decode()
    assert HIDDEN not in text, text[:2000]
    for marker in (*INTERNALS, "/tmp/"):
        assert marker not in text, f"{marker!r} leaked"


def test_status_memory_and_metrics_name_only_the_models_the_caller_may_read(prober):
    record_generation(HIDDEN, 7, 12.0)
    record_generation(VISIBLE, 7, 12.0)
    status = prober.get("/system/status?detailed=true")
    assert_hidden(status)
    model_info = assert_ok(status)["model_info"]
    assert model_info["loaded_models"] == [VISIBLE] and model_info["total_loaded"] == 1
    assert model_info["default_model"] is None  # hidden-b is the default
    assert [runner["model_name"] for runner in model_info["runners"]] == [VISIBLE]
    memory = prober.get("/system/memory")
    assert_hidden(memory)
    assert [runner["model_name"] for runner in assert_ok(memory)["data"]["runners"]] == [VISIBLE]
    scrape = prober.get("/metrics")
    assert scrape.status_code == 200
    assert_hidden(scrape)
    assert f'model="{VISIBLE}"' in scrape.content.decode()


def test_the_cache_routes_name_only_readable_models_and_no_server_path(prober):
    cache = prober.get("/system/cache?detailed=true")
    assert_hidden(cache)
    data = assert_ok(cache)["data"]
    assert data["cache_location"] == "$HF_HOME/hub"
    [repo] = data["repos"]
    assert repo["registry_models"] == [VISIBLE] and repo["loaded_models"] == [VISIBLE]
    # Exactly the answer for a name that does not exist: the caller learns nothing about hidden-b.
    unknown = assert_error(prober.post(f"/system/cache/clear?model_name={HIDDEN}"), 404, "ModelNotFoundError")
    assert unknown["error_message"] == f"Model '{HIDDEN}' not found in the registry."
    busy = prober.post(f"/system/cache/clear?model_name={VISIBLE}")
    assert_hidden(busy)
    assert assert_error(busy, 409, "ConflictError")["error_details"] == {"loaded_models": [VISIBLE]}
    everything = prober.post("/system/cache/clear")
    assert_hidden(everything)
    assert assert_ok(everything)["data"]["kept_repos"] == [{"repo_id": "test-org/shared", "loaded_models": [VISIBLE]}]
    assert runtime.is_loaded(HIDDEN) and runtime.is_loaded(VISIBLE)


def test_memory_clear_names_only_readable_models(prober):
    cleared = prober.post("/system/memory/clear")
    assert_hidden(cleared)
    assert assert_ok(cleared)["data"]["caches_released"] == [VISIBLE]


def test_a_load_refused_for_memory_names_only_readable_loaded_models(two_loaded_models, make_user, client_for, grant):
    third = services.registry_add(name="third", config=bundled_entries()[BUNDLED_LLAMA_CPP])
    user = make_user()
    for model in (two_loaded_models[VISIBLE], third):
        grant(user, "model_read", model)
    grant(user, "model_load", third)
    manager = runtime.get_manager()
    budget, manager.memory_budget_mb = manager.memory_budget_mb, 1
    try:
        refused = client_for(user).post("/models/third/load")
    finally:
        manager.memory_budget_mb = budget
    assert_hidden(refused)
    assert assert_error(refused, 409, "ConflictError")["error_details"]["loaded_models"] == [VISIBLE]
    assert not runtime.is_loaded("third")
