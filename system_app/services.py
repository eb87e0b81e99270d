"""System services: measurements, memory and cache clearing, performance, restart, logs, readiness.

Views call one of these; they raise typed errors from beautyai_site.api.errors. Runners are reached
through the EngineManager only, and only once something started it: a status read never starts one.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import threading
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path

import django
import psutil
from django.conf import settings
from django.db import connection
from django.db.models import Avg, Count, Q
from django.utils import timezone

from accounts.permissions import has_global
from beautyai_site.api import errors
from beautyai_site.api.envelope import iso
from models_app import downloads, selectors, services as models_services
from models_app.models import ModelConfig, ModelDownload
from models_app.services import (
    is_hub_id,
    cached_repos,
    default_model,
    delete_cached_repos,
    hub_cache_dir,
    model_get_for_user,
    model_names_readable_by,
    models_readable_by,
    only_readable,
)
from system_app import probes
from system_app.logging import writer
from system_app.models import LogRecord, RequestMetric, ResourceSample, UserPreference
from system_app.probes import gb, mb, percent

logger = logging.getLogger(__name__)

LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def _runners() -> list:
    """RunnerInfo of every loaded or loading model; empty while nothing has started the manager."""
    return selectors.runners()


def _readable_runners(user) -> list:
    """The runners of the models ``user`` may read: a status body never names another model."""
    readable = model_names_readable_by(user)
    return [info for info in _runners() if readable is None or info.name in readable]


def _runner_memory(runners: list) -> list[dict]:
    gpu_by_pid = probes.gpu_memory_by_pid()
    rows = []
    for info in runners:
        row = {
            "model_name": info.name,
            "status": info.status,
            "pid": info.pid,
            "memory_usage_mb": round(info.memory_usage_mb or 0.0, 2),
            "active_requests": info.active_requests,
            "queue_depth": info.queue_depth,
        }
        if info.node_id:
            # A runner on the Ray cluster measured itself on its node; its pid means nothing here.
            row.update(rss_mb=round((info.memory_usage_mb or 0.0) - (info.gpu_memory_mb or 0.0), 2),
                       gpu_memory_mb=round(info.gpu_memory_mb or 0.0, 2),
                       node_id=info.node_id, node_address=info.node_address)
        else:
            process = probes.process_memory(info.pid) if info.pid else None
            row.update(rss_mb=mb(process.rss_bytes) if process else 0.0, gpu_memory_mb=mb(gpu_by_pid.get(info.pid, 0)))
        rows.append(row)
    return rows


def _gpu_device(reading: probes.GpuReading) -> dict:
    return {
        "index": reading.index,
        "name": reading.name,
        "memory_total_gb": gb(reading.memory_total_bytes),
        "memory_used_gb": gb(reading.memory_used_bytes),
        "memory_usage_percent": percent(reading.memory_used_bytes, reading.memory_total_bytes),
        "utilization_percent": reading.utilization_percent,
        "temperature_c": reading.temperature_c,
    }


# Status, memory, resources ---------------------------------------------------------------------

def system_status(*, detailed: bool, user) -> dict:
    """SystemStatusResponse's four blocks. Without a GPU: gpu_available false, gpu_name null, figures 0.

    Models appear only when ``user`` may read them (the default model included).
    """
    memory = psutil.virtual_memory()
    readings = probes.gpus()
    gpu = probes.gpu_summary(readings)
    runners = _readable_runners(user)
    loaded = sorted(info.name for info in runners if info.status == "loaded")
    default = default_model()
    shown_default = only_readable(user, [default.name] if default else [])
    gpu_info = {
        "gpu_available": gpu.available,
        "gpu_name": gpu.name,
        "gpu_memory_used_gb": gb(gpu.memory_used_bytes),
        "gpu_utilization_percent": gpu.utilization_percent,
        "gpu_count": gpu.count,
    }
    model_info = {"loaded_models": loaded, "total_loaded": len(loaded),
                  "default_model": shown_default[0] if shown_default else None}
    if detailed:
        gpu_info["devices"] = [_gpu_device(reading) for reading in readings]
        model_info["runners"] = _runner_memory(runners)
    return {
        "system_info": {
            "platform": platform.platform(),
            "python_version": platform.python_version(),
            "framework_version": probes.package_version("beautyai"),
            "django_version": django.get_version(),
            "drf_version": probes.package_version("djangorestframework"),
            "torch_version": probes.package_version("torch"),
        },
        "memory_info": {
            "total_memory_gb": gb(memory.total),
            "available_memory_gb": gb(memory.available),
            "gpu_memory_gb": gb(gpu.memory_total_bytes),
            "memory_usage_percent": memory.percent,
        },
        "gpu_info": gpu_info,
        "model_info": model_info,
    }


def memory_status(*, user) -> dict:
    """System, GPU and web-process memory, and each readable model's runner. ``used`` is total minus available."""
    memory = psutil.virtual_memory()
    gpu = probes.gpu_summary(probes.gpus())
    process = probes.process_memory()
    return {
        "system_memory": {
            "total_gb": gb(memory.total),
            "available_gb": gb(memory.available),
            "used_gb": gb(memory.total - memory.available),
            "usage_percent": memory.percent,
        },
        "gpu_memory": {
            "gpu_available": gpu.available,
            "total_gb": gb(gpu.memory_total_bytes),
            "available_gb": gb(gpu.memory_total_bytes - gpu.memory_used_bytes),
            "used_gb": gb(gpu.memory_used_bytes),
            "usage_percent": gpu.memory_percent,
        },
        "process_memory": {"pid": os.getpid(), "rss_mb": mb(process.rss_bytes), "vms_mb": mb(process.vms_bytes)},
        "runners": _runner_memory(_readable_runners(user)),
    }


