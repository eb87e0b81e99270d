"""Model downloads from a hub: huggingface_hub's real client against the local hub-compatible server."""

from __future__ import annotations

import json
import threading

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.core.management.base import CommandError

from models_app import downloads, hub as hub_files, runtime, services
from models_app.models import ModelDownload
from tests.conditions import wait_for
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db(transaction=True)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_REPO = "test-org/smollm2-gguf"
SERVED = f"{GGUF_REPO}/{GGUF}"  # the hub server's name for the file
HF_REPO = "test-org/smollm2"
MB = 1_000_000


def gguf_size() -> int:
    from models_app.serving.engines.bundled import bundled_gguf_path

    return bundled_gguf_path().stat().st_size



def job_of(name: str) -> ModelDownload:
    return ModelDownload.objects.filter(model_name=name).first()


def finished(name: str, timeout: float = 120) -> ModelDownload:
    job = wait_for(lambda: (j := job_of(name)) is not None and not j.active and j, timeout, "the download never ended")
    assert downloads.workers.wait_idle(30)
    return job


@pytest.fixture
def hub(hub_server):
    return hub_server(GGUF_REPO)


@pytest.fixture
def gguf_entry(hub):
    return services.registry_add(name="smol-hub", config={
        "model_id": GGUF_REPO, "engine": "llama.cpp", "quantization": "Q4_1", "parameters": {"n_ctx": 512}})


@pytest.fixture
def loader(make_user, client_for):
    return client_for(make_user("model_load", "model_read", "chat"))


def start(client, name="smol-hub", **body):
    return client.post(f"/models/{name}/download", body, format="json")


def test_a_downloaded_model_loads_and_chats(hub, gguf_entry, loader):
    assert assert_ok(loader.get("/models/"))["models"][0]["download_status"] == "missing"
    job = assert_ok(start(loader), 202)["data"]
    assert job["status"] in ("queued", "downloading") and job["bytes_total"] == gguf_size()
    assert finished("smol-hub").status == "done"
    detail = assert_ok(loader.get("/models/smol-hub"))["data"]
    assert detail["download_status"] == "present" and detail["download"]["bytes_done"] == job["bytes_total"]
    assert_ok(loader.post("/models/smol-hub/load", {}, format="json"))
    try:
        reply = assert_ok(loader.post("/inference/chat", {"model_name": "smol-hub", "message": "Name the capital city of France.",
                                                          "generation_config": {"temperature": 0, "max_tokens": 16}},
                                      format="json"))
        assert "Paris" in reply["response"]
    finally:
        runtime.unload("smol-hub")


def test_progress_events_are_monotonic_and_end_with_done(hub, gguf_entry, loader):
    hub.throttle(40 * MB)
    assert_ok(start(loader), 202)
    response = loader.get("/models/smol-hub/download", HTTP_ACCEPT="text/event-stream")
    assert response["Content-Type"].startswith("text/event-stream")

    async def body():
        return b"".join([chunk async for chunk in response.streaming_content])

    lines = async_to_sync(body)().decode().splitlines()
    events = [json.loads(data[len("data: "):]) for kind, data in zip(lines, lines[1:])
              if kind == "event: progress"]
    assert lines[-3:] == ["event: end", "data: {}", ""]
    done = [event["bytes_done"] for event in events]
    assert done == sorted(done) and len(set(done)) >= 3
    assert events[-1]["status"] == "done" and events[-1]["bytes_done"] == events[-1]["bytes_total"]


def test_a_cancelled_download_resumes_where_it_stopped(hub, gguf_entry, loader):
    size = gguf_size()
    hub.throttle(20 * MB)
    assert_ok(start(loader), 202)
    wait_for(lambda: job_of("smol-hub").bytes_done > 10 * MB, message="no progress")
    cancelled = assert_ok(loader.delete("/models/smol-hub/download"))["data"]
    assert cancelled["status"] == "cancelled"
    assert downloads.workers.wait_idle(30)
    first_part = hub.bytes_served[SERVED]
    assert 0 < first_part < size
    assert assert_ok(loader.get("/models/smol-hub"))["data"]["download_status"] == "missing"
    hub.throttle(None)
    assert_ok(start(loader), 202)
    assert finished("smol-hub").status == "done"
    # Resumed with a range, not restarted: about the file's size went over the wire in all.
    assert hub.bytes_served[SERVED] <= size + 2 * MB
    assert any("Range" in headers for _, _, headers in hub.requests)
    assert downloads.files_present(gguf_entry)


def test_a_corrupted_byte_fails_the_job_and_nothing_is_promoted(hub, gguf_entry, loader):
    hub.corrupt(SERVED, 12345)
    assert_ok(start(loader), 202)
    job = finished("smol-hub")
    assert job.status == "failed" and "does not match the hash" in job.error
    assert not downloads.files_present(gguf_entry)
    blobs = hub_files.repo_dir(GGUF_REPO) / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())
    assert assert_ok(loader.get("/models/smol-hub"))["data"]["download_status"] == "failed"
    assert_error(loader.post("/models/smol-hub/load", {}, format="json"), 409, "ConflictError")


