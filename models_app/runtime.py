"""The bridge between the registry (Django) and the EngineManager (no Django).

One EngineManager per web process, created on first use from settings. Views and services call
the functions here; they never hold runners themselves.
"""

from __future__ import annotations

import threading
from pathlib import Path

from django.conf import settings

from beautyai_site.api import errors
from beautyai_site.api.envelope import iso

_manager = None
_manager_lock = threading.Lock()


def get_manager():
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                limits = dict(memory_budget_mb=settings.MEMORY_BUDGET_MB, max_loaded_models=settings.MAX_LOADED_MODELS,
                              default_keep_alive_s=settings.KEEP_ALIVE_SECONDS,
                              load_timeout_s=settings.LOAD_TIMEOUT_SECONDS)
                if settings.PLACEMENT == "ray":
                    from models_app.serving.cluster import ClusterEngineManager
                    from models_app.serving.ray_placement import RayPlacement

                    _manager = ClusterEngineManager(placement=RayPlacement(settings.RAY_ADDRESS),
                                                    orphan_callback=_orphaned, **limits)
                else:
                    from models_app.serving.manager import EngineManager

                    _manager = EngineManager(spares=settings.RUNNER_SPARES, **limits)
    return _manager


def _orphaned(orphan: dict) -> None:
    """A reply whose web process died (ClusterEngineManager's reaper thread): handed to the receivers of
    ``reply_orphaned`` (inference_app stores chat replies); raises when one failed, so it comes again."""
    from django.db import close_old_connections

    from models_app.signals import reply_orphaned

    try:
        for _receiver, answer in reply_orphaned.send_robust(sender=None, **orphan):
            if isinstance(answer, Exception):
                raise answer
    finally:
        close_old_connections()  # the reaper thread is no request: nothing else ends its connection


def manager_if_started():
    """The manager if anything has used it; status reads must not start one (and its reaper) needlessly.
    With Ray placement the cluster may hold runners that other web processes loaded: always ask it."""
    if _manager is None and settings.PLACEMENT == "ray":
        return get_manager()
    return _manager


def allowed_model_roots() -> list[Path]:
    if settings.MODEL_ROOTS:
        return list(settings.MODEL_ROOTS)
    # Not DATA_DIR itself: it holds the database, the secret key, logs and caches.
    roots = [settings.DATA_DIR / "models", settings.HF_HOME]
    from models_app.serving.engines.bundled import bundled_embedding_path, bundled_gguf_path

    for bundled in (lambda: bundled_gguf_path().parent, bundled_embedding_path):
        try:
            roots.append(bundled())
        except FileNotFoundError:
            pass
    return roots


def check_model_location(model_id: str) -> None:
    """Local paths must lie inside the allowed roots; hub ids are resolved later, offline, in HF_HOME."""
    from models_app.serving.engines.contract import EngineError
    from models_app.serving.engines.model_files import confine, is_hub_id, is_local_model_id

    if not model_id:
        return
    try:
        if is_local_model_id(model_id):
            confine(model_id, allowed_model_roots())
        elif not is_hub_id(model_id):
            raise EngineError("model_id must be a hub id such as org/name or an absolute path")
    except EngineError as exc:
        raise errors.ValidationError(f"model_id: {exc}", details={"fields": {"model_id": [str(exc)]}}) from None


def load_spec(model):
    from models_app.serving.engines.contract import LoadSpec

    return LoadSpec(
        name=model.name,
        engine=model.engine,
        model_id=model.model_id,
        quantization=model.quantization,
        dtype=model.dtype,
        max_new_tokens=model.max_new_tokens,
        parameters=dict(model.parameters or {}),
        generation_defaults=model.generation_defaults,
    )


def status(name: str) -> dict:
    manager = manager_if_started()
    if manager is None:
        return unloaded_status(name)
    return _info_dict(manager.status(name))


def unloaded_status(name: str) -> dict:
    return {
        "model_name": name, "status": "unloaded", "pid": None, "memory_usage_mb": 0.0,
        "load_time_seconds": None, "loaded_at": None, "last_used_at": None, "active_requests": 0,
        "queue_depth": 0, "expires_at": None, "last_error": None,
    }



def _info_dict(info) -> dict:
    where = {"node_id": info.node_id, "node_address": info.node_address} if info.node_id else {}
    return {
        "model_name": info.name,
        "status": info.status,
        "pid": info.pid,
        "memory_usage_mb": round(info.memory_usage_mb or 0.0, 2),
        "load_time_seconds": info.load_time_seconds,
        "loaded_at": iso(info.loaded_at),
        "last_used_at": iso(info.last_used_at),
        "active_requests": info.active_requests,
        "queue_depth": info.queue_depth,
        "expires_at": iso(info.expires_at),
        "last_error": info.last_error,
        **where,
    }