def resources_status() -> dict:
    """CPU from the sampler's meter (never a blocking psutil.cpu_percent), memory, GPU, data disk, network."""
    memory = psutil.virtual_memory()
    gpu = probes.gpu_summary(probes.gpus())
    disk = psutil.disk_usage(str(settings.DATA_DIR))
    network = psutil.net_io_counters()
    return {
        "cpu": {
            "usage_percent": probes.cpu_meter.current(),
            "cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "frequency_mhz": probes.cpu_frequency_mhz(),
            "sampled_at": iso(probes.cpu_meter.sampled_at),
        },
        "memory": {
            "total_gb": gb(memory.total),
            "available_gb": gb(memory.available),
            "usage_percent": memory.percent,
        },
        "gpu": {
            "gpu_available": gpu.available,
            "gpu_count": gpu.count,
            "usage_percent": gpu.utilization_percent,
            "memory_usage_percent": gpu.memory_percent,
            "temperature_c": gpu.temperature_c,
        },
        "disk": {"total_gb": gb(disk.total), "available_gb": gb(disk.free), "usage_percent": disk.percent},
        "network": {
            "bytes_sent": network.bytes_sent if network else 0,
            "bytes_received": network.bytes_recv if network else 0,
        },
    }


def _memory_snapshot() -> dict:
    memory = psutil.virtual_memory()
    gpu = probes.gpu_summary(probes.gpus())
    process = probes.process_memory()
    return {
        "system_available_mb": mb(memory.available),
        "process_rss_mb": mb(process.rss_bytes),
        "runners_mb": round(sum(info.memory_usage_mb or 0.0 for info in _runners()), 2),
        "gpu_used_mb": mb(gpu.memory_used_bytes),
    }


def memory_clear(*, force: bool, user) -> dict:
    """Collects garbage here, asks every runner to release its caches; with ``force``, unloads idle models.

    "Idle" is read just before the unload, so a generation that starts in between is cancelled by
    it; an operator who passes force accepts that. The lists name only models ``user`` may read.
    """
    before = _memory_snapshot()
    collected = gc.collect()
    unloaded = models_services.models_unload_idle() if force else []
    released = models_services.models_release_caches()
    after = _memory_snapshot()
    return {
        "force": force,
        "gc_collected_objects": collected,
        "caches_released": only_readable(user, released),
        "models_unloaded": only_readable(user, unloaded),
        "memory_before": before,
        "memory_after": after,
        "freed_mb": {
            "process_rss_mb": round(before["process_rss_mb"] - after["process_rss_mb"], 2),
            "runners_mb": round(before["runners_mb"] - after["runners_mb"], 2),
            "gpu_used_mb": round(before["gpu_used_mb"] - after["gpu_used_mb"], 2),
        },
    }


