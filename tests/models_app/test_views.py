"""Registry routes 1–5, 9, 10: permissions, validation, defaults and the envelope around them."""

from __future__ import annotations

import os

import pytest
from rest_framework.exceptions import ValidationError

from beautyai_site.api.validation import parse
from models_app.models import ModelConfig, ModelDownload
from models_app.serializers import ModelListQuerySerializer, ModelUpdateRequestSerializer
from tests.envelope import assert_error, assert_ok
from tests.system_app.conftest import make_hub_repo

pytestmark = pytest.mark.django_db

NEW_MODEL = {
    "model_name": "gamma",
    "model_config": {"model_id": "org/gamma", "engine": "transformers", "quantization": "8bit", "parameters": {}},
    "set_as_default": False,
}

# (method, path, body, permission) for every route of this issue.
ROUTES = [
    ("get", "/models/", None, "model_read"),
    ("post", "/models/", NEW_MODEL, "model_write"),
    ("get", "/models/alpha", None, "model_read"),
    ("put", "/models/alpha", {"updates": {"description": "x"}}, "model_write"),
    ("delete", "/models/beta", None, "model_delete"),
    ("post", "/models/alpha/validate", None, "model_read"),
    ("post", "/models/default/beta", None, "model_write"),
    ("get", "/models/alpha/status", None, "model_read"),
    ("post", "/models/alpha/unload", None, "model_load"),
]


def call(client, method, path, body=None):
    return getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)


@pytest.mark.parametrize("method,path,body,permission", ROUTES)
def test_every_route_answers_401_without_credentials(anon, registry, method, path, body, permission):
    assert_error(call(anon, method, path, body), 401, "AuthenticationError")


@pytest.mark.parametrize("method,path,body,permission", ROUTES)
def test_every_route_answers_401_with_a_revoked_key(make_user, client_for, registry, method, path, body, permission):
    client = client_for(make_user(permission))
    from accounts.models import APIKey

    APIKey.objects.get(prefix=client.raw_key.split("_")[1]).revoke()
    assert_error(call(client, method, path, body), 401, "AuthenticationError")


@pytest.mark.parametrize("method,path,body,permission", ROUTES)
def test_every_route_answers_401_with_an_expired_key(make_user, registry, method, path, body, permission):
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.test import APIClient

    from accounts.services import create_api_key

    _, raw = create_api_key(user=make_user(permission), expires_at=timezone.now() - timedelta(seconds=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_error(call(client, method, path, body), 401, "AuthenticationError")


@pytest.mark.parametrize("method,path,body,permission", ROUTES)
def test_every_route_answers_403_without_its_permission(api_as, registry, method, path, body, permission):
    others = [p for p in ("model_read", "model_write", "model_delete", "model_load") if p != permission]
    assert_error(call(api_as(*others if permission != "model_read" else ()), method, path, body), 403, "PermissionDeniedError")


@pytest.mark.parametrize("method,path,body,permission", ROUTES)
def test_every_route_succeeds_with_its_permission(api_as, registry, method, path, body, permission):
    response = call(api_as(permission, "model_read"), method, path, body)
    assert_ok(response, 201 if (method, path) == ("post", "/models/") else 200)


def test_it_lists_models_with_live_status_and_total(api_as, registry):
    body = assert_ok(api_as("model_read").get("/models/"))
    assert body["data"] is None
    assert body["total_count"] == 2
    assert [m["model_name"] for m in body["models"]] == ["alpha", "beta"]
    assert body["models"][0] == {
        "model_name": "alpha", "model_id": "org/alpha", "architecture": "causal_lm", "engine": "transformers",
        "quantization": "4bit", "task": "generate", "status": "unloaded", "memory_usage_mb": 0.0,
        "is_default": True, "download_status": "missing",
    }


def test_the_list_costs_the_same_queries_for_two_models_as_for_twelve(api_as, registry):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = api_as("model_read")
    client.get("/models/")  # the key lookup is cached from here on

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert_ok(client.get("/models/"))
        return len(captured.captured_queries)

    two = queries()
    for i in range(10):
        ModelConfig.objects.create(name=f"extra-{i}", model_id=f"org/extra-{i}", engine="transformers")
    # A summary that touched a column the list query leaves out would cost one query per row.
    assert queries() == two


def test_the_list_reads_each_hub_entrys_download_status_inside_its_own_query(api_as, registry):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    ModelDownload.objects.create(model=registry["alpha"], model_name="alpha", repo_id="org/alpha", status="failed")
    ModelDownload.objects.create(model=registry["beta"], model_name="beta", repo_id="org/beta", status="downloading")
    client = api_as("model_read")
    client.get("/models/")  # the key lookup is cached from here on
    with CaptureQueriesContext(connection) as captured:
        body = assert_ok(client.get("/models/"))
    assert {m["model_name"]: m["download_status"] for m in body["models"]} == {"alpha": "failed", "beta": "downloading"}
    # The latest job and the parameters the file check reads come with the page, not in queries of their own.
    apart = [q["sql"] for q in captured.captured_queries
             if "modeldownload" in q["sql"].lower() and "models_app_modelconfig" not in q["sql"].lower()]
    assert apart == []


def test_a_global_reader_s_list_writes_the_key_and_page_sql_only_the_first_time(api_as, registry, monkeypatch):
    from django.db.models.sql.compiler import SQLCompiler

    client = api_as("model_read")
    first = assert_ok(client.get("/models/"))
    written = []
    as_sql = SQLCompiler.as_sql

    def writing(self, *args, **kwargs):
        sql, params = as_sql(self, *args, **kwargs)
        written.append(sql)
        return sql, params

    monkeypatch.setattr(SQLCompiler, "as_sql", writing)
    assert assert_ok(client.get("/models/"))["models"] == first["models"]
    # What is left is the permission check's read of the user's permissions, fresh on every request.
    assert [sql for sql in written if "system_app_apikey" in sql or "models_app_modelconfig" in sql] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "offset=-1", "offset=1.5", "color=red"])
