"""Broken or hostile model files end as a clean EngineLoadError and leave no runner behind."""

from __future__ import annotations

import os

import pytest

from models_app.serving.engines.contract import EngineLoadError, LoadSpec
from models_app.serving.engines.model_files import inspect_gguf

from .conftest import linked, llama_spec, runner_children


def _missing(tmp_path, gguf):
    return tmp_path / "absent.gguf"


def _empty(tmp_path, gguf):
    path = tmp_path / "empty.gguf"
    path.touch()
    return path


def _truncated(tmp_path, gguf):
    path = tmp_path / "truncated.gguf"
    path.write_bytes(gguf.read_bytes()[:1024])
    return path


def _random(tmp_path, gguf):
    path = tmp_path / "random.gguf"
    path.write_bytes(os.urandom(64 * 1024))
    return path


def _fifo(tmp_path, gguf):
    path = tmp_path / "pipe.gguf"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("make, reason", [
    (_missing, "does not exist"),
    (_empty, "is empty"),
    (_truncated, "corrupt or truncated"),
    (_random, "no GGUF header"),
    (_fifo, "not a regular file"),
])
def test_bad_gguf_fails_to_load_with_a_reason_and_no_runner_left(manager, tmp_path, gguf_path, make, reason):
    path = make(tmp_path, gguf_path)
    with pytest.raises(EngineLoadError, match=reason) as err:
        manager.load(llama_spec(path, name="bad"))
    assert str(tmp_path) not in str(err.value)
    assert manager.status("bad").status == "error"
    assert runner_children() == []


@pytest.mark.parametrize("name", ["weights.bin", "model", "x.gguf"])
def test_llama_cpp_refuses_a_file_without_a_gguf_header_whatever_its_name(manager, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04" + os.urandom(4096))
    with pytest.raises(EngineLoadError, match=f"not a valid GGUF file: {name} has no GGUF header"):
        manager.load(llama_spec(path, name="named"))
    assert runner_children() == []


@pytest.mark.parametrize("name", ["weights.bin", "model"])
def test_llama_cpp_loads_a_gguf_whatever_its_name(manager, tmp_path, gguf_path, name):
    info = manager.load(llama_spec(linked(gguf_path, tmp_path / name), name="renamed"))
    assert info.status == "loaded" and manager.context_length("renamed") == 512


def test_folder_without_config_json_is_refused_by_transformers(manager, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(EngineLoadError, match="has no config.json"):
        manager.load(LoadSpec(name="noconfig", engine="transformers", model_id=str(folder)))
    assert runner_children() == []


def test_pickle_only_weights_are_refused_unless_allowed(manager, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(EngineLoadError, match="pickle weights"):
        manager.load(LoadSpec(name="pickled", engine="transformers", model_id=str(folder)))
    assert runner_children() == []


def test_unsupported_quantization_is_refused_by_transformers(manager, safetensors_dir):
    with pytest.raises(EngineLoadError, match="not supported"):
        manager.load(LoadSpec(name="awq", engine="transformers", model_id=str(safetensors_dir), quantization="awq"))


@pytest.mark.parametrize("path", ["/dev/zero", "/"])
def test_inspect_gguf_refuses_devices_and_directories_without_reading_them(path):
    with pytest.raises(EngineLoadError, match="not a valid GGUF file"):
        inspect_gguf(path)


def test_inspect_gguf_reads_the_bundled_model_metadata(gguf_path):
    info = inspect_gguf(gguf_path)
    assert info["file_type"] == "Q4_1"
    assert info["architecture"] == "llama"
    assert info["context_length"] == 8192
    assert "im_start" in info["chat_template"]
