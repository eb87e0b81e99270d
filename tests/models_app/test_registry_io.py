"""The seed registry format: import, export, round trip, and the bootstrap command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import APIKey
from models_app.models import ModelConfig
from models_app.registry_io import SEED_REGISTRY

pytestmark = pytest.mark.django_db
CONTRACT_SEED = Path(__file__).resolve().parents[2] / "docs" / "contract" / "model_registry.json"


def snapshot():
    return list(ModelConfig.objects.order_by("name").values())


def test_the_shipped_seed_is_the_contracts_registry():
    assert json.loads(CONTRACT_SEED.read_text()) == json.loads(SEED_REGISTRY.read_text())


def test_importing_the_seed_creates_its_nine_models_and_default(capsys):
    call_command("import_models", str(SEED_REGISTRY))
    assert ModelConfig.objects.count() == 9
    assert list(ModelConfig.objects.filter(is_default=True).values_list("name", flat=True)) == ["qwen3-model"]
    gguf = ModelConfig.objects.get(name="bee1reason-arabic-qwen-14b-gguf")
    assert (gguf.engine, gguf.quantization, gguf.do_sample, gguf.temperature) == ("llama.cpp", "Q4_K_M", None, 0.6)


def test_importing_twice_changes_nothing(capsys):
    call_command("import_models", str(SEED_REGISTRY))
    before = snapshot()
    call_command("import_models", str(SEED_REGISTRY))
    assert snapshot() == before
    assert "created 0, updated 0, unchanged 9" in capsys.readouterr().out


def test_export_then_import_is_lossless(tmp_path, capsys):
    call_command("import_models", str(SEED_REGISTRY))
    out = tmp_path / "export.json"
    call_command("export_models", str(out))
    assert json.loads(out.read_text()) == json.loads(SEED_REGISTRY.read_text())
    ModelConfig.objects.all().delete()
    call_command("import_models", str(out))
    call_command("export_models", str(tmp_path / "again.json"))
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(SEED_REGISTRY.read_text())


def test_replace_overwrites_existing_entries(tmp_path, capsys):
    call_command("import_models", str(SEED_REGISTRY))
    data = json.loads(SEED_REGISTRY.read_text())
    data["models"]["qwen3-model"]["max_new_tokens"] = 77
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    call_command("import_models", str(changed))
    assert ModelConfig.objects.get(name="qwen3-model").max_new_tokens == 1024
    call_command("import_models", str(changed), "--replace")
    assert ModelConfig.objects.get(name="qwen3-model").max_new_tokens == 77


def test_an_invalid_entry_imports_nothing(tmp_path):
    data = json.loads(SEED_REGISTRY.read_text())
    data["models"]["bee1reason-arabic-qwen-14b-gguf"]["quantization"] = "awq"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CommandError, match="quantization"):
        call_command("import_models", str(bad))
    assert ModelConfig.objects.count() == 0


@pytest.mark.parametrize("content", ["[]", "{", '{"models": []}', '{"models": {"x": {"engine_type": "transformers", "model_id": "a/b", "colour": 1}}}'])
def test_a_malformed_file_is_refused(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(CommandError):
        call_command("import_models", str(bad))
    assert ModelConfig.objects.count() == 0


@pytest.mark.parametrize("content,where", [
    ("[" * 100_000, "nested more than 32 levels"),
    ('{"models": {"x": {"engine_type": "transformers", "model_id": "a/b", "parameters": {"keep_alive_seconds": 1e400}}}}',
     "models.x.parameters.keep_alive_seconds: must be a finite number"),
])
def test_a_file_too_deep_or_with_a_number_storage_cannot_hold_is_refused_saying_where(tmp_path, content, where):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(CommandError, match=re.escape(where)):
        call_command("import_models", str(bad))
    assert ModelConfig.objects.count() == 0


def test_a_model_named_like_a_route_segment_imports_nothing(tmp_path):
    data = json.loads(SEED_REGISTRY.read_text())
    data["models"]["Default"] = data["models"]["qwen3-model"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CommandError, match="models.Default: .*route segment"):
        call_command("import_models", str(bad))
    assert ModelConfig.objects.count() == 0


def test_export_without_a_path_prints_json(capsys):
    call_command("import_models", str(SEED_REGISTRY))
    capsys.readouterr()
    call_command("export_models")
    assert json.loads(capsys.readouterr().out)["default_model"] == "qwen3-model"


def test_bootstrap_sets_up_a_fresh_install(capsys):
    call_command("bootstrap")
    out = capsys.readouterr().out
    assert ModelConfig.objects.count() == 12
    llama = ModelConfig.objects.get(name="smollm2-135m-instruct")
    hf = ModelConfig.objects.get(name="smollm2-135m-instruct-hf")
    embed = ModelConfig.objects.get(name="embed-small")
    assert llama.is_default and llama.engine == "llama.cpp" and llama.model_id.endswith(".gguf")
    assert hf.engine == "transformers" and hf.parameters["gguf_file"].endswith(".gguf")
    assert embed.engine == "transformers" and embed.task == "embed" and embed.model_id.endswith("/model")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser
    raw_key = out.strip().splitlines()[-1].split(": ")[-1]
    assert APIKey.objects.find(raw_key).user == admin
    password = [line for line in out.splitlines() if "password:" in line][0].split("password: ")[-1]
    assert admin.check_password(password)


def test_bootstrap_twice_changes_nothing_the_second_time(capsys):
    call_command("bootstrap")
    before = (snapshot(), list(get_user_model().objects.values_list("username", "password")), APIKey.objects.count())
    capsys.readouterr()
    call_command("bootstrap")
    after = (snapshot(), list(get_user_model().objects.values_list("username", "password")), APIKey.objects.count())
    assert after == before
    assert "Nothing to do" in capsys.readouterr().out


def test_bootstrap_keeps_an_existing_registry_and_its_default(registry, capsys):
    call_command("bootstrap")
    assert ModelConfig.objects.filter(name__in=["qwen3-model"]).count() == 0
    assert ModelConfig.objects.get(is_default=True).name == "alpha"
    assert ModelConfig.objects.filter(name="smollm2-135m-instruct").exists()