def test_it_refuses_bad_pagination(api_as, registry, query):
    assert_error(api_as("model_read").get(f"/models/?{query}"), 400, "ValidationError")


def test_it_paginates(api_as, registry):
    body = assert_ok(api_as("model_read").get("/models/?limit=1&offset=1"))
    assert [m["model_name"] for m in body["models"]] == ["beta"]
    assert body["total_count"] == 2


def test_object_permission_shows_only_granted_models(make_user, client_for, grant, registry):
    user = make_user()
    grant(user, "model_read", registry["beta"])
    client = client_for(user)
    body = assert_ok(client.get("/models/"))
    assert [m["model_name"] for m in body["models"]] == ["beta"]
    assert body["total_count"] == 1
    assert_ok(client.get("/models/beta"))
    assert_error(client.get("/models/alpha"), 404, "ModelNotFoundError")


def test_object_load_permission_covers_one_model_only(make_user, client_for, grant, registry):
    user = make_user()
    grant(user, "model_read", registry["alpha"])
    grant(user, "model_read", registry["beta"])
    grant(user, "model_load", registry["alpha"])
    client = client_for(user)
    assert_ok(client.post("/models/alpha/unload"))
    assert_error(client.post("/models/beta/unload"), 403, "PermissionDeniedError")


def test_a_model_the_user_cannot_read_answers_404_like_a_missing_one(make_user, client_for, grant, registry):
    user = make_user()
    grant(user, "model_load", registry["alpha"])
    client = client_for(user)
    hidden = assert_error(client.post("/models/beta/unload"), 404, "ModelNotFoundError")
    missing = assert_error(client.post("/models/nope/unload"), 404, "ModelNotFoundError")
    assert hidden["error_message"].replace("beta", "X") == missing["error_message"].replace("nope", "X")


def test_it_adds_a_model_and_can_make_it_default(api_as, registry):
    client = api_as("model_write", "model_read")
    body = assert_ok(client.post("/models/", {**NEW_MODEL, "set_as_default": True}, format="json"), 201)
    assert body["model_name"] == "gamma" and body["data"] is None and "gamma" in body["message"]
    assert list(ModelConfig.objects.filter(is_default=True).values_list("name", flat=True)) == ["gamma"]
    detail = assert_ok(client.get("/models/gamma"))["data"]
    assert detail["model_config"]["quantization"] == "8bit"
    assert detail["status"] == "unloaded" and detail["is_default"] is True


def test_a_duplicate_name_is_a_conflict_and_changes_nothing(api_as, registry):
    before = list(ModelConfig.objects.values())
    assert_error(api_as("model_write").post("/models/", {**NEW_MODEL, "model_name": "alpha"}, format="json"), 409, "ConflictError")
    assert list(ModelConfig.objects.values()) == before


