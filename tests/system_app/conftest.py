"""Fixtures for the system tests: a loaded bundled model, the background writer, a fake hub cache."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest

from models_app import runtime, services
from models_app.bootstrap import BUNDLED_LLAMA_CPP, bundled_entries
from system_app.logging import DatabaseLogHandler, writer


@pytest.fixture
def load_model(db):
    """``load_model(name=..., config=...)`` adds a registry entry and loads it in a real runner; unloaded after."""
    names: list[str] = []

    def load(*, name: str = BUNDLED_LLAMA_CPP, config: dict | None = None):
        model = services.registry_add(name=name, config=config or bundled_entries()[BUNDLED_LLAMA_CPP])
        names.append(name)
        runtime.load(model)
        return model

    yield load
    for name in names:
        runtime.unload(name)


@pytest.fixture
def background_writer():
    """The background writer, running for this test and drained before the database is flushed."""
    writer.start(queue_size=1000)
    yield writer
    writer.stop()


@pytest.fixture
def db_log_handler(background_writer):
    """The database log handler on the root logger at DEBUG: the one from settings' LOGGING, else a new one."""
    root = logging.getLogger()
    configured = [handler for handler in root.handlers if isinstance(handler, DatabaseLogHandler)]
    handler = configured[0] if configured else DatabaseLogHandler()
    levels = (root.level, handler.level)
    if not configured:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    handler.setLevel(logging.DEBUG)
    yield handler
    if not configured:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    handler.setLevel(levels[1])


def make_hub_repo(hub: Path, repo_id: str, files: dict[str, bytes | Path], *, commit: str | None = None) -> Path:
    """A structurally valid hub cache repo: blobs, refs/main, snapshots/<commit>/ symlinks to the blobs.

    A Path value is hard-linked in as a blob (copied across file systems), so a real model file costs no space.
    """
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, content in files.items():
        if isinstance(content, Path):
            blob = repo / "blobs" / hashlib.sha256(str(content).encode()).hexdigest()
            try:
                os.link(content, blob)
            except OSError:
                shutil.copyfile(content, blob)
        else:
            blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
            blob.write_bytes(content)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return repo


@pytest.fixture
def hf_home(tmp_path, settings):
    """An empty HF_HOME for this test; its hub cache folder is HF_HOME/hub."""
    settings.HF_HOME = tmp_path / "hf"
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    return tmp_path / "hf"