def statuses() -> dict[str, dict]:
    manager = manager_if_started()
    if manager is None:
        return {}
    return {info.name: _info_dict(info) for info in manager.loaded()}


def is_loaded(name: str) -> bool:
    manager = manager_if_started()
    return manager is not None and manager.is_loaded(name)


def load(model, *, force_reload: bool = False, user=None) -> dict:
    """Loads ``model``; a refusal for memory names only the loaded models ``user`` may read (none without a user)."""
    from models_app import downloads
    from models_app.serving.engines.contract import EngineLoadError
    from models_app.serving.manager import LoadCancelledError, MemoryBudgetError
    from models_app.services import only_readable

    check_model_location(model.model_id)
    if not downloads.files_present(model):
        raise downloads.missing_files_error(model)
    try:
        info = get_manager().load(load_spec(model), force_reload=force_reload)
    except MemoryBudgetError as exc:
        raise errors.ConflictError(
            str(exc),
            details={"needed_mb": exc.needed_mb, "available_mb": exc.available_mb,
                     "loaded_models": only_readable(user, exc.loaded_models)},
        ) from None
    except LoadCancelledError:
        # Another request unloaded the model while this one waited for it to load.
        raise errors.ConflictError(f"Model '{model.name}' was unloaded while it was loading.") from None
    except EngineLoadError as exc:
        raise errors.ModelLoadError(f"Model '{model.name}' could not be loaded: {exc}") from None
    return _info_dict(info)


def unload(name: str) -> bool:
    manager = manager_if_started()
    return bool(manager and manager.unload(name))


def hub_cache_dir() -> Path:
    # Read at call time: HF_HOME can be overridden (tests), and huggingface_hub's own constant is fixed at import.
    return Path(settings.HF_HOME) / "hub"


def clear_hub_cache(model_id: str) -> int:
    """Removes ``model_id``'s repo from the Hugging Face cache; returns bytes freed.

    Only hub ids qualify: a local path is never deleted. The same scan and delete as the cache
    routes (``models_app.hub``): a symlinked repo folder is never followed.
    """
    from models_app import hub
    from models_app.serving.engines.model_files import is_hub_id

    if not is_hub_id(model_id):
        return 0
    scan, repos = hub.cached_repos(hub_cache_dir())
    return hub.delete_cached_repos(scan, [repo for repo in repos
                                          if repo.repo_type == "model" and repo.repo_id == model_id])


def inspect(model) -> dict:
    """Checks without loading: engine installed, files resolvable, GGUF header, template, quantisation, memory."""
    from models_app.serving.engines import engine_available
    from models_app.serving.engines.contract import EngineError
    from models_app.serving.engines.memory import estimate_memory_mb
    from models_app.serving.engines.model_files import gguf_file_for, inspect_gguf, resolve_model_path

    found_errors: list[str] = []
    warnings: list[str] = []
    spec = load_spec(model)
    available, reason = engine_available(model.engine)
    if not available:
        found_errors.append(f"engine: {reason}")
    estimated = None
    if model.engine != "openai":
        try:
            path = resolve_model_path(spec, allowed_model_roots())
        except EngineError as exc:
            found_errors.append(f"model_id: {exc}")
            path = None
        if path is not None:
            gguf = gguf_file_for(spec, path)
            if gguf is not None:
                try:
                    header = inspect_gguf(gguf)
                except EngineError as exc:
                    found_errors.append(f"model file: {exc}")
                else:
                    if not header.get("chat_template"):
                        warnings.append("the GGUF file has no chat template; a plain prompt format will be used")
                    actual = (header.get("file_type") or "").upper()
                    if model.engine == "llama.cpp" and model.quantization not in ("none", actual) and actual:
                        found_errors.append(
                            f"quantization: the entry says {model.quantization} but the file is {actual}"
                        )
            elif path.is_dir() and not (path / "tokenizer_config.json").exists():
                warnings.append("no tokenizer_config.json: the chat template may be missing")
            try:
                estimated = round(estimate_memory_mb(spec), 1)
            except (EngineError, OSError) as exc:
                warnings.append(f"memory estimate unavailable: {exc}")
            if estimated is not None and estimated > settings.MEMORY_BUDGET_MB:
                found_errors.append(
                    f"memory: needs about {estimated:.0f} MB, budget is {settings.MEMORY_BUDGET_MB:.0f} MB"
                )
    return {"errors": found_errors, "warnings": warnings, "estimated_memory_mb": estimated}