@pytest.mark.parametrize(
    "config_change,field",
    [
        ({"engine": "llama.cpp", "quantization": "awq"}, "quantization"),
        ({"engine": "transformers", "quantization": "Q4_K_M"}, "quantization"),
        ({"engine": "tensorflow"}, "engine"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"max_new_tokens": "10"}, "max_new_tokens"),
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"do_sample": "yes"}, "do_sample"),
        ({"dtype": "float8"}, "dtype"),
        ({"model_id": ""}, "model_id"),
        ({"model_id": "/etc/passwd"}, "model_id"),
        ({"model_id": "../../etc/passwd"}, "model_id"),
        ({"colour": "blue"}, "colour"),
        ({"engine": "openai", "quantization": "none", "parameters": {}}, "parameters"),
        ({"parameters": {"keep_alive_seconds": -7}}, "parameters"),
    ],
)
def test_it_refuses_an_invalid_configuration_naming_the_field(api_as, registry, config_change, field):
    body = {**NEW_MODEL, "model_config": {**NEW_MODEL["model_config"], **config_change}}
    error = assert_error(api_as("model_write").post("/models/", body, format="json"), 400, "ValidationError")
    assert field in error["error_message"]
    assert not ModelConfig.objects.filter(name="gamma").exists()


@pytest.mark.parametrize("name,value", [
    ("keep_alive_seconds", 1e300), ("keep_alive_seconds", 30 * 24 * 3600 + 1), ("keep_alive_seconds", "60"),
    ("n_ctx", 10**12), ("max_model_len", 2**40), ("n_gpu_layers", 10**9), ("n_threads", 100_000),
    ("max_batch_size", 10**6), ("tensor_parallel_size", 10**6), ("pipeline_parallel_size", 10**6),
    ("max_queue", 10**9), ("max_queue", -1), ("seed", 2**40), ("timeout_s", 1e300), ("timeout_s", 0),
    ("gpu_memory_utilization", 5), ("num_gpus", -0.5), ("num_gpus", 1025), ("num_gpus", "1"), ("num_gpus", True),
])
def test_it_refuses_a_duration_size_or_count_beyond_its_bound_naming_it(api_as, registry, name, value):
    client = api_as("model_write")
    body = {**NEW_MODEL, "model_config": {**NEW_MODEL["model_config"], "parameters": {name: value}}}
    error = assert_error(client.post("/models/", body, format="json"), 400, "ValidationError")
    assert error["error_message"].startswith(f"parameters: {name} must be")
    assert not ModelConfig.objects.filter(name="gamma").exists()
    update = {"updates": {"parameters": {name: value}}}
    assert_error(client.put("/models/alpha", update, format="json"), 400, "ValidationError")
    assert ModelConfig.objects.get(name="alpha").parameters == {}


def test_the_bounds_themselves_are_accepted(api_as, registry):
    from models_app.runtime import load_spec

    resources = {"node:10.0.0.5": 0.001, **{f"gpu_kind_{i}": 1_000_000 for i in range(15)}}
    parameters = {"keep_alive_seconds": 30 * 24 * 3600, "n_ctx": 1_048_576, "max_queue": 10_000, "seed": -1,
                  "num_gpus": 0.5, "ray_resources": resources}
    body = {**NEW_MODEL, "model_config": {**NEW_MODEL["model_config"], "parameters": parameters}}
    assert_ok(api_as("model_write").post("/models/", body, format="json"), 201)
    assert ModelConfig.objects.get(name="gamma").parameters == parameters
    # The Ray placement reads them from the load spec, as given.
    assert load_spec(ModelConfig.objects.get(name="gamma")).parameters == parameters


@pytest.mark.parametrize("resources,message", [
    ([["gpu_a100", 1]], "ray_resources must be an object"),
    ("gpu_a100", "ray_resources must be an object"),
    ({f"kind_{i}": 1 for i in range(17)}, "ray_resources takes at most 16"),
    ({"": 1}, "ray_resources names are 1 to 64 characters"),
    ({"x" * 65: 1}, "ray_resources names are 1 to 64 characters"),
    ({"gpu a100": 1}, "ray_resources names are 1 to 64 characters"),
    ({"gpu_a100\n": 1}, "ray_resources names are 1 to 64 characters"),
    ({"GPU": 1}, "ray_resources.GPU is Ray's own GPU count: use num_gpus"),
    ({"CPU": 2}, "ray_resources.CPU is one of Ray's own resources"),
    ({"memory": 2**30}, "ray_resources.memory is one of Ray's own resources"),
    ({"object_store_memory": 2**30}, "ray_resources.object_store_memory is one of Ray's own resources"),
    ({"gpu_a100": 0}, "ray_resources.gpu_a100 must be a number above 0 and at most 1000000"),
    ({"gpu_a100": -1}, "ray_resources.gpu_a100 must be a number above 0"),
    ({"gpu_a100": 1_000_001}, "ray_resources.gpu_a100 must be a number above 0"),
    ({"gpu_a100": "1"}, "ray_resources.gpu_a100 must be a number above 0"),
    ({"gpu_a100": True}, "ray_resources.gpu_a100 must be a number above 0"),
    ({"gpu_a100": None}, "ray_resources.gpu_a100 must be a number above 0"),
])
def test_it_refuses_ray_resources_ray_could_not_schedule_naming_the_resource(api_as, registry, resources, message):
    client = api_as("model_write")
    parameters = {"ray_resources": resources}
    body = {**NEW_MODEL, "model_config": {**NEW_MODEL["model_config"], "parameters": parameters}}
    error = assert_error(client.post("/models/", body, format="json"), 400, "ValidationError")
    assert error["error_message"].startswith(f"parameters: {message}")
    assert not ModelConfig.objects.filter(name="gamma").exists()
    error = assert_error(client.put("/models/alpha", {"updates": {"parameters": parameters}}, format="json"),
                         400, "ValidationError")
    assert error["error_message"].startswith(f"parameters: {message}")
    assert ModelConfig.objects.get(name="alpha").parameters == {}


