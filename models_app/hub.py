"""A registry entry's files from the Hugging Face hub into the local cache: plan, fetch, verify, promote.

No Django here; ``models_app.downloads`` runs this for a ``ModelDownload`` row.

Files are fetched by huggingface_hub's own client (its metadata request and HTTP download) into a
staging folder beside the cache, ``<HF_HOME>/.beautyai-staging/<repo folder>/<commit>/`` (outside
``hub/``, whose every folder huggingface_hub's cache scan takes for a repo). Partial files
(``.part``) stay there and are resumed with HTTP ranges, so a cancel, a network error or a server
restart costs no bytes already fetched. The client checks sizes, not
hashes: a file is moved into the cache (``blobs/<etag>``, ``snapshots/<commit>/<path>``,
``refs/<revision>``, the layout the engines read offline) only once it is complete and its sha256
(LFS files) or git blob sha1 (other files) matches what the hub declared (THREATS C13).
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import functools
import hashlib
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import urlsplit

from models_app.serving.engines.model_files import gguf_matching

STAGING = ".beautyai-staging"
# huggingface_hub's http_get reads, reports and can be stopped once per block of this size (10 MiB by
# default). The web process downloads nothing else, so a smaller block is set for it once: smoother
# progress, and a cancel within 1 MiB instead of 10.
DOWNLOAD_BLOCK = 1024 * 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Branch and tag names as git allows them, without "..", so a revision is always a path under refs/.
REVISION = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
_CHUNK = 1024 * 1024

# What a transformers entry needs: weights, config, tokenizer and chat template. Pickled weights
# (.bin, .pt, .pth, .pkl) run code when loaded; they come only when the entry allows them.
TRANSFORMERS_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py.lock")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


class HubError(Exception):
    """A download cannot go on; the message is safe to show (no local paths)."""


class DownloadCancelled(Exception):
    pass


def safe_repo_path(path: str) -> bool:
    """A file path from the hub becomes a path under the cache: relative, no "..", no odd characters."""
    parts = PurePosixPath(path).parts
    return (bool(parts) and not path.startswith("/") and "\\" not in path and "\x00" not in path
            and not any(part in ("..", ".") for part in parts))


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    git_sha1: str
    sha256: str | None = None  # LFS files only

    @property
    def etag(self) -> str:
        """The file's blob name in huggingface_hub's cache."""
        return self.sha256 or self.git_sha1


@dataclass(frozen=True)
class Plan:
    repo_id: str
    revision: str
    commit: str
    files: tuple[HubFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit,
                "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(repo_id=data["repo_id"], revision=data["revision"], commit=data["commit"],
                   files=tuple(HubFile(**f) for f in data["files"]))


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_repos(cache: Path) -> tuple[object | None, list]:
    """huggingface_hub's scan of the cache folder ``cache`` and its repos, sorted by type and id;
    (None, []) when the folder does not exist yet.

    A repo folder that is a symlink is left out: deleting it could reach outside the cache.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        scan = scan_cache_dir(cache_dir=cache)
    except CacheNotFound:
        return None, []
    return scan, sorted((repo for repo in scan.repos if not repo.repo_path.is_symlink()),
                        key=lambda repo: (repo.repo_type, repo.repo_id))


def delete_cached_repos(scan, repos: list) -> int:
    """Removes ``repos`` (from ``cached_repos``) whole, through huggingface_hub's delete strategy,
    which removes folders inside the cache only; returns the bytes freed."""
    import dataclasses

    if not repos:
        return 0
    # Only the chosen repos are offered to the strategy, so a commit hash shared with a kept repo
    # can never select the kept one.
    strategy = dataclasses.replace(scan, repos=frozenset(repos)).delete_revisions(
        *(rev.commit_hash for repo in repos for rev in repo.revisions))
    freed = strategy.expected_freed_size
    strategy.execute()
    return freed


def repo_dir(repo_id: str, cache: Path | None = None) -> Path:
    return _repo_dir(repo_id, cache or cache_dir())


# Remembered: the model list asks for the folder of every hub entry on every request, and building
# the path cost more than looking into it. Only names are kept, never what is on the disk.
@functools.lru_cache(maxsize=1024)
def _repo_dir(repo_id: str, cache: Path) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache / repo_folder_name(repo_id=repo_id, repo_type="model")


def staging_root(repo_id: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()).parent / STAGING / repo_dir(repo_id, Path(".")).name


def staging_dir(plan: Plan, cache: Path | None = None) -> Path:
    return staging_root(plan.repo_id, cache) / plan.commit


# Choosing files --------------------------------------------------------------------------------

