"""Download jobs: a registry entry's files from the Hugging Face hub, run outside the request.

Why threads in the web process (and not django-tasks or a process per job): a download is I/O that
huggingface_hub already runs in its own loop; a worker thread needs no extra service for the
embedded default (``make serve`` is one process), and cancelling is a flag the progress hook
reads. The job's state lives in the database (``ModelDownload``), so every web process and the
``pull_model`` command see the same progress and can cancel it. A job belongs to the process that
runs it (``worker``); when that process is gone (a restart, a crash), the next server process on
the host takes the job over at its first request and resumes it: partial files stay in the
staging folder and the client continues them with HTTP ranges. Jobs of another host are taken
over once their progress has not moved for ``STALE_AFTER``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta

import psutil
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.utils import timezone

from beautyai_site.api import errors
from models_app import hub
from models_app.serving.engines.model_files import is_hub_id, is_local_model_id
from models_app.models import ModelConfig, ModelDownload

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
STALE_AFTER = timedelta(minutes=2)
WORKER = f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.0f}"

# Cache clears and download starts of one model never overlap in this process; across processes
# the database row lock in ``exclusive`` does it (PostgreSQL; SQLite serialises writers anyway).
_model_locks: dict[str, threading.Lock] = {}
_model_locks_guard = threading.Lock()


def _model_lock(name: str) -> threading.Lock:
    with _model_locks_guard:
        return _model_locks.setdefault(name, threading.Lock())


# What an entry needs -----------------------------------------------------------------------------

def repo_of(model: ModelConfig) -> str | None:
    """The hub repo an entry is downloaded from; None for local paths and remote engines."""
    return _repo(model.model_id, model.engine)


def _repo(model_id: str, engine: str) -> str | None:
    model_id = model_id.strip()
    if engine == "openai" or is_local_model_id(model_id) or not is_hub_id(model_id):
        return None
    return model_id


def revision_of(model: ModelConfig, asked: str | None = None) -> str:
    return _revision(model.parameters or {}, asked)


def _revision(parameters: dict, asked: str | None = None) -> str:
    return asked or parameters.get("revision") or "main"


def token_for(model: ModelConfig) -> str | None:
    """A gated model's token, read from the environment variable the entry names (never stored)."""
    from models_app.serving.engines.openai_engine import api_key_env_allowed

    name = (model.parameters or {}).get("hf_token_env")
    if not name:
        return None
    if not api_key_env_allowed(name):
        raise errors.ValidationError("parameters.hf_token_env: must name a BEAUTYAI_REMOTE_KEY_* variable")
    return os.environ.get(name) or None


def files_present(model: ModelConfig) -> bool:
    repo = repo_of(model)
    if repo is None:
        return True
    return _snapshot_present(repo, model.engine, model.quantization, model.parameters or {})


def _snapshot_present(repo: str, engine: str, quantization: str, parameters: dict, cache=None) -> bool:
    return hub.snapshot_present(repo, revision=_revision(parameters), engine=engine,
                                quantization=quantization, parameters=parameters, cache=cache)


_PARAMETER_KEYS = ("filename", "gguf_file", "revision")  # what files_present reads of an entry's parameters


def status_columns() -> dict:
    """Annotations for a ``.values()`` listing of entries that lets ``download_statuses`` answer with
    no query of its own: the parameters ``files_present`` reads and the latest job's status."""
    from django.db.models import OuterRef, Subquery
    from django.db.models.fields.json import KT

    latest = ModelDownload.objects.filter(model_name=OuterRef("name")).order_by("-created_at", "-id")
    return {"download_latest": Subquery(latest.values("status")[:1]),
            **{f"download_{key}": KT(f"parameters__{key}") for key in _PARAMETER_KEYS}}