# Hugging Face cache ------------------------------------------------------------------------------

def _cache_location(user) -> str:
    """The cache folder; its absolute path (which names the server's home or layout) for admins only."""
    return str(hub_cache_dir()) if has_global(user, "admin") else "$HF_HOME/hub"


def _cached_repos():
    return cached_repos(hub_cache_dir())


def _uses(model_id: str | None, repo) -> bool:
    """Whether a model with this model_id reads from ``repo``: its hub id, or a local path inside the repo."""
    if not model_id:
        return False
    if is_hub_id(model_id):
        return repo.repo_type == "model" and model_id == repo.repo_id
    return Path(os.path.realpath(model_id)).is_relative_to(repo.repo_path.resolve())


def cache_status(*, detailed: bool, user) -> dict:
    _, repos = _cached_repos()
    stamps = [repo.last_modified for repo in repos]
    total = sum(repo.size_on_disk for repo in repos)
    data = {
        "total_cache_size_gb": gb(total),
        "total_cache_size_bytes": total,
        "cache_entries": len(repos),
        "cache_location": _cache_location(user),
        "oldest_entry": iso(min(stamps)) if stamps else None,
        "newest_entry": iso(max(stamps)) if stamps else None,
    }
    if detailed:
        registry = list(models_readable_by(user).values_list("name", "model_id"))
        runners = _readable_runners(user)
        data["repos"] = [{
            "repo_id": repo.repo_id,
            "repo_type": repo.repo_type,
            "size_bytes": repo.size_on_disk,
            "size_gb": gb(repo.size_on_disk),
            "nb_files": repo.nb_files,
            "revisions": sorted(({"commit_hash": rev.commit_hash, "refs": sorted(rev.refs)} for rev in repo.revisions),
                                key=lambda rev: rev["commit_hash"]),
            "last_modified": iso(repo.last_modified),
            "last_accessed": iso(repo.last_accessed),
            "registry_models": sorted(name for name, model_id in registry if _uses(model_id, repo)),
            "loaded_models": sorted(info.name for info in runners if _uses(info.model_id, repo)),
        } for repo in repos]
    return data


def cache_clear(*, model_name: str | None, force: bool, user) -> dict:
    """Removes ``model_name``'s repo, or every repo; a repo a loaded model reads from only with ``force``.

    Without a model name and without force, repos in use are kept and listed. Deletion goes through
    huggingface_hub's delete strategy on whole repos, which removes folders inside the cache only.
    A model ``user`` may not read is named neither in the answer nor in an error, and cannot be
    chosen by name (404, as if missing). A repo being downloaded into is never cleared.
    """
    if model_name is not None:
        model = model_get_for_user(user=user, name=model_name)
        # Held while the files go: a download of this model cannot start meanwhile.
        with downloads.exclusive(model):
            if ModelDownload.objects.filter(model=model, status__in=ModelDownload.ACTIVE).exists():
                raise errors.ConflictError(f"Model '{model_name}' is being downloaded; cancel the download first.")
            return _cache_clear(model=model, force=force, user=user)
    return _cache_clear(model=None, force=force, user=user)


def _cache_clear(*, model: ModelConfig | None, force: bool, user) -> dict:
    cache, repos = _cached_repos()
    if model is not None:
        repos = [repo for repo in repos if _uses(model.model_id, repo)]
    else:
        downloading = set(ModelDownload.objects.filter(status__in=ModelDownload.ACTIVE).values_list("repo_id", flat=True))
        repos = [repo for repo in repos if repo.repo_id not in downloading]
    model_name = model.name if model is not None else None
    runners = _runners()
    users = {repo.repo_path: sorted(info.name for info in runners if _uses(info.model_id, repo)) for repo in repos}
    busy = [repo for repo in repos if users[repo.repo_path]]
    if busy and not force:
        if model_name is not None:
            raise errors.ConflictError(
                f"Model '{model_name}' is loaded; unload it first or pass force=true.",
                details={"loaded_models": only_readable(
                    user, sorted({name for repo in busy for name in users[repo.repo_path]}))},
            )
        repos = [repo for repo in repos if not users[repo.repo_path]]
    unloaded = []
    if force:
        for name in sorted({name for repo in busy for name in users[repo.repo_path]}):
            if models_services.model_unload(name=name):
                unloaded.append(name)
    freed = delete_cached_repos(cache, repos)
    return {
        "model_name": model_name,
        "force": force,
        "removed_repos": [repo.repo_id for repo in repos],
        "kept_repos": [] if force else [
            {"repo_id": repo.repo_id, "loaded_models": only_readable(user, users[repo.repo_path])} for repo in busy],
        "models_unloaded": only_readable(user, unloaded),
        "freed_bytes": freed,
        "freed_gb": gb(freed),
        "cache_location": _cache_location(user),
    }


