"""A local stand-in for the Hugging Face Hub: download tests drive the real huggingface_hub client without the internet.

It answers the requests huggingface_hub 2.x makes to download models, with the headers it reads:

- ``HEAD|GET /{repo_id}/resolve/{revision}/{path}``: a small file answers 200 with ``ETag: "<git blob sha1>"``,
  ``Content-Length`` and ``X-Repo-Commit``; an LFS file (10 KB and more) answers, like the real hub, a 302 to a
  CDN on another origin (a second port) with ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size`` and ``X-Repo-Commit``.
  The client reads the metadata off the 302 and downloads from the CDN; so does any client that follows redirects.
- ``GET /api/models/{repo_id}[/revision/{revision}]`` (``model_info``/``repo_info``; ``?blobs=true`` adds sizes).
- ``GET /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=..`` (``list_repo_tree``), paginated by ``Link``.
- File bodies honour ``Range: bytes=N-`` and ``bytes=N-M`` (206 with ``Content-Range``).
- Errors carry the hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), so the
  client raises its own ``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``RemoteEntryNotFoundError``.

It never sends ``X-Xet-*`` headers nor a ``xet-auth`` link, so the client downloads over plain HTTP even with
hf_xet installed. Only model repos exist; revisions are ``main`` and the one commit. The server listens on
127.0.0.1 only and its threads are daemons; ``stop()`` is bounded even while a body is paused.
"""

from __future__ import annotations

import hashlib
import io
import json
import select
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

LFS_MIN_SIZE = 10 * 1024
CHUNK_SIZE = 64 * 1024
PAUSE_LIMIT_SECONDS = 60.0
RECORDED_HEADERS = ("Range", "Authorization")

# The bundled GGUF is ~100 MB: hash each file once per process, not once per test.
_sha256_cache: dict[tuple[str, int, int], str] = {}
_sha256_lock = threading.Lock()