# Generation ------------------------------------------------------------------------------------

_accepting = threading.Event()
_accepting.set()


def accepting_generations() -> bool:
    """False while a restart drains the runners; new chats then answer 503."""
    return _accepting.is_set()


def set_accepting_generations(value: bool) -> None:
    (_accepting.set if value else _accepting.clear)()


def context_length(name: str) -> int | None:
    return get_manager().context_length(name)


def prompt_fits(name: str, messages: list[dict], tools: list[dict] | None, room: int) -> bool:
    return get_manager().prompt_fits(name, messages, tools, room)


def count_tokens(name: str, messages: list[dict], tools: list[dict] | None = None) -> int:
    from models_app.serving.engines.contract import EngineError, PromptError

    try:
        return get_manager().count_tokens(name, messages, tools)
    except PromptError as exc:
        raise errors.ValidationError(f"messages: {exc}", details={"fields": {"messages": [str(exc)]}}) from None
    except EngineError as exc:
        raise errors.ConflictError(f"Model '{name}' is not available: {exc}") from None


def require_task(model, task: str, *, field: str = "model") -> None:
    """400 naming ``field`` when ``model`` is not loaded for ``task`` (generate | embed), before anything runs."""
    if model.task == task:
        return
    if model.task == "embed":
        message = f"'{model.name}' is an embedding model; use /v1/embeddings"
    else:
        message = f"'{model.name}' is not an embedding model"
    raise errors.ValidationError(f"{field}: {message}", details={"fields": {field: [message]}})


def embed(model, inputs: list) -> tuple[list[list[float]], int]:
    """Unit vectors of ``inputs`` and their prompt tokens; input the model refuses answers 400 naming ``input``."""
    from models_app.serving.engines.contract import EngineError, PromptError

    require_task(model, "embed")
    try:
        return get_manager().embed(model.name, inputs)
    except PromptError as exc:
        raise errors.ValidationError(f"input: {exc}", details={"fields": {"input": [str(exc)]}}) from None
    except EngineError as exc:
        raise errors.ConflictError(f"Model '{model.name}' is not available: {exc}") from None


def uses_think_tags(model) -> bool:
    """Per-model ``reasoning_parser`` (think_tags | none); when unset, what the chat template shows."""
    parser = (model.parameters or {}).get("reasoning_parser")
    if parser in ("think_tags", "none"):
        return parser == "think_tags"
    return get_manager().think_tags(model.name)


def tool_call_format(model) -> str:
    """Per-model ``tool_parser`` (hermes | llama3 | mistral); when unset, what the chat template shows."""
    from models_app.serving.engines.templates import TOOL_FORMATS

    parser = (model.parameters or {}).get("tool_parser")
    if parser in TOOL_FORMATS:
        return parser
    return get_manager().tool_format(model.name)


def response_template(model) -> dict | None:
    """The tokenizer's response template (``{"template", "prefix"}``), unless the entry names a ``tool_parser``."""
    from models_app.serving.engines.templates import TOOL_FORMATS

    if (model.parameters or {}).get("tool_parser") in TOOL_FORMATS:
        return None
    return get_manager().response_template(model.name)


def max_queue(model) -> int:
    value = (model.parameters or {}).get("max_queue")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else settings.MAX_QUEUE


def check_queue(model) -> None:
    """Answers 429 when the model's queue is already full (generate() checks again, under the runner's lock)."""
    from models_app.serving.engines.contract import EngineError

    limit = max_queue(model)
    try:
        full = get_manager().queue_full(model.name, limit)
    except EngineError as exc:
        raise errors.ConflictError(f"Model '{model.name}' is not available: {exc}") from None
    if full:
        raise errors.RateLimitError(f"Model '{model.name}' is busy: its queue is full.",
                                    details={"model_name": model.name, "max_queue": limit})


def generate(model, messages: list[dict], params, tag: dict | None = None):
    """Submits a generation; answers 429 at once when the model's queue is full. ``tag``: see
    EngineManager.generate (what another web process needs to store the reply if this one dies)."""
    from models_app.serving.engines.contract import EngineError
    from models_app.serving.manager import QueueFullError

    require_task(model, "generate")
    try:
        return get_manager().generate(model.name, messages, params, max_queue=max_queue(model), tag=tag)
    except QueueFullError as exc:
        raise errors.RateLimitError(
            f"Model '{model.name}' is busy: its queue is full.",
            details={"model_name": model.name, "queue_depth": exc.queue_depth, "max_queue": exc.max_queue},
        ) from None
    except EngineError as exc:
        raise errors.ConflictError(f"Model '{model.name}' is not available: {exc}") from None