@pytest.mark.parametrize("name", ["default", "Default", "DEFAULT"])
def test_it_refuses_a_name_that_is_a_route_segment(api_as, registry, name):
    client = api_as("model_write", "model_read")
    response = client.post("/models/", {**NEW_MODEL, "model_name": name}, format="json")
    error = assert_error(response, 400, "ValidationError")
    assert error["error_message"].startswith("model_name: ") and "route segment" in error["error_message"]
    assert "model_name" in error["error_details"]["fields"]
    assert not ModelConfig.objects.filter(name__iexact="default").exists()
    assert assert_ok(client.post("/models/default/beta"))["data"]["model_name"] == "beta"


def test_every_literal_segment_under_models_is_a_reserved_name():
    from models_app.models import RESERVED_MODEL_NAMES
    from models_app.urls import urlpatterns

    second_segments = {str(p.pattern).split("/")[1] for p in urlpatterns if str(p.pattern).count("/") >= 2}
    assert {s for s in second_segments if not s.startswith("<")} == RESERVED_MODEL_NAMES


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "x" * 129, "..", "ümlaut"])
def test_it_refuses_a_bad_model_name(api_as, registry, name):
    body = {**NEW_MODEL, "model_name": name}
    error = assert_error(api_as("model_write").post("/models/", body, format="json"), 400, "ValidationError")
    assert "model_name" in error["error_message"]


def test_only_admins_may_point_a_model_at_a_remote_url(api_as, registry):
    body = {**NEW_MODEL, "model_config": {"model_id": "m", "engine": "openai", "parameters": {"base_url": "http://127.0.0.1:9/v1"}}}
    assert_error(api_as("model_write").post("/models/", body, format="json"), 403, "PermissionDeniedError")
    assert_ok(api_as("model_write", "admin").post("/models/", body, format="json"), 201)


@pytest.mark.parametrize("variable", ["DJANGO_SECRET_KEY", "DATABASE_URL", "HOME", "BEAUTYAI_REMOTE_KEY_"])
def test_it_refuses_an_api_key_env_without_the_documented_prefix(api_as, registry, variable):
    parameters = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": variable}
    body = {**NEW_MODEL, "model_config": {"model_id": "m", "engine": "openai", "parameters": parameters}}
    error = assert_error(api_as("model_write", "admin").post("/models/", body, format="json"), 400, "ValidationError")
    assert "api_key_env" in error["error_message"] and "BEAUTYAI_REMOTE_KEY_" in error["error_message"]
    assert not ModelConfig.objects.filter(name="gamma").exists()


def test_only_admins_may_change_which_key_a_remote_model_sends(api_as, registry):
    remote = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "BEAUTYAI_REMOTE_KEY_A"}
    ModelConfig.objects.create(name="remote", model_id="m", engine="openai", parameters=remote)
    same = {"updates": {"parameters": remote, "description": "kept"}}
    assert_ok(api_as("model_write").put("/models/remote", same, format="json"))
    other = {"updates": {"parameters": {**remote, "api_key_env": "BEAUTYAI_REMOTE_KEY_B"}}}
    assert_error(api_as("model_write").put("/models/remote", other, format="json"), 403, "PermissionDeniedError")
    assert ModelConfig.objects.get(name="remote").parameters == remote


def test_update_applies_partial_changes_and_reports_them(api_as, registry):
    client = api_as("model_write")
    data = assert_ok(client.put("/models/alpha", {"updates": {"temperature": 0.3, "max_new_tokens": 64}}, format="json"))["data"]
    assert sorted(data["updated_fields"]) == ["max_new_tokens", "temperature"]
    assert data["reload_required"] is False  # not loaded
    registry["alpha"].refresh_from_db()
    assert (registry["alpha"].temperature, registry["alpha"].max_new_tokens, registry["alpha"].quantization) == (0.3, 64, "4bit")


