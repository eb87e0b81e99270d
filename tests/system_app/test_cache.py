"""The Hugging Face cache routes on a fake but structurally valid hub cache in a temporary HF_HOME."""

from __future__ import annotations

import os
import pytest

from models_app import runtime
from models_app.bootstrap import BUNDLED_LLAMA_CPP, bundled_entries
from models_app.serving.engines.bundled import bundled_gguf_path
from models_app.models import ModelConfig
from tests.envelope import assert_error, assert_ok
from tests.system_app.conftest import make_hub_repo

pytestmark = pytest.mark.django_db

WEIGHTS = b"w" * 4096
CONFIG = b'{"model_type": "llama"}'


@pytest.fixture
def cached_model(hf_home, load_model):
    """The bundled GGUF inside a hub repo of the temporary cache, registered by its snapshot path and loaded."""
    repo = make_hub_repo(hf_home / "hub", "test-org/smol-gguf", {"model.gguf": bundled_gguf_path()})
    snapshot_file = next((repo / "snapshots").iterdir()) / "model.gguf"
    config = {**bundled_entries()[BUNDLED_LLAMA_CPP], "model_id": str(snapshot_file)}
    return repo, load_model(name="cached-smol", config=config)


def test_a_missing_cache_folder_is_an_empty_cache(api_as, settings, tmp_path):
    settings.HF_HOME = tmp_path / "never-created"
    data = assert_ok(api_as("system_status", "admin").get("/system/cache"))["data"]
    assert data == {"total_cache_size_gb": 0.0, "total_cache_size_bytes": 0, "cache_entries": 0,
                    "cache_location": str(tmp_path / "never-created" / "hub"), "oldest_entry": None, "newest_entry": None}


def test_only_admins_see_the_absolute_cache_location(api_as, hf_home):
    assert assert_ok(api_as("system_status").get("/system/cache"))["data"]["cache_location"] == "$HF_HOME/hub"
    assert assert_ok(api_as("cache_clear").post("/system/cache/clear"))["data"]["cache_location"] == "$HF_HOME/hub"
    cleared = assert_ok(api_as("cache_clear", "admin").post("/system/cache/clear"))["data"]
    assert cleared["cache_location"] == str(hf_home / "hub")


def test_the_cache_reports_size_entries_and_ages_of_its_repos(api_as, hf_home):
    old = make_hub_repo(hf_home / "hub", "org/old", {"model.safetensors": WEIGHTS})
    make_hub_repo(hf_home / "hub", "org/new", {"config.json": CONFIG})
    for path in old.rglob("*"):
        os.utime(path, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    ModelConfig.objects.create(name="old-model", model_id="org/old", engine="transformers")
    data = assert_ok(api_as("system_status", "model_read").get("/system/cache?detailed=true"))["data"]
    assert data["cache_entries"] == 2
    assert data["total_cache_size_bytes"] == len(WEIGHTS) + len(CONFIG)
    assert data["oldest_entry"] == "2020-09-13T12:26:40.000Z"
    assert data["newest_entry"] > data["oldest_entry"]
    repos = {repo["repo_id"]: repo for repo in data["repos"]}
    assert repos["org/old"]["size_bytes"] == len(WEIGHTS) and repos["org/old"]["nb_files"] == 1
    assert repos["org/old"]["registry_models"] == ["old-model"] and repos["org/old"]["loaded_models"] == []
    assert repos["org/old"]["revisions"][0]["refs"] == ["main"]


def test_clearing_a_models_entry_removes_its_repo_and_reports_the_freed_bytes(api_as, hf_home):
    target = make_hub_repo(hf_home / "hub", "org/target", {"model.safetensors": WEIGHTS, "config.json": CONFIG})
    other = make_hub_repo(hf_home / "hub", "org/other", {"config.json": CONFIG})
    ModelConfig.objects.create(name="target", model_id="org/target", engine="transformers")
    data = assert_ok(api_as("cache_clear", "model_read").post("/system/cache/clear?model_name=target"))["data"]
    assert data["removed_repos"] == ["org/target"]
    assert data["freed_bytes"] == len(WEIGHTS) + len(CONFIG)
    assert not target.exists() and other.exists()


def test_clearing_everything_keeps_the_repo_of_a_loaded_model(api_as, hf_home, cached_model):
    repo, _ = cached_model
    unused = make_hub_repo(hf_home / "hub", "org/unused", {"model.safetensors": WEIGHTS})
    data = assert_ok(api_as("cache_clear", "model_read").post("/system/cache/clear"))["data"]
    assert data["removed_repos"] == ["org/unused"] and data["freed_bytes"] == len(WEIGHTS)
    assert data["kept_repos"] == [{"repo_id": "test-org/smol-gguf", "loaded_models": ["cached-smol"]}]
    assert repo.exists() and not unused.exists()
    assert runtime.is_loaded("cached-smol")


def test_clearing_a_loaded_models_entry_without_force_is_a_conflict(api_as, cached_model):
    repo, _ = cached_model
    client = api_as("cache_clear", "model_read")
    body = assert_error(client.post("/system/cache/clear?model_name=cached-smol"), 409, "ConflictError")
    assert body["error_details"] == {"loaded_models": ["cached-smol"]}
    assert repo.exists() and runtime.is_loaded("cached-smol")


def test_force_unloads_the_model_then_removes_its_entry(api_as, cached_model):
    repo, _ = cached_model
    size = bundled_gguf_path().stat().st_size
    client = api_as("cache_clear", "model_read")
    data = assert_ok(client.post("/system/cache/clear?model_name=cached-smol&force=true"))["data"]
    assert data["models_unloaded"] == ["cached-smol"] and data["removed_repos"] == ["test-org/smol-gguf"]
    assert data["freed_bytes"] == size
    assert not repo.exists() and not runtime.is_loaded("cached-smol")
    assert bundled_gguf_path().stat().st_size == size  # the hard-linked original is untouched


def test_an_unknown_model_name_answers_404(api_as, hf_home):
    assert_error(api_as("cache_clear").post("/system/cache/clear?model_name=nope"), 404, "ModelNotFoundError")


def test_a_model_without_a_cache_entry_clears_nothing(api_as, hf_home, registry):
    kept = make_hub_repo(hf_home / "hub", "org/kept", {"config.json": CONFIG})
    data = assert_ok(api_as("cache_clear", "model_read").post("/system/cache/clear?model_name=alpha"))["data"]
    assert data["removed_repos"] == [] and data["freed_bytes"] == 0
    assert kept.exists()


def test_nothing_outside_the_cache_folder_is_ever_removed(api_as, hf_home, tmp_path):
    # A valid repo kept elsewhere with a repo folder in the cache that links to it ...
    elsewhere = make_hub_repo(tmp_path / "elsewhere", "evil/folder", {"config.json": CONFIG})
    os.symlink(elsewhere, hf_home / "hub" / elsewhere.name)
    # ... and a snapshot file that links to a file outside the cache.
    precious = tmp_path / "precious.bin"
    precious.write_bytes(WEIGHTS)
    repo = make_hub_repo(hf_home / "hub", "evil/file", {"config.json": CONFIG})
    os.symlink(precious, next((repo / "snapshots").iterdir()) / "weights.bin")
    data = assert_ok(api_as("cache_clear").post("/system/cache/clear"))["data"]
    assert data["removed_repos"] == ["evil/file"]
    assert precious.read_bytes() == WEIGHTS
    assert (elsewhere / "blobs").is_dir() and (hf_home / "hub" / elsewhere.name).is_symlink()