def select_files(files: list[HubFile], *, engine: str, quantization: str, parameters: dict) -> list[HubFile]:
    """The files an entry needs; HubError naming the field when the repo has none that fit."""
    filename = parameters.get("filename") or parameters.get("gguf_file")
    if engine == "llama.cpp" or filename:
        if filename:
            chosen = [f for f in files if f.path == filename]
            if not chosen:
                raise HubError(f"parameters.filename: the repository has no file {filename!r}")
            return chosen
        # Only files at the top of the repo: the engine looks for the GGUF in the snapshot folder itself.
        names = set(gguf_matching([f.path for f in files if "/" not in f.path], quantization))
        chosen = [f for f in files if f.path in names]
        if not chosen:
            raise HubError(f"quantization: the repository has no GGUF file matching {quantization!r}")
        return chosen
    patterns = TRANSFORMERS_PATTERNS + (PICKLE_PATTERNS if parameters.get("allow_pickle_weights") is True else ())
    chosen = [f for f in files if any(fnmatch.fnmatch(PurePosixPath(f.path).name, p) for p in patterns)]
    if not any(f.path.endswith("config.json") for f in chosen):
        raise HubError("model_id: the repository has no config.json; it is not a transformers model")
    return chosen


def plan_download(repo_id: str, *, revision: str, engine: str, quantization: str, parameters: dict,
                  token: str | None) -> Plan:
    """Asks the hub (HF_ENDPOINT) which commit ``revision`` is and which files the entry needs."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    if not REVISION.match(revision):
        raise HubError("revision: a branch, tag or commit name (letters, digits, . _ / -)")
    api = HfApi(token=token)
    try:
        commit = api.model_info(repo_id, revision=revision).sha
        tree = api.list_repo_tree(repo_id, revision=commit, recursive=True)
        files = [HubFile(path=e.path, size=int(e.size or 0), git_sha1=e.blob_id,
                         sha256=e.lfs.sha256 if e.lfs else None)
                 for e in tree if isinstance(e, RepoFile)]
    except Exception as exc:
        raise HubError(describe_hub_error(exc, repo_id)) from None
    if not commit or not _COMMIT.match(commit):
        raise HubError("the hub answered without a commit for this revision")
    if not all(safe_repo_path(f.path) for f in files):
        raise HubError("the hub listed a file path that cannot be stored safely")
    chosen = select_files(files, engine=engine, quantization=quantization, parameters=parameters)
    return Plan(repo_id=repo_id, revision=revision, commit=commit, files=tuple(chosen))


def describe_hub_error(exc: Exception, repo_id: str) -> str:
    from huggingface_hub import errors as hub_errors

    if isinstance(exc, hub_errors.GatedRepoError):
        return f"model_id: {repo_id} is gated; name a token variable in parameters.hf_token_env"
    if isinstance(exc, hub_errors.RepositoryNotFoundError):
        return f"model_id: the hub has no repository {repo_id} (or it is private and no token was given)"
    if isinstance(exc, hub_errors.RevisionNotFoundError):
        return "revision: the hub has no such revision of this repository"
    if isinstance(exc, hub_errors.EntryNotFoundError):
        return "a file of the repository is missing on the hub"
    if isinstance(exc, hub_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return f"the hub answered HTTP {status}" if status else "the hub request failed"
    return f"the hub could not be reached ({exc.__class__.__name__})"


# Where files are -------------------------------------------------------------------------------

def cached_blob(plan: Plan, file: HubFile, cache: Path | None = None) -> Path:
    return repo_dir(plan.repo_id, cache) / "blobs" / file.etag


def is_cached(plan: Plan, file: HubFile, cache: Path | None = None) -> bool:
    """In the cache already, complete, and linked into this commit's snapshot."""
    blob = cached_blob(plan, file, cache)
    link = repo_dir(plan.repo_id, cache) / "snapshots" / plan.commit / file.path
    return blob.is_file() and blob.stat().st_size == file.size and link.exists()


def partial_bytes(plan: Plan, cache: Path | None = None) -> int:
    """Bytes already fetched into the staging folder (finished and partial files)."""
    root = staging_dir(plan, cache)
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def bytes_needed(plan: Plan, cache: Path | None = None) -> int:
    missing = sum(f.size for f in plan.files if not is_cached(plan, f, cache))
    return max(0, missing - partial_bytes(plan, cache))


def free_bytes(cache: Path | None = None) -> int:
    """Free space where downloaded bytes land (the staging folder's file system)."""
    path = (cache or cache_dir()).parent
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def snapshot_present(repo_id: str, *, revision: str | None, engine: str, quantization: str,
                     parameters: dict, cache: Path | None = None) -> bool:
    """Whether the entry's files are in the cache, from the file system alone (no hub request)."""
    root = repo_dir(repo_id, cache)
    revision = revision or "main"
    if _COMMIT.match(revision):
        commit = revision
    else:
        try:
            commit = (root / "refs" / revision).read_text().strip()
        except (OSError, ValueError):
            return False
    snapshot = root / "snapshots" / commit
    if not snapshot.is_dir():
        return False
    filename = parameters.get("filename") or parameters.get("gguf_file")
    if filename:
        return (snapshot / filename).is_file()
    if engine == "llama.cpp":
        return bool(gguf_matching([p.name for p in snapshot.iterdir()], quantization))
    return (snapshot / "config.json").is_file()


def discard_staging(repo_id: str, cache: Path | None = None) -> None:
    shutil.rmtree(staging_root(repo_id, cache), ignore_errors=True)


# Fetching ----------------------------------------------------------------------------------------