def git_blob_sha1(content: bytes) -> str:
    """The git object id of ``content``: what the hub reports as a file's ``oid``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _sha256_lock:
        if key not in _sha256_cache:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            _sha256_cache[key] = digest.hexdigest()
        return _sha256_cache[key]


@dataclass(frozen=True)
class _HubFile:
    name: str  # "<repo_id>/<path in repo>"
    path: str
    source: Path | bytes
    size: int
    blob_id: str  # git sha1 of the content, or of the LFS pointer for an LFS file (as on the hub)
    sha256: str | None = None  # LFS files only
    pointer_size: int | None = None

    @classmethod
    def build(cls, repo_id: str, path: str, source: Path | bytes) -> _HubFile:
        name = f"{repo_id}/{path}"
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if size < LFS_MIN_SIZE:
            content = source if isinstance(source, bytes) else source.read_bytes()
            return cls(name, path, source, size, git_blob_sha1(content))
        sha256 = hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else _file_sha256(source)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
        return cls(name, path, source, size, git_blob_sha1(pointer), sha256, len(pointer))

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id

    def tree_entry(self) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.sha256:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    def open(self) -> BinaryIO:
        return io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source.open("rb")


class HubServer:
    """A Hugging Face Hub on 127.0.0.1 serving ``repos``; a context manager, or call ``stop()``.

    ``repos`` maps a repo id ("org/name") to ``{path in repo: Path or bytes}``; a Path is streamed from disk.
    Files are named ``"<repo_id>/<path in repo>"`` in ``bytes_served``, ``corrupt()`` and the like.

    - ``url``: the hub's base URL (``HF_ENDPOINT``); LFS bodies come from ``cdn_url``, another origin.
    - ``commit``: the commit every repo is at (default: derived from the contents).
    - ``bytes_served``: file content bytes written per file (GET bodies only), to tell a resume from a restart.
    - ``requests``: ``(method, path with query, {"Range"/"Authorization": value})`` in arrival order, on both
      origins (the CDN's paths start with ``/cdn/``).
    - ``page_size``: tree entries per page before a ``Link: <...>; rel="next"``.
    """

    def __init__(self, repos: dict[str, dict[str, Path | bytes]], *, commit: str | None = None,
                 bytes_per_second: float | None = None, page_size: int = 1000):
        self.repos = {repo_id: {path: _HubFile.build(repo_id, path, source) for path, source in sorted(files.items())}
                      for repo_id, files in repos.items()}
        self.commit = commit or hashlib.sha1(json.dumps(
            {repo_id: {path: f.etag for path, f in files.items()} for repo_id, files in self.repos.items()},
            sort_keys=True).encode()).hexdigest()
        self.page_size = page_size
        self.bytes_served: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self._bytes_per_second = bytes_per_second
        self._corrupt: dict[str, set[int]] = {}
        self._pause_after: int | None = None
        self._lock = threading.Lock()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._stopping = threading.Event()
        self._servers = [_Server(self, "hub"), _Server(self, "cdn")]
        self.url, self.cdn_url = (f"http://127.0.0.1:{server.server_address[1]}" for server in self._servers)
        self._threads = [threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                          name=f"hub-server-{server.role}", daemon=True)
                         for server in self._servers]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops listening and releases paused bodies; a body still being sent ends at its next chunk."""
        self._stopping.set()
        self._unpaused.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def corrupt(self, name: str, offset: int) -> None:
        """From now on, the byte at ``offset`` of file ``name`` is flipped in transit; its declared hashes stay."""
        with self._lock:
            self._corrupt.setdefault(name, set()).add(offset)

    def throttle(self, bytes_per_second: float | None) -> None:
        """Sets the rate of every body being sent, from its next chunk on; None removes the limit."""
        self._bytes_per_second = bytes_per_second

    def pause(self, after: int = 0) -> None:
        """Holds every file body once it has sent ``after`` bytes (counted per response) until ``resume()``.

        A body held longer than PAUSE_LIMIT_SECONDS is cut off, so a forgotten ``resume()`` cannot hang a test.
        Note that huggingface_hub gives up reading after HF_HUB_DOWNLOAD_TIMEOUT (10 s) and retries with a Range.
        """
        with self._lock:
            self._pause_after = after
            self._unpaused.clear()

    def resume(self) -> None:
        with self._lock:
            self._pause_after = None
            self._unpaused.set()

    # Used by the request handler --------------------------------------------------------------------

    def _record(self, method: str, path: str, headers) -> None:
        with self._lock:
            self.requests.append((method, path, {h: headers[h] for h in RECORDED_HEADERS if h in headers}))

    def _may_send(self, sent: int, wanted: int) -> int:
        """How many bytes the body may send now (0: stop), waiting while paused."""
        with self._lock:
            limit = self._pause_after
        if limit is not None and sent >= limit:
            if not self._unpaused.wait(PAUSE_LIMIT_SECONDS):
                return 0
            limit = None
        rate = self._bytes_per_second
        # About ten chunks a second when throttled, so a rate change takes effect quickly.
        size = CHUNK_SIZE if rate is None else max(1024, min(CHUNK_SIZE, int(rate / 10)))
        size = min(size, wanted, limit - sent if limit is not None else wanted)
        if rate is not None:
            # Waiting before the chunk, not after it, makes the last byte arrive no sooner than size / rate.
            self._stopping.wait(size / rate)
        return 0 if self._stopping.is_set() else size

    def _sent(self, name: str, count: int) -> None:
        with self._lock:
            self.bytes_served[name] = self.bytes_served.get(name, 0) + count

    def _transit(self, name: str, start: int, chunk: bytes) -> bytes:
        with self._lock:
            offsets = [o - start for o in self._corrupt.get(name, ()) if start <= o < start + len(chunk)]
        if not offsets:
            return chunk
        flipped = bytearray(chunk)
        for offset in offsets:
            flipped[offset] ^= 0xFF
        return bytes(flipped)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a body held by pause() or a client that stopped reading must not block stop()

    def __init__(self, hub: HubServer, role: str):
        self.hub, self.role = hub, role
        super().__init__(("127.0.0.1", 0), _Handler)


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a client that stops reading frees its thread
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives a test.
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, *, send_body: bool) -> None:
        hub = self.server.hub
        hub._record(self.command, self.path, self.headers)
        url = urlsplit(self.path)
        parts = url.path.lstrip("/").split("/")
        try:
            if self.server.role == "cdn":
                if parts[0] != "cdn" or len(parts) < 4:
                    raise _HubError(404, None, "Not found")
                self._send_file(self._file("/".join(parts[1:3]), unquote("/".join(parts[3:]))), send_body, cdn=True)
            elif parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api("/".join(parts[2:4]), parts[4:], parse_qs(url.query))
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve("/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:])), send_body)
            else:
                raise _HubError(404, None, "Not found")
        except _HubError as error:
            self._send_json(error.status, {"error": str(error)}, {
                **({"X-Error-Code": error.code} if error.code else {}), "X-Error-Message": str(error), **error.headers})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away: nothing to answer

    def _repo(self, repo_id: str, revision: str | None = None) -> dict[str, _HubFile]:
        hub = self.server.hub
        if repo_id not in hub.repos:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        if revision is not None and revision not in ("main", hub.commit):
            raise _HubError(404, "RevisionNotFound", "Invalid rev id")
        return hub.repos[repo_id]

    def _file(self, repo_id: str, path: str, revision: str | None = None) -> _HubFile:
        files = self._repo(repo_id, revision)
        if path not in files:
            raise _HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": self.server.hub.commit})
        return files[path]

    def _resolve(self, repo_id: str, revision: str, path: str, send_body: bool) -> None:
        hub = self.server.hub
        file = self._file(repo_id, path, revision)
        if file.sha256 is None:
            self._send_file(file, send_body, cdn=False)
            return
        self.send_response(302)
        for name, value in {"Location": f"{hub.cdn_url}/cdn/{repo_id}/{quote(path)}", "X-Repo-Commit": hub.commit,
                            "X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size),
                            "ETag": f'"{file.blob_id}"', "Content-Length": "0"}.items():
            self.send_header(name, value)
        self.end_headers()

    def _api(self, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        hub = self.server.hub
        if not rest or rest[0] == "revision":
            files = self._repo(repo_id, unquote(rest[1]) if len(rest) > 1 else None)
            with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = [{"rfilename": f.path, **({"size": f.size, "blobId": f.blob_id} if with_blobs else {}),
                         **({"lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": f.pointer_size}}
                            if with_blobs and f.sha256 else {})} for f in files.values()]
            self._send_json(200, {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                                  "sha": hub.commit, "private": False, "disabled": False, "gated": False,
                                  "tags": [], "siblings": siblings,
                                  "usedStorage": sum(f.size for f in files.values())})
        elif rest[0] == "tree" and len(rest) >= 2:
            self._tree(repo_id, unquote(rest[1]), unquote("/".join(rest[2:])).strip("/"), query)
        else:
            raise _HubError(404, None, "Not found")

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, list[str]]) -> None:
        files = self._repo(repo_id, revision)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder}/" if folder else ""
        entries = {}
        for path, file in files.items():
            if not path.startswith(prefix):
                continue
            segments = path[len(prefix):].split("/")
            # Like the hub: a recursive listing names every folder on the way, a flat one only the first level.
            for depth in range(1, (len(segments) if recursive else 1) + 1):
                entry = prefix + "/".join(segments[:depth])
                entries[entry] = file.tree_entry() if entry == path else {
                    "type": "directory", "oid": git_blob_sha1(entry.encode()), "size": 0, "path": entry}
        if folder and not entries:
            raise _HubError(404, "EntryNotFound", "Entry not found")
        listing = [entries[path] for path in sorted(entries)]
        start = int(query.get("cursor", ["0"])[0])
        end = start + self.server.hub.page_size
        headers = {}
        if end < len(listing):
            next_query = urlencode({**{k: v[0] for k, v in query.items()}, "cursor": end})
            headers["Link"] = f'<{self.server.hub.url}{urlsplit(self.path).path}?{next_query}>; rel="next"'
        self._send_json(200, listing[start:end], headers)

    def _send_file(self, file: _HubFile, send_body: bool, *, cdn: bool) -> None:
        hub = self.server.hub
        requested = _parse_range(self.headers["Range"], file.size) if send_body and "Range" in self.headers else None
        start, end = requested or (0, file.size)
        status = 200 if requested is None else 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{file.etag}"')
        if not cdn:
            self.send_header("X-Repo-Commit", hub.commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{file.size}")
        self.end_headers()
        if send_body:
            self._stream(file, start, end)

    def _stream(self, file: _HubFile, start: int, end: int) -> None:
        hub = self.server.hub
        sent = 0
        with file.open() as source:
            source.seek(start)
            while start + sent < end:
                size = hub._may_send(sent, end - start - sent)
                if size == 0 or self._client_left():
                    return
                chunk = hub._transit(file.name, start + sent, source.read(size))
                self.wfile.write(chunk)
                sent += len(chunk)
                hub._sent(file.name, len(chunk))

    def _client_left(self) -> bool:
        """Whether the client closed the connection: a cancelled download must not count as bytes served."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_json(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """``bytes=N-`` or ``bytes=N-M`` as [start, end); None for the forms this server ignores (whole file sent)."""
    unit, _, ranges = spec.partition("=")
    first, _, last = ranges.partition("-")
    if unit.strip() != "bytes" or "," in ranges or not first.strip().isdigit():
        return None
    start = int(first)
    end = min(int(last) + 1, size) if last.strip().isdigit() else size
    if start >= end:
        raise _HubError(416, None, "Range not satisfiable", {"Content-Range": f"bytes */{size}"})
    return start, end