def test_update_refuses_a_combination_that_becomes_invalid(api_as, registry):
    error = assert_error(api_as("model_write").put("/models/beta", {"updates": {"quantization": "awq"}}, format="json"), 400, "ValidationError")
    assert "quantization" in error["error_message"]
    registry["beta"].refresh_from_db()
    assert registry["beta"].quantization == "Q4_K_M"


def test_update_of_a_missing_model_is_404(api_as, registry):
    assert_error(api_as("model_write").put("/models/nope", {"updates": {}}, format="json"), 404, "ModelNotFoundError")


def test_set_default_keeps_exactly_one_default(api_as, registry):
    client = api_as("model_write")
    data = assert_ok(client.post("/models/default/beta"))["data"]
    assert data == {"model_name": "beta", "is_default": True, "previous_default": "alpha"}
    assert list(ModelConfig.objects.filter(is_default=True).values_list("name", flat=True)) == ["beta"]
    assert_ok(client.put("/models/alpha", {"updates": {}, "set_as_default": True}, format="json"))
    assert list(ModelConfig.objects.filter(is_default=True).values_list("name", flat=True)) == ["alpha"]


def test_deleting_the_default_hands_the_flag_to_another_model(api_as, registry):
    data = assert_ok(api_as("model_delete").delete("/models/alpha"))["data"]
    assert data["new_default"] == "beta"
    assert list(ModelConfig.objects.filter(is_default=True).values_list("name", flat=True)) == ["beta"]


def test_delete_refuses_a_bad_clear_cache_flag(api_as, registry):
    assert_error(api_as("model_delete").delete("/models/beta?clear_cache=maybe"), 400, "ValidationError")
    assert ModelConfig.objects.filter(name="beta").exists()


def test_delete_with_clear_cache_removes_the_models_repo_and_no_other(api_as, registry, settings, tmp_path):
    settings.HF_HOME = tmp_path / "hf"
    beta = make_hub_repo(tmp_path / "hf" / "hub", "org/beta", {"model.gguf": b"GGUF" + b"\0" * 4096})
    other = make_hub_repo(tmp_path / "hf" / "hub", "org/alpha", {"config.json": b"{}"})
    data = assert_ok(api_as("model_delete").delete("/models/beta?clear_cache=true"))["data"]
    assert data["cache_cleared_bytes"] >= 4100 and not beta.exists() and other.exists()


def test_delete_with_clear_cache_never_follows_a_symlinked_repo_folder(api_as, registry, settings, tmp_path):
    settings.HF_HOME = tmp_path / "hf"
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    elsewhere = make_hub_repo(tmp_path / "elsewhere", "org/beta", {"model.gguf": b"precious"})
    os.symlink(elsewhere, tmp_path / "hf" / "hub" / elsewhere.name)
    data = assert_ok(api_as("model_delete").delete("/models/beta?clear_cache=true"))["data"]
    assert data["cache_cleared_bytes"] == 0 and (elsewhere / "blobs").is_dir()


def test_delete_refuses_a_model_being_downloaded_and_changes_nothing(api_as, registry):
    ModelDownload.objects.create(model=registry["beta"], model_name="beta", repo_id="org/beta",
                                 status=ModelDownload.DOWNLOADING)
    assert_error(api_as("model_delete").delete("/models/beta"), 409, "ConflictError")
    assert ModelConfig.objects.filter(name="beta").exists() and ModelDownload.objects.filter(model_name="beta").exists()


def test_validate_reports_configuration_problems(api_as, registry):
    ModelConfig.objects.filter(name="beta").update(quantization="awq")  # bypasses the API's checks
    data = assert_ok(api_as("model_read").post("/models/beta/validate"))["data"]
    assert data["valid"] is False
    assert any("quantization" in e for e in data["errors"])


def test_parsing_no_input_gives_the_defaults_each_time_as_a_fresh_copy():
    assert parse(ModelListQuerySerializer, {}) == {"limit": 100, "offset": 0}
    first = parse(ModelUpdateRequestSerializer, {})
    first["updates"]["engine"] = "llama.cpp"
    assert parse(ModelUpdateRequestSerializer, {}) == {"updates": {}, "set_as_default": False}


@pytest.mark.parametrize("empty", [[], "", None, 0])
def test_parsing_an_empty_non_object_is_still_refused(empty):
    with pytest.raises(ValidationError):
        parse(ModelUpdateRequestSerializer, empty)