def download_statuses(rows: list[dict]) -> dict[str, str]:
    """``present | missing | downloading | failed`` by name, for rows with name, model_id, engine and
    quantization. Local and remote entries are present with no query. Hub entries cost two queries
    for the whole page (their parameters, their latest jobs), or none when the rows carry
    ``status_columns()`` (the model list: this is most of what it would otherwise cost per request)."""
    out: dict[str, str] = {}
    hub_rows = []
    # From the row's values alone: a model instance per row cost more than the rest of this.
    for row in rows:
        repo = _repo(row["model_id"], row["engine"])
        if repo is None:
            out[row["name"]] = "present"
        else:
            hub_rows.append((repo, row))
    if not hub_rows:
        return out
    if all("download_latest" in row for _, row in hub_rows):
        parameters = {row["name"]: {key: row[f"download_{key}"] for key in _PARAMETER_KEYS
                                    if row.get(f"download_{key}") is not None} for _, row in hub_rows}
        latest = {row["name"]: row["download_latest"] for _, row in hub_rows}
    else:
        names = [row["name"] for _, row in hub_rows]
        parameters = dict(ModelConfig.objects.filter(name__in=names).values_list("name", "parameters"))
        latest = {}
        for name, status in (ModelDownload.objects.filter(model_name__in=names)
                             .order_by("model_name", "-created_at", "-id").values_list("model_name", "status")):
            latest.setdefault(name, status)
    cache = hub.cache_dir()
    # One listing of the cache folder answers every entry never downloaded (most of a registry): a
    # failed open per such entry cost more than the listing.
    try:
        folders = set(os.listdir(cache))
    except OSError:
        folders = set()
    for repo, row in hub_rows:
        name = row["name"]
        status = latest.get(name)
        if status in ModelDownload.ACTIVE:
            out[name] = "downloading"
        elif (hub.repo_dir(repo, cache).name in folders
              and _snapshot_present(repo, row["engine"], row["quantization"], parameters.get(name) or {}, cache)):
            out[name] = "present"
        else:
            out[name] = "failed" if status == ModelDownload.FAILED else "missing"
    return out


def missing_files_error(model: ModelConfig) -> errors.ConflictError:
    """The 409 a load answers when the entry's files are not on this machine."""
    return errors.ConflictError(
        f"Model '{model.name}' is not downloaded yet; download it first (POST /models/{model.name}/download, "
        f"or load with {{\"download\": true}}).",
        details={"download_required": True, "size_bytes": _size_if_known(model)},
    )


def _size_if_known(model: ModelConfig) -> int | None:
    job = ModelDownload.objects.filter(model=model).exclude(bytes_total=0).first()
    return job.bytes_total if job is not None else None


# Starting, cancelling, reading -------------------------------------------------------------------

def download_start(*, model: ModelConfig, user=None, revision: str | None = None,
                   load_when_done: bool = False, run_here: bool = True) -> tuple[ModelDownload, bool]:
    """The model's active job, or a new one; ``(job, created)``.

    The hub is asked for the commit and the file list before anything is stored, so an unknown repo,
    a missing quantisation or too little disk space answer at once. ``run_here=False`` leaves the
    job queued for the caller to run (the pull_model command runs it in the foreground).
    """
    repo = repo_of(model)
    if repo is None:
        raise errors.ValidationError(
            f"model_id: Model '{model.name}' is {'a remote engine' if model.engine == 'openai' else 'a local path'}; "
            "there is nothing to download.")
    active = ModelDownload.objects.filter(model=model, status__in=ModelDownload.ACTIVE).first()
    if active is not None:
        if load_when_done and not active.load_when_done:
            # "Download, then load" joins a running download: it loads when that one ends.
            ModelDownload.objects.filter(pk=active.pk).update(load_when_done=True)
            active.refresh_from_db()
        return active, False
    token = token_for(model)
    try:
        plan = hub.plan_download(repo, revision=revision_of(model, revision), engine=model.engine,
                                 quantization=model.quantization, parameters=model.parameters or {}, token=token)
    except hub.HubError as exc:
        raise _hub_request_error(str(exc)) from None
    needed, free = hub.bytes_needed(plan), hub.free_bytes()
    if needed > free:
        raise errors.ConflictError(
            f"Not enough disk space for Model '{model.name}': {needed} bytes needed, {free} free.",
            details={"needed_bytes": needed, "free_bytes": free})
    with exclusive(model):
        try:
            with transaction.atomic():
                job = ModelDownload.objects.create(
                    model=model, model_name=model.name, repo_id=repo, revision=plan.revision, plan=plan.to_json(),
                    bytes_total=plan.total_bytes, files_total=len(plan.files), load_when_done=load_when_done,
                    requested_by=user if getattr(user, "pk", None) else None, worker=WORKER)
        except IntegrityError:
            # Another request created the active job between our check and the insert.
            return ModelDownload.objects.get(model=model, status__in=ModelDownload.ACTIVE), False
    if run_here:
        transaction.on_commit(lambda: workers.submit(job.pk))
    return job, True