def test_too_little_disk_space_is_refused_before_anything_starts(hub, gguf_entry, loader, monkeypatch):
    monkeypatch.setattr(hub_files, "free_bytes", lambda cache=None: 1000)
    body = assert_error(start(loader), 409, "ConflictError")
    assert body["error_details"]["needed_bytes"] == gguf_size()
    assert body["error_details"]["free_bytes"] == 1000
    assert not ModelDownload.objects.exists()


@pytest.mark.parametrize("config, field", [
    ({"model_id": "test-org/no-such-repo", "engine": "llama.cpp", "quantization": "Q4_1"}, "model_id"),
    ({"model_id": GGUF_REPO, "engine": "llama.cpp", "quantization": "Q4_1",
      "parameters": {"filename": "missing.gguf"}}, "parameters.filename"),
    ({"model_id": GGUF_REPO, "engine": "llama.cpp", "quantization": "Q8_0"}, "quantization"),
])
def test_a_missing_repo_or_file_answers_400_naming_the_field(hub, loader, config, field):
    services.registry_add(name="broken", config=config)
    body = assert_error(start(loader, name="broken"), 400, "ValidationError")
    assert body["error_message"].startswith(f"{field}:")
    assert not ModelDownload.objects.exists()


def test_two_users_starting_the_same_download_get_the_same_job(hub, gguf_entry, make_user, client_for):
    hub.throttle(20 * MB)
    clients = [client_for(make_user("model_load", "model_read")) for _ in range(2)]
    answers = [None, None]

    def go(n):
        from django.db import connection

        answers[n] = start(clients[n])
        connection.close()

    threads = [threading.Thread(target=go, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answer.status_code for answer in answers) == [202, 409], [a.content for a in answers]
    ids = {(a.json()["data"] or a.json()["error_details"]["download"])["download_id"] for a in answers}
    assert len(ids) == 1 and ModelDownload.objects.count() == 1
    assert_ok(clients[0].delete("/models/smol-hub/download"))
    assert downloads.workers.wait_idle(30)


def test_a_viewer_cannot_start_a_download_and_a_stranger_does_not_see_the_model(
        hub, gguf_entry, bundled_model, api_as, make_user, client_for, grant):
    assert_error(start(api_as("model_read")), 403, "PermissionDeniedError")
    assert_error(start(api_as("chat")), 403, "PermissionDeniedError")
    loader_of_another_model = make_user()
    grant(loader_of_another_model, "model_load", bundled_model)
    assert_error(start(client_for(loader_of_another_model)), 404, "ModelNotFoundError")
    assert not ModelDownload.objects.exists()


def test_a_local_entry_has_nothing_to_download(hub, bundled_model, loader):
    assert_error(start(loader, name=bundled_model.name), 400, "ValidationError")
    assert assert_ok(loader.get(f"/models/{bundled_model.name}"))["data"]["download_status"] == "present"


def test_loading_a_missing_model_answers_409_and_download_true_downloads_then_loads(hub, gguf_entry, loader):
    body = assert_error(loader.post("/models/smol-hub/load", {}, format="json"), 409, "ConflictError")
    assert body["error_details"]["download_required"] is True
    job = assert_ok(loader.post("/models/smol-hub/load", {"download": True}, format="json"), 202)["data"]
    assert job["load_when_done"] is True
    try:
        assert finished("smol-hub").status == "done"
        assert runtime.status("smol-hub")["status"] == "loaded"
    finally:
        runtime.unload("smol-hub")


def test_a_cache_clear_waits_for_no_download_and_marks_the_model_missing(hub, gguf_entry, make_user, client_for):
    client = client_for(make_user("model_load", "model_read", "system_status", "cache_clear"))
    hub.throttle(20 * MB)
    assert_ok(start(client), 202)
    wait_for(lambda: job_of("smol-hub").bytes_done > 0)
    assert_error(client.post("/system/cache/clear?model_name=smol-hub"), 409, "ConflictError")
    hub.throttle(None)
    assert finished("smol-hub").status == "done"
    listed = assert_ok(client.get("/system/cache?detailed=true"))["data"]
    assert GGUF_REPO in [repo["repo_id"] for repo in listed["repos"]]
    assert_ok(client.post("/system/cache/clear?model_name=smol-hub"))
    assert assert_ok(client.get("/models/smol-hub"))["data"]["download_status"] == "missing"


def test_a_transformers_entry_fetches_weights_config_and_tokenizer_but_no_pickles(hub_server, loader):
    hub_server(HF_REPO)
    services.registry_add(name="smol-hf", config={"model_id": HF_REPO, "engine": "transformers", "dtype": "float32"})
    job = assert_ok(start(loader, name="smol-hf"), 202)["data"]
    fetched = {f["path"] for f in job_of("smol-hf").plan["files"]}
    assert "config.json" in fetched and any(p.endswith(".safetensors") for p in fetched)
    assert "tokenizer_config.json" in fetched and "pytorch_model.bin" not in fetched
    assert job["files_total"] == len(fetched)
    assert finished("smol-hf").status == "done"
    assert assert_ok(loader.get("/models/smol-hf"))["data"]["download_status"] == "present"


def test_pull_model_prints_progress_lines_and_fails_with_a_nonzero_exit(hub, gguf_entry):
    from io import StringIO

    out = StringIO()
    call_command("pull_model", "smol-hub", stdout=out)
    assert "smol-hub: done" in out.getvalue() and "%" in out.getvalue()
    services.registry_add(name="nowhere", config={"model_id": "test-org/no-such-repo", "engine": "llama.cpp",
                                                  "quantization": "Q4_1"})
    with pytest.raises(CommandError) as failure:
        call_command("pull_model", "nowhere", stdout=StringIO())
    assert failure.value.returncode != 0


def test_ctrl_c_during_a_pull_cancels_it_and_keeps_the_partial_file(hub, gguf_entry):
    hub.throttle(20 * MB)

    def interrupt(job):
        if job.bytes_done > 5 * MB:
            raise KeyboardInterrupt

    job = downloads.pull(gguf_entry, on_progress=interrupt)
    assert job.status == "cancelled"
    plan = hub_files.Plan.from_json(job.plan)
    assert 0 < hub_files.partial_bytes(plan) < plan.total_bytes


def test_a_download_survives_a_server_restart_and_resumes_where_it_stopped(hub, gguf_entry, make_user, client_for,
                                                                            tmp_path):
    import httpx

    from tests.servers import start_server, stop_server

    auth = {"Authorization": f"Bearer {client_for(make_user('model_load', 'model_read')).raw_key}"}
    hub.throttle(20 * MB)
    process, url = start_server(tmp_path / "first.log")
    try:
        assert httpx.post(f"{url}/models/smol-hub/download", headers=auth, timeout=30).status_code == 202
        wait_for(lambda: job_of("smol-hub").bytes_done > 10 * MB, message="no progress")
    finally:
        process.kill()
        process.wait()
    assert job_of("smol-hub").status == "downloading"  # left behind by the killed process
    hub.throttle(None)
    # The new server takes the job over at its first request (start_server's wait for /healthz).
    process, url = start_server(tmp_path / "second.log")
    try:
        job = wait_for(lambda: (j := job_of("smol-hub")).status == "done" and j, 120, "the download was not resumed")
    finally:
        stop_server(process)
    assert job.bytes_done == gguf_size()
    assert hub.bytes_served[SERVED] <= gguf_size() + 8 * MB
    assert downloads.files_present(gguf_entry)


@pytest.mark.parametrize("parameters, refused", [
    ({"hf_token_env": "DJANGO_SECRET_KEY"}, "hf_token_env"),
    ({"revision": "../../etc"}, "revision"),
    ({"allow_pickle_weights": "yes"}, "allow_pickle_weights"),
])
def test_download_parameters_follow_the_naming_and_path_rules(api_as, parameters, refused):
    body = {"model_name": "gated", "model_config": {"model_id": "org/gated", "engine": "transformers",
                                                    "parameters": parameters}}
    error = assert_error(api_as("model_write", "model_read").post("/models/", body, format="json"), 400,
                         "ValidationError")
    assert refused in json.dumps(error["error_details"])


def test_a_gated_model_sends_the_token_from_its_named_variable_and_stores_it_nowhere(hub, loader, monkeypatch):
    monkeypatch.setenv("BEAUTYAI_REMOTE_KEY_HUB", "hf_secret_token_for_tests")
    services.registry_add(name="gated", config={"model_id": GGUF_REPO, "engine": "llama.cpp", "quantization": "Q4_1",
                                                "parameters": {"hf_token_env": "BEAUTYAI_REMOTE_KEY_HUB"}})
    assert_ok(start(loader, name="gated"), 202)
    assert finished("gated").status == "done"
    sent = [headers.get("Authorization") for _, path, headers in hub.requests if not path.startswith("/cdn/")]
    assert sent and all(value == "Bearer hf_secret_token_for_tests" for value in sent)
    # The token goes to the hub only, never to the CDN it redirects to, and is stored nowhere.
    assert all("Authorization" not in headers for _, path, headers in hub.requests if path.startswith("/cdn/"))
    assert "hf_secret_token_for_tests" not in json.dumps(list(ModelDownload.objects.values()), default=str)
