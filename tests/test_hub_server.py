"""The local hub of tests/hub_server.py, driven by the real huggingface_hub client.

These tests also pin down what huggingface_hub itself does and does not do (resume, hash checks), which
the product's downloads rely on.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url, scan_cache_dir, snapshot_download
from huggingface_hub import get_hf_file_metadata, model_info
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import http_get

import tests.hub_server
from models_app.serving.engines.bundled import BUNDLED_GGUF_NAME, bundled_gguf_path
from tests.hub_server import git_blob_sha1

GGUF_REPO = "test-org/smollm2-gguf"
GGUF = f"{GGUF_REPO}/{BUNDLED_GGUF_NAME}"
CHUNK = 10 * 1024 * 1024  # huggingface_hub's own block: it reports progress once per 10 MiB read


@pytest.fixture(autouse=True)
def _library_block_size(monkeypatch):
    # These tests pin huggingface_hub's own behaviour; the platform's downloads set a smaller block.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)


class Interrupted(Exception):
    pass


def progress_that_stops_at(limit: int):
    """A tqdm_class whose update() raises once ``limit`` bytes were reported: how a caller cancels a download."""

    class StopAt:
        def __init__(self, **kwargs):
            self.n = kwargs.get("initial", 0)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

        def update(self, n):
            self.n += n
            if self.n >= limit:
                raise Interrupted

    return StopAt


def sha256_of(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_hf_hub_download_fetches_the_gguf_byte_for_byte_into_the_cache_layout(hub_server, tmp_path):
    hub = hub_server(GGUF_REPO)
    path = Path(hf_hub_download(GGUF_REPO, BUNDLED_GGUF_NAME))

    repo = tmp_path / "hf" / "hub" / "models--test-org--smollm2-gguf"
    sha256 = sha256_of(bundled_gguf_path())
    assert path == repo / "snapshots" / hub.commit / BUNDLED_GGUF_NAME
    assert path.is_symlink() and path.resolve() == repo / "blobs" / sha256
    assert (repo / "refs" / "main").read_text() == hub.commit
    assert filecmp.cmp(path, bundled_gguf_path(), shallow=False)
    # The metadata comes off the hub's 302; the body comes from the CDN, without the token (none is sent here).
    assert hub.requests == [("HEAD", f"/{GGUF_REPO}/resolve/main/{BUNDLED_GGUF_NAME}", {}),
                            ("GET", f"/cdn/{GGUF_REPO}/{BUNDLED_GGUF_NAME}", {})]
    assert hub.bytes_served == {GGUF: bundled_gguf_path().stat().st_size}


def test_an_explicit_token_goes_to_the_hub_but_not_to_the_cdn(hub_server):
    hub = hub_server(GGUF_REPO)
    hf_hub_download(GGUF_REPO, BUNDLED_GGUF_NAME, token="hf_only_for_the_hub")

    assert [(method, headers) for method, _, headers in hub.requests] == [
        ("HEAD", {"Authorization": "Bearer hf_only_for_the_hub"}), ("GET", {})]


def test_file_metadata_gives_sha256_for_lfs_files_git_sha1_for_small_ones_and_no_xet(hub_server):
    hub = hub_server(GGUF_REPO)
    gguf = get_hf_file_metadata(hf_hub_url(GGUF_REPO, BUNDLED_GGUF_NAME))
    readme_url = hf_hub_url(GGUF_REPO, "README.md")
    readme = get_hf_file_metadata(readme_url)

    assert (gguf.etag, gguf.size, gguf.commit_hash) == (
        sha256_of(bundled_gguf_path()), bundled_gguf_path().stat().st_size, hub.commit)
    assert gguf.location == f"{hub.cdn_url}/cdn/{GGUF_REPO}/{BUNDLED_GGUF_NAME}"
    content = hub.repos[GGUF_REPO]["README.md"].source
    assert (readme.etag, readme.size, readme.location) == (git_blob_sha1(content), len(content), readme_url)
    assert gguf.xet_file_data is None and readme.xet_file_data is None


def test_snapshot_download_fetches_only_the_files_its_patterns_allow(hub_server):
    hub = hub_server(GGUF_REPO)
    folder = Path(snapshot_download(GGUF_REPO, allow_patterns=["*.md"]))

    assert sorted(os.listdir(folder)) == ["README.md"]
    assert list(hub.bytes_served) == [f"{GGUF_REPO}/README.md"]
    assert [(method, path) for method, path, _ in hub.requests[:2]] == [
        ("GET", f"/api/models/{GGUF_REPO}/revision/main"),
        ("GET", f"/api/models/{GGUF_REPO}/tree/{hub.commit}?recursive=true&expand=false")]


def test_list_repo_tree_reports_sizes_lfs_sha256_and_git_blob_ids(hub_server):
    hub_server(GGUF_REPO)
    files = {f.path: f for f in HfApi().list_repo_tree(GGUF_REPO, recursive=True)}

    gguf, readme = files[BUNDLED_GGUF_NAME], files["README.md"]
    size, sha256 = bundled_gguf_path().stat().st_size, sha256_of(bundled_gguf_path())
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    assert (gguf.size, gguf.lfs.size, gguf.lfs.sha256) == (size, size, sha256)
    assert (gguf.blob_id, gguf.lfs.pointer_size) == (git_blob_sha1(pointer), len(pointer))
    content = (Path(snapshot_download(GGUF_REPO, allow_patterns=["README.md"])) / "README.md").read_bytes()
    assert (readme.size, readme.blob_id, readme.lfs) == (len(content), git_blob_sha1(content), None)


def test_list_repo_tree_follows_link_pages_and_lists_folders_like_the_hub(hub_server):
    hub = hub_server(repos={"test-org/nested": {"a.txt": b"a", "sub/b.txt": b"b", "sub/deep/c.txt": b"c"}},
                     page_size=2)
    everything = list(HfApi().list_repo_tree("test-org/nested", recursive=True))
    first_level_of_sub = list(HfApi().list_repo_tree("test-org/nested", "sub"))

    assert [(type(e).__name__, e.path) for e in everything] == [
        ("RepoFile", "a.txt"), ("RepoFolder", "sub"), ("RepoFile", "sub/b.txt"), ("RepoFolder", "sub/deep"),
        ("RepoFile", "sub/deep/c.txt")]
    assert [(type(e).__name__, e.path) for e in first_level_of_sub] == [
        ("RepoFile", "sub/b.txt"), ("RepoFolder", "sub/deep")]
    assert [path for _, path, _ in hub.requests if "cursor=" in path] == [
        "/api/models/test-org/nested/tree/main?recursive=true&expand=false&cursor=2",
        "/api/models/test-org/nested/tree/main?recursive=true&expand=false&cursor=4"]


def test_the_safetensors_repo_downloads_without_its_pickle(hub_server, safetensors_dir):
    hub = hub_server("test-org/smollm2")
    folder = Path(snapshot_download("test-org/smollm2", ignore_patterns=["*.bin"]))

    expected = sorted(p.relative_to(safetensors_dir).as_posix() for p in safetensors_dir.rglob("*") if p.is_file())
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == expected
    assert all(filecmp.cmp(folder / name, safetensors_dir / name, shallow=False) for name in expected)
    assert "test-org/smollm2/pytorch_model.bin" not in hub.bytes_served
    assert "pytorch_model.bin" in {f.path for f in HfApi().list_repo_tree("test-org/smollm2")}


def test_an_interrupted_hf_hub_download_keeps_nothing_so_the_next_call_starts_from_byte_zero(hub_server, tmp_path):
    # huggingface_hub 2.4 downloads into a per-call temporary file that it deletes on failure: no resume
    # across calls. The product has to keep its own partial file (see the http_get test below).
    hub = hub_server(GGUF_REPO)
    hub.pause(after=CHUNK)
    with pytest.raises(Interrupted):
        hf_hub_download(GGUF_REPO, BUNDLED_GGUF_NAME, tqdm_class=progress_that_stops_at(1))
    hub.resume()
    blobs = tmp_path / "hf" / "hub" / "models--test-org--smollm2-gguf" / "blobs"
    assert list(blobs.iterdir()) == []

    path = hf_hub_download(GGUF_REPO, BUNDLED_GGUF_NAME)

    assert filecmp.cmp(path, bundled_gguf_path(), shallow=False)
    assert [headers for method, _, headers in hub.requests if method == "GET"] == [{}, {}]
    assert hub.bytes_served[GGUF] == CHUNK + bundled_gguf_path().stat().st_size


def test_http_get_resumes_a_kept_partial_file_with_a_range_request(hub_server, tmp_path):
    hub = hub_server(GGUF_REPO)
    metadata = get_hf_file_metadata(hf_hub_url(GGUF_REPO, BUNDLED_GGUF_NAME))
    partial = tmp_path / "gguf.incomplete"
    # Two chunks reach the client; the second one's progress report cancels before it is written.
    hub.pause(after=2 * CHUNK)
    with partial.open("wb") as f, pytest.raises(Interrupted):
        http_get(metadata.location, f, expected_size=metadata.size, tqdm_class=progress_that_stops_at(2 * CHUNK))
    hub.resume()
    assert partial.stat().st_size == CHUNK

    with partial.open("ab") as f:
        http_get(metadata.location, f, resume_size=CHUNK, expected_size=metadata.size)

    assert sha256_of(partial) == metadata.etag
    assert hub.requests[-1] == ("GET", f"/cdn/{GGUF_REPO}/{BUNDLED_GGUF_NAME}", {"Range": f"bytes={CHUNK}-"})
    # Resumed, not restarted: only the cancelled chunk was sent twice.
    assert hub.bytes_served[GGUF] == metadata.size + CHUNK


def test_hf_hub_download_resumes_a_body_cut_mid_file_within_the_same_call(hub_server, monkeypatch):
    # The one resume huggingface_hub does by itself: after a dropped connection it asks for the rest with a
    # Range, from the last chunk it wrote (what it had read past that is fetched again).
    monkeypatch.setattr(tests.hub_server, "PAUSE_LIMIT_SECONDS", 0.2)
    hub = hub_server(GGUF_REPO)
    hub.pause(after=15_000_000)
    result = {}
    download = threading.Thread(target=lambda: result.update(path=hf_hub_download(GGUF_REPO, BUNDLED_GGUF_NAME)))
    download.start()
    wait_for(lambda: any(headers for _, _, headers in hub.requests))
    hub.resume()
    download.join(timeout=60)

    assert filecmp.cmp(result["path"], bundled_gguf_path(), shallow=False)
    assert [headers for method, _, headers in hub.requests if method == "GET"] == [{}, {"Range": f"bytes={CHUNK}-"}]
    assert hub.bytes_served[GGUF] == bundled_gguf_path().stat().st_size + 15_000_000 - CHUNK


@pytest.mark.parametrize(("repo_id", "filename", "revision", "error"), [
    ("test-org/missing", "README.md", None, RepositoryNotFoundError),
    (GGUF_REPO, "missing.gguf", None, RemoteEntryNotFoundError),
    (GGUF_REPO, "README.md", "v9", RevisionNotFoundError),
], ids=["missing repo", "missing file", "missing revision"])
def test_hf_hub_download_of_a_missing_repo_file_or_revision_raises_huggingface_hubs_own_error(
        hub_server, repo_id, filename, revision, error):
    hub_server(GGUF_REPO)
    with pytest.raises(error):
        hf_hub_download(repo_id, filename, revision=revision)


@pytest.mark.parametrize(("repo_id", "revision", "error"), [
    ("test-org/missing", None, RepositoryNotFoundError),
    (GGUF_REPO, "v9", RevisionNotFoundError),
], ids=["missing repo", "missing revision"])
def test_snapshot_download_of_a_missing_repo_or_revision_raises_huggingface_hubs_own_error(
        hub_server, repo_id, revision, error):
    hub_server(GGUF_REPO)
    with pytest.raises(error):
        snapshot_download(repo_id, revision=revision)
    with pytest.raises(error):
        HfApi().model_info(repo_id, revision=revision)


def test_huggingface_hub_keeps_a_file_corrupted_in_transit_without_noticing(hub_server):
    hub = hub_server(GGUF_REPO)
    hub.corrupt(GGUF, 5_000_000)

    path = hf_hub_download(GGUF_REPO, BUNDLED_GGUF_NAME)

    declared = next(f for f in HfApi().list_repo_tree(GGUF_REPO) if f.path == BUNDLED_GGUF_NAME).lfs.sha256
    assert Path(path).resolve().name == declared  # stored under the declared hash...
    assert sha256_of(path) != declared  # ...with other content: the product must verify it
    with open(path, "rb") as got, bundled_gguf_path().open("rb") as sent:
        got.seek(5_000_000)
        sent.seek(5_000_000)
        assert got.read(1)[0] == sent.read(1)[0] ^ 0xFF


def test_throttle_limits_the_rate_of_file_bodies(hub_server):
    hub = hub_server(repos={"test-org/blob": {"blob.bin": bytes(300_000)}})
    hub.throttle(1_000_000)
    started = time.monotonic()

    hf_hub_download("test-org/blob", "blob.bin")

    assert time.monotonic() - started >= 0.3  # 300 kB at 1 MB/s
    assert hub.bytes_served == {"test-org/blob/blob.bin": 300_000}


def test_pause_holds_bodies_at_the_given_offset_until_resume(hub_server):
    hub = hub_server(GGUF_REPO)
    hub.pause(after=1_000_000)
    result = {}
    download = threading.Thread(target=lambda: result.update(path=hf_hub_download(GGUF_REPO, BUNDLED_GGUF_NAME)))
    download.start()

    wait_for(lambda: hub.bytes_served.get(GGUF) == 1_000_000)
    assert download.is_alive()
    hub.resume()
    download.join(timeout=60)

    assert filecmp.cmp(result["path"], bundled_gguf_path(), shallow=False)
    assert hub.bytes_served[GGUF] == bundled_gguf_path().stat().st_size


def test_stop_returns_at_once_and_cuts_a_paused_body(hub_server):
    hub = hub_server(GGUF_REPO)
    hub.pause()
    errors = []

    def read():
        try:
            with httpx.stream("GET", f"{hub.cdn_url}/cdn/{GGUF}", timeout=30) as response:
                response.read()
        except httpx.HTTPError as error:
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: hub.requests)
    started = time.monotonic()
    hub.stop()
    reader.join(timeout=10)

    assert time.monotonic() - started < 2
    assert not reader.is_alive() and isinstance(errors[0], httpx.RemoteProtocolError)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{hub.url}/api/models/{GGUF_REPO}")


def test_the_fixture_points_every_entry_point_of_huggingface_hub_at_the_local_hub(hub_server, tmp_path):
    hub = hub_server(GGUF_REPO)
    hf_hub_download(GGUF_REPO, "README.md")

    assert model_info(GGUF_REPO).sha == hub.commit  # the module-level HfApi instance
    assert [repo.repo_id for repo in scan_cache_dir().repos] == [GGUF_REPO]  # its default cache folder
    assert constants.HF_HUB_CACHE == str(tmp_path / "hf" / "hub")
    assert os.environ["HF_ENDPOINT"] == hub.url and os.environ["HF_HUB_OFFLINE"] == "0"