# Performance and retention -------------------------------------------------------------------------

def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def performance_metrics(*, window_minutes: int) -> dict:
    """Aggregated in SQL over the last ``window_minutes``. An error is any status of 400 or more.

    Averages over no rows are null (nothing was measured); rates over no requests are 0.
    """
    now = timezone.now()
    since = now - timedelta(minutes=window_minutes)
    requests = RequestMetric.objects.filter(created_at__gte=since).aggregate(
        total=Count("id"), successful=Count("id", filter=Q(status_code__lt=400)), avg_ms=Avg("duration_ms"))
    samples = ResourceSample.objects.filter(created_at__gte=since).aggregate(
        count=Count("id"), memory=Avg("memory_percent"), gpu=Avg("gpu_percent"))
    total = requests["total"]
    return {
        "time_window_minutes": window_minutes,
        "metrics": {
            "avg_response_time_ms": _rounded(requests["avg_ms"]),
            "total_requests": total,
            "successful_requests": requests["successful"],
            "error_rate_percent": percent(total - requests["successful"], total),
            "throughput_requests_per_minute": round(total / window_minutes, 3),
            "avg_memory_usage_percent": _rounded(samples["memory"], 2),
            "avg_gpu_usage_percent": _rounded(samples["gpu"], 2),
            "resource_samples": samples["count"],
        },
        "timestamp": iso(now),
    }


def prune_old_rows(*, now: datetime | None = None) -> dict[str, int]:
    """Deletes request metrics and resource samples past their retention, and old log records."""
    now = now or timezone.now()
    metrics_cutoff = now - timedelta(days=float(settings.METRICS_RETENTION_DAYS))
    logs_cutoff = now - timedelta(days=float(settings.LOG_RETENTION_DAYS))
    return {
        "request_metrics": RequestMetric.objects.filter(created_at__lt=metrics_cutoff).delete()[0],
        "resource_samples": ResourceSample.objects.filter(created_at__lt=metrics_cutoff).delete()[0],
        "log_records": LogRecord.objects.filter(created_at__lt=logs_cutoff).delete()[0],
    }


# Restart ---------------------------------------------------------------------------------------------

_restart_lock = threading.Lock()


def _drain(timeout_s: float) -> int:
    """Waits until no generation runs or waits; returns how many there were. ConflictError on timeout."""
    waiting = selectors.generations_in_flight()
    deadline = time.monotonic() + timeout_s
    while (left := selectors.generations_in_flight()) > 0:
        if time.monotonic() >= deadline:
            raise errors.ConflictError(
                f"{left} generation(s) still running after {timeout_s:g} s; nothing was stopped. "
                "Retry later, or pass force=true to cancel them.",
                details={"in_flight_requests": left, "drain_timeout_seconds": timeout_s},
            )
        time.sleep(0.05)
    return waiting


def _apply_settings() -> dict:
    """Re-applies the settings the manager was built from (limits may have changed since it started)."""
    state = {
        "memory_budget_mb": float(settings.MEMORY_BUDGET_MB),
        "max_loaded_models": int(settings.MAX_LOADED_MODELS),
        "default_keep_alive_s": float(settings.KEEP_ALIVE_SECONDS),
        "load_timeout_s": float(settings.LOAD_TIMEOUT_SECONDS),
    }
    models_services.models_configure(**state)
    return state