def _hub_request_error(message: str) -> errors.APIError:
    field = message.split(":", 1)[0]
    if field in ("model_id", "quantization", "revision", "parameters.filename"):
        return errors.ValidationError(message, details={"fields": {field: [message.split(": ", 1)[-1]]}})
    return errors.ServiceUnavailableError(f"The model hub could not answer: {message}")


class exclusive:
    """Holds the model's lock (this process) and its row lock (other processes) for a start or a clear."""

    def __init__(self, model: ModelConfig):
        self.model = model
        self.lock = _model_lock(model.name)

    def __enter__(self):
        if not self.lock.acquire(timeout=30):
            raise errors.ConflictError(f"Model '{self.model.name}' is busy with a cache change; try again.")
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        ModelConfig.objects.select_for_update().filter(pk=self.model.pk).first()
        return self

    def __exit__(self, *exc):
        try:
            return self.atomic.__exit__(*exc)
        finally:
            self.lock.release()


def download_cancel(*, model: ModelConfig, discard: bool = False) -> ModelDownload:
    """Cancels the model's active job; its partial files stay for a resume unless ``discard``."""
    job = ModelDownload.objects.filter(model=model, status__in=ModelDownload.ACTIVE).first()
    if job is None:
        raise errors.NotFoundError(f"No download of Model '{model.name}' is running.")
    ModelDownload.objects.filter(pk=job.pk, status__in=ModelDownload.ACTIVE).update(
        status=ModelDownload.CANCELLED, finished_at=timezone.now(), eta_seconds=None, speed_bytes_per_second=0.0,
        error="cancelled; partial data discarded" if discard else "cancelled; partial data kept for a resume")
    workers.cancel(job.pk, discard=discard)
    if discard and not workers.running_here(job.pk):
        hub.discard_staging(job.repo_id)
    job.refresh_from_db()
    return job


def download_latest(model: ModelConfig) -> ModelDownload | None:
    return ModelDownload.objects.filter(model=model).first()