class _Transfer:
    """One file's transfer as huggingface_hub's ``http_get`` drives it: ``progress`` is the class it
    uses as its progress bar (a class that is not a tqdm is called with tqdm's keyword arguments and
    gets ``update(n)`` before each block is written), and the transfer itself is the file it writes.

    A cancel raised by ``on_bytes`` is held until the block has been written, then raised from
    ``write``: the block already received is kept for the resume instead of being fetched again.
    """

    def __init__(self, handle, on_bytes: Callable[[int], None]):
        self.handle = handle
        self.on_bytes = on_bytes
        self.stop: DownloadCancelled | None = None
        transfer = self

        class Progress:
            def __init__(self, **kwargs):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n: int = 1) -> None:
                try:
                    transfer.on_bytes(int(n))
                except DownloadCancelled as cancelled:
                    transfer.stop = cancelled

            def close(self) -> None:
                pass

        self.progress = Progress

    def write(self, data: bytes) -> int:
        written = self.handle.write(data)
        if self.stop is not None:
            raise self.stop
        return written

    def tell(self) -> int:
        return self.handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        return self.handle.truncate(size)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_sha1_of(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, file: HubFile) -> None:
    actual = sha256_of(path) if file.sha256 else git_sha1_of(path)
    if actual != file.etag or path.stat().st_size != file.size:
        raise HubError(f"{file.path}: the downloaded file does not match the hash the hub declared")


def _fetch_file(plan: Plan, file: HubFile, target: Path, *, token: str | None,
                on_bytes: Callable[[int], None]) -> None:
    """Fetches one file to ``target`` with huggingface_hub's own HTTP download, resuming ``target``.part.

    huggingface_hub's hf_hub_download resumes only within one call (it deletes its partial file on
    any failure), so the platform keeps the partial file and hands it to the client's ``http_get``
    with the bytes it already holds: the client asks for the rest with a Range request.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(plan.repo_id, file.path, revision=plan.commit)
    metadata = get_hf_file_metadata(url, token=token)
    headers = build_hf_headers(token=token)
    location = metadata.location or url
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL; the hub's token stays with the hub
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "ab") as handle:
        # A cancelled job may still be writing its last block when the next job of the model starts.
        fcntl.flock(handle, fcntl.LOCK_EX)
        held = handle.tell()
        if held > file.size:  # not this file's bytes (a changed plan): start over
            handle.truncate(0)
            held = 0
        transfer = _Transfer(handle, on_bytes)
        http_get(location, transfer, resume_size=held, headers=headers, expected_size=file.size,
                 displayed_filename=file.path, tqdm_class=transfer.progress)
        os.replace(partial, target)


def fetch(plan: Plan, *, token: str | None, on_bytes: Callable[[int], None], on_file_done: Callable[[HubFile], None],
          on_verifying: Callable[[], None], cancelled: Callable[[], bool]) -> None:
    """Downloads every file of ``plan`` not in the cache yet, verifies all, then promotes them.

    ``on_bytes`` gets each block's size as it arrives (it may raise DownloadCancelled to stop, which
    takes effect once that block is written); files already cached or already complete in staging
    count as done at once.
    """
    from huggingface_hub import constants

    constants.DOWNLOAD_CHUNK_SIZE = DOWNLOAD_BLOCK
    staging = staging_dir(plan)
    staged: list[HubFile] = []
    for file in plan.files:
        if cancelled():
            raise DownloadCancelled()
        if is_cached(plan, file):
            on_bytes(file.size)
            on_file_done(file)
            continue
        target = staging / file.path
        if not target.is_file():
            try:
                _fetch_file(plan, file, target, token=token, on_bytes=on_bytes)
            except DownloadCancelled:
                raise
            except Exception as exc:
                raise HubError(f"{file.path}: {describe_hub_error(exc, plan.repo_id)}") from None
        staged.append(file)
        on_file_done(file)
    on_verifying()
    for file in staged:
        path = staging / file.path
        try:
            verify(path, file)
        except HubError:
            # Nothing of a bad file is kept: the next attempt fetches it from the start.
            path.unlink(missing_ok=True)
            raise
    promote(plan, staged)


def _move_whole(source: Path, target: Path) -> None:
    """``target`` appears complete or not at all, also across file systems (HF_HUB_CACHE elsewhere)."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        incoming = target.with_name(f".{target.name}.incoming")
        shutil.copyfile(source, incoming)
        os.replace(incoming, target)
        source.unlink()


def promote(plan: Plan, files: list[HubFile], cache: Path | None = None) -> None:
    """Moves verified files from staging into the cache layout huggingface_hub reads."""
    root = repo_dir(plan.repo_id, cache)
    staging = staging_dir(plan, cache)
    snapshot = root / "snapshots" / plan.commit
    for file in files:
        blob = root / "blobs" / file.etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        _move_whole(staging / file.path, blob)
        link = snapshot / file.path
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{link.name}.tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.path.relpath(blob, link.parent))
        os.replace(temporary, link)
    if plan.revision != plan.commit:
        ref = root / "refs" / plan.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        temporary = ref.with_name(f".{ref.name}.tmp")
        temporary.write_text(plan.commit)
        os.replace(temporary, ref)
    shutil.rmtree(staging, ignore_errors=True)