def system_restart(*, force: bool) -> dict:
    """Stops taking generations, drains them (or cancels them with ``force``), stops every runner,
    re-applies settings, re-reads the registry and reloads the models that were loaded.

    The web process itself keeps running (no exec): its settings come from the environment at start.
    """
    if not _restart_lock.acquire(blocking=False):
        raise errors.ConflictError("A restart is already in progress.")
    started = time.monotonic()
    # The chat layer checks selectors.accepting_generations() and answers 503 until the restart is over.
    models_services.generations_pause()
    try:
        previous = [info.name for info in selectors.runners()]
        drained = cancelled = 0
        if force:
            cancelled = selectors.generations_in_flight()
        elif previous:
            drained = _drain(float(settings.RESTART_DRAIN_TIMEOUT_SECONDS))
        drain_s = time.monotonic() - started if previous else 0.0
        # A restart also picks up upgraded libraries: the spares, which imported the old ones, stop too.
        stopped = models_services.models_stop_all()
        applied = _apply_settings()
        by_name = {model.name: model for model in ModelConfig.objects.all()}
        reloaded, failed = [], []
        for name in previous:
            model = by_name.get(name)
            if model is None:
                failed.append({"model_name": name, "error": "no longer in the registry"})
                continue
            try:
                state = models_services.model_load(model=model)
            except errors.APIError as exc:
                failed.append({"model_name": name, "error": exc.message})
                continue
            reloaded.append({"model_name": name, "pid": state["pid"], "load_time_seconds": state["load_time_seconds"]})
    finally:
        models_services.generations_resume()
        _restart_lock.release()
    return {
        "force": force,
        "drained_requests": drained,
        "cancelled_requests": cancelled,
        "drain_seconds": round(drain_s, 3),
        "models_stopped": stopped,
        "models_reloaded": reloaded,
        "models_failed": failed,
        "settings_applied": applied,
        "registry_models": len(by_name),
        "duration_seconds": round(time.monotonic() - started, 3),
    }


# Logs ---------------------------------------------------------------------------------------------

def logs_recent(*, level: str, lines: int) -> dict:
    """The newest ``lines`` records at ``level`` or above, returned oldest first (newest last, like tail)."""
    rows = list(LogRecord.objects.filter(levelno__gte=LOG_LEVELS[level]).order_by("-created_at", "-id")[:lines])
    rows.reverse()
    return {
        "log_level": level,
        "lines_requested": lines,
        "logs": [{"timestamp": iso(row.created_at), "level": row.level, "message": row.message, "source": row.source}
                 for row in rows],
        "total_lines": len(rows),
        "order": "oldest_first",
        "dropped_records": writer.dropped,
    }


# Readiness ---------------------------------------------------------------------------------------

def _database_ready() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


def _migrations_applied() -> bool:
    from django.db.migrations.executor import MigrationExecutor

    # Every migration of the graph, not the plan to its leaves: a plan is empty when a leaf is recorded
    # as applied, even if a migration before it is not.
    loader = MigrationExecutor(connection).loader
    return set(loader.graph.nodes) <= set(loader.applied_migrations)


def _channel_layer_ready() -> bool:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


def _check(probe) -> str:
    try:
        return "ok" if probe() else "failed"
    except Exception as exc:  # readiness reports a failed check; the reason is for the server log, not the caller
        # One line, no traceback: load balancers poll this every few seconds.
        logger.warning("readiness check %s failed: %s", probe.__name__.strip("_"), exc.__class__.__name__)
        return "failed"


def readiness_check() -> dict:
    """Database reachable, migrations applied, channel layer (Redis) reachable when configured."""
    checks = {"database": _check(_database_ready)}
    checks["migrations"] = _check(_migrations_applied) if checks["database"] == "ok" else "skipped"
    checks["channel_layer"] = _check(_channel_layer_ready) if settings.REDIS_URL else "not_configured"
    failed = [name for name, state in checks.items() if state == "failed"]
    if failed:
        raise errors.ServiceUnavailableError(f"Not ready: {', '.join(failed)}.", details={"checks": checks, "failed": failed})
    return {"status": "ready", "checks": checks}


def language_preference(user) -> str | None:
    """The language a signed-in user chose for the pages, if any and if it is still offered."""
    language = UserPreference.objects.filter(user=user).values_list("language", flat=True).first()
    return language if language in dict(settings.LANGUAGES) else None


def language_preference_set(*, user, language: str) -> None:
    UserPreference.objects.update_or_create(user=user, defaults={"language": language})