def download_dict(job: ModelDownload) -> dict:
    return {
        "download_id": job.pk,
        "model_name": job.model_name,
        "repo_id": job.repo_id,
        "revision": job.revision,
        "commit": (job.plan or {}).get("commit"),
        "status": job.status,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "files_done": job.files_done,
        "files_total": job.files_total,
        "progress": round(job.bytes_done / job.bytes_total, 4) if job.bytes_total else None,
        "speed_bytes_per_second": round(job.speed_bytes_per_second, 1),
        "eta_seconds": None if job.eta_seconds is None else round(job.eta_seconds, 1),
        "error": job.error or None,
        "load_when_done": job.load_when_done,
        "requested_by": job.requested_by.get_username() if job.requested_by_id else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


# Running -------------------------------------------------------------------------------------------

class _Progress:
    """Counts bytes and writes progress at most every PROGRESS_INTERVAL_S. A write that finds the job
    no longer downloading means it was cancelled (in any process): the download stops."""

    def __init__(self, job: ModelDownload, cancel: threading.Event):
        self.job = job
        self.cancel = cancel
        self.done = hub.partial_bytes(hub.Plan.from_json(job.plan))
        self.files = 0
        self.reported = self.done
        self.last_write = 0.0
        self.window = (time.monotonic(), self.done)
        self.speed = 0.0

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def on_bytes(self, n: int) -> None:
        if self.cancel.is_set():
            raise hub.DownloadCancelled()
        self.done += n
        now = time.monotonic()
        if now - self.last_write >= PROGRESS_INTERVAL_S:
            self.write(now)

    def on_file_done(self, _file) -> None:
        self.files += 1
        self.write(time.monotonic())

    def write(self, now: float, status: str = ModelDownload.DOWNLOADING) -> None:
        started, start_bytes = self.window
        if now - started >= 1.0:
            rate = (self.done - start_bytes) / (now - started)
            self.speed = rate if not self.speed else 0.5 * self.speed + 0.5 * rate
            self.window = (now, self.done)
        self.reported = min(max(self.reported, self.done), self.job.bytes_total or self.done)
        left = max(0, self.job.bytes_total - self.reported)
        updated = ModelDownload.objects.filter(pk=self.job.pk, status__in=(ModelDownload.DOWNLOADING,
                                                                            ModelDownload.VERIFYING)).update(
            status=status, bytes_done=self.reported, files_done=self.files, speed_bytes_per_second=self.speed,
            eta_seconds=left / self.speed if self.speed > 0 else None)
        self.last_write = now
        if not updated:
            self.cancel.set()
            raise hub.DownloadCancelled()

    def on_verifying(self) -> None:
        self.write(time.monotonic(), status=ModelDownload.VERIFYING)


def run(job_id: int, cancel: threading.Event | None = None) -> ModelDownload:
    """Runs a queued job to its end in this thread; the final row is returned."""
    cancel = cancel or threading.Event()
    claimed = ModelDownload.objects.filter(pk=job_id, status=ModelDownload.QUEUED).update(
        status=ModelDownload.DOWNLOADING, started_at=timezone.now(), worker=WORKER, error="")
    job = ModelDownload.objects.select_related("model").get(pk=job_id)
    if not claimed:
        return job
    progress = _Progress(job, cancel)
    outcome, error = ModelDownload.DONE, ""
    try:
        hub.fetch(hub.Plan.from_json(job.plan), token=token_for(job.model), on_bytes=progress.on_bytes,
                  on_file_done=progress.on_file_done, on_verifying=progress.on_verifying, cancelled=progress.cancelled)
    except hub.DownloadCancelled:
        outcome = ModelDownload.CANCELLED
    except (hub.HubError, errors.APIError) as exc:
        outcome, error = ModelDownload.FAILED, str(getattr(exc, "message", exc))
    except Exception as exc:
        logger.exception("download of %s failed", job.model_name)
        outcome, error = ModelDownload.FAILED, f"download failed: {exc.__class__.__name__}"
    if outcome == ModelDownload.DONE:
        progress.done, progress.files = job.bytes_total, job.files_total
        progress.reported = job.bytes_total
    fields = {"status": outcome, "finished_at": timezone.now(), "eta_seconds": None,
              "speed_bytes_per_second": 0.0, "bytes_done": progress.reported, "files_done": progress.files}
    if error:
        fields["error"] = error
    # A cancel that won the race keeps its own status and message.
    ModelDownload.objects.filter(pk=job.pk, status__in=ModelDownload.ACTIVE).update(**fields)
    job.refresh_from_db()
    if outcome == ModelDownload.DONE and job.load_when_done:
        _load_after(job)
    logger.info("download of %s ended: %s", job.model_name, job.status)
    return job


def pull(model: ModelConfig, *, revision: str | None = None, on_progress=lambda job: None,
         poll_s: float = 0.2) -> ModelDownload:
    """Downloads ``model`` in the foreground (the pull_model command): starts the job here, or follows
    the one another process already runs. Ctrl-C (KeyboardInterrupt) cancels it, keeping partial files."""
    job, created = download_start(model=model, revision=revision, run_here=False)
    cancel = threading.Event()
    runner = threading.Thread(target=run, args=(job.pk, cancel), daemon=True, name=f"download-{job.pk}") \
        if created else None
    if runner is not None:
        runner.start()
    try:
        while True:
            job.refresh_from_db()
            on_progress(job)
            if not job.active and (runner is None or not runner.is_alive()):
                return job
            time.sleep(poll_s)
    except KeyboardInterrupt:
        cancel.set()
        try:
            download_cancel(model=model)
        except errors.NotFoundError:
            pass  # it ended meanwhile
        if runner is not None:
            runner.join()
        job.refresh_from_db()
        return job


def _load_after(job: ModelDownload) -> None:
    from models_app import services

    try:
        services.model_load(model=job.model)
    except errors.APIError as exc:
        ModelDownload.objects.filter(pk=job.pk).update(error=f"downloaded, but the load failed: {exc.message}")
        job.refresh_from_db()


class _Workers:
    """At most BEAUTYAI_MAX_DOWNLOADS jobs run at once in this process; the rest wait queued."""

    def __init__(self):
        self._lock = threading.Lock()
        self._slots: threading.BoundedSemaphore | None = None
        self._running: dict[int, tuple[threading.Event, list[bool]]] = {}

    def submit(self, job_id: int) -> None:
        with self._lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(settings.MAX_DOWNLOADS)
            if job_id in self._running:
                return
            self._running[job_id] = (threading.Event(), [False])
        threading.Thread(target=self._run, args=(job_id,), daemon=True, name=f"download-{job_id}").start()

    def _run(self, job_id: int) -> None:
        cancel, discard = self._running[job_id]
        try:
            with self._slots:
                close_old_connections()
                job = run(job_id, cancel)
                if discard[0] or (job.status == ModelDownload.CANCELLED and "discarded" in job.error):
                    hub.discard_staging(job.repo_id)
        except Exception:
            logger.exception("download worker failed")
        finally:
            with self._lock:
                self._running.pop(job_id, None)
            close_old_connections()

    def cancel(self, job_id: int, *, discard: bool) -> None:
        with self._lock:
            entry = self._running.get(job_id)
        if entry is not None:
            entry[1][0] = discard
            entry[0].set()

    def running_here(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._running

    def wait_idle(self, timeout: float) -> bool:
        """For tests and shutdown: True once no job runs here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return True
            time.sleep(0.05)
        return False


workers = _Workers()


# Taking over jobs whose process is gone -------------------------------------------------------------

def _worker_gone(worker: str, updated_at) -> bool:
    host, _, rest = worker.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return timezone.now() - updated_at > STALE_AFTER
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" != started
    except (psutil.Error, ValueError):
        return True


def resume_interrupted() -> list[int]:
    """Queues again, in this process, the active jobs whose process is gone; returns their ids."""
    taken = []
    for job in ModelDownload.objects.filter(status__in=ModelDownload.ACTIVE).exclude(worker=WORKER):
        if not _worker_gone(job.worker, job.updated_at):
            continue
        # Compare-and-set on the old worker: of several processes starting at once, one takes it.
        if ModelDownload.objects.filter(pk=job.pk, worker=job.worker, status__in=ModelDownload.ACTIVE).update(
                status=ModelDownload.QUEUED, worker=WORKER):
            logger.info("resuming the download of %s (its process %s is gone)", job.model_name, job.worker)
            workers.submit(job.pk)
            taken.append(job.pk)
    return taken

