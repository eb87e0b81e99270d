"""Registry services: business rules and transactions. Views and commands call these; they raise typed errors."""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _
from guardian.shortcuts import get_objects_for_user
from rest_framework.exceptions import ValidationError as DRFValidationError

from accounts.permissions import full_name, has_global, has_on
from beautyai_site.api import errors
from beautyai_site.sql import ReusedQuery, field_names, instance
from models_app import runtime
from models_app.models import Alias, ModelConfig, ModelDownload
from models_app.serializers import ModelConfigSerializer
# Host measurements: the serving core's one NVML implementation, for the system routes and the sampler.
from models_app.serving.hardware import GpuReading, gpu_memory_by_pid, gpus  # noqa: F401 - re-exported
# The Hugging Face cache: one scan (symlinked repos left out) and one delete, for the cache routes too.
from models_app.hub import cached_repos, delete_cached_repos  # noqa: F401 - re-exported
from models_app.runtime import hub_cache_dir  # noqa: F401 - re-exported
# Serving-core types and pure helpers the other apps build requests with (they import no Django).
from models_app.serving.engines.constraints import (  # noqa: F401 - re-exported
    ConstraintError,
    check_schema,
    normalize_constraint,
)
from models_app.serving.engines.contract import (  # noqa: F401 - re-exported
    MAX_EMBEDDING_INPUTS,
    GenerationParams,
    GenerationStats,
    normalized,
)
from models_app.serving.engines.model_files import is_hub_id  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

# Changing any of these means a loaded model no longer matches its entry until it is reloaded.
RELOAD_FIELDS = ("model_id", "architecture", "engine", "quantization", "dtype", "parameters")


# Selectors -------------------------------------------------------------------------------------

def models_readable_by(user):
    return get_objects_for_user(user, full_name("model_read"), klass=ModelConfig, accept_global_perms=True)


def model_names_readable_by(user) -> frozenset[str] | None:
    """The names of the models ``user`` may read; None when that is every model (global model_read)."""
    if has_global(user, "model_read"):
        return None
    if not (user and user.is_authenticated):
        return frozenset()
    return frozenset(models_readable_by(user).values_list("name", flat=True))


def only_readable(user, names) -> list[str]:
    """Those of ``names`` that ``user`` may read, in order: status lists and error details name no other model."""
    readable = model_names_readable_by(user)
    return [name for name in names if readable is None or name in readable]


def model_get_for_user(*, user, name: str, permission: str = "model_read", shown_as: str | None = None) -> ModelConfig:
    """The entry ``name`` if ``user`` holds ``permission`` on it.

    A model the user may not read answers 404 exactly like a missing one, so names do not leak;
    one they may read but not act on answers 403. ``shown_as``: the name the request used (an
    alias), the only one an error may mention.
    """
    rows = _MODEL_BY_NAME.rows(name=name)
    model = instance(ModelConfig, rows[0]) if rows else None
    if model is None or not has_on(user, "model_read", model) and not has_on(user, permission, model):
        raise errors.ModelNotFoundError(f"Model '{shown_as or name}' not found in the registry.")
    if not has_on(user, permission, model):
        raise errors.PermissionDeniedError(f"You do not have the '{permission}' permission on this model.")
    return model


def resolve_model_name(name: str) -> tuple[str, str | None]:
    """The registry entry a requested name means, and the alias it went through (None for a model's own name).

    Names of aliases and models never overlap (both sides refuse a taken name), so this is unambiguous.
    """
    rows = _ALIAS_BY_NAME.rows(name=name)
    return (rows[0]["target__name"], name) if rows else (name, None)


def model_resolve_for_user(*, user, name: str, permission: str) -> tuple[ModelConfig, Alias | None]:
    """``model_get_for_user`` for a name that may be an alias: access is checked on the target, and
    errors name what the caller asked for, so an alias does not reveal its target to whoever may not read it.

    The alias comes from the same read as its target's name; its fallback is read only if it is needed.
    """
    rows = _ALIAS_BY_NAME.rows(name=name)
    model = model_get_for_user(user=user, name=rows[0]["target__name"] if rows else name, permission=permission,
                               shown_as=name)
    alias = None
    if rows:
        alias = instance(Alias, rows[0])
        alias.target = model
    return model, alias


def aliases_readable_by(user):
    """The aliases whose target ``user`` may read, as /v1/models lists them."""
    return Alias.objects.filter(target__in=models_readable_by(user)).select_related("target")


def default_model() -> ModelConfig | None:
    rows = _DEFAULT_MODEL.rows()
    return instance(ModelConfig, rows[0]) if rows else None


# Every chat and /v1 request reads its model by name before the hand-off to the runner, where Django
# writing the SQL cost more than the database answering (docs/performance.md), so these are written
# once (beautyai_site/sql.py). Names are unique and at most one entry is the default (a partial unique
# constraint): no ordering, at most one row, as ``.first()`` gave.
_MODEL_BY_NAME = ReusedQuery(
    lambda name: ModelConfig.objects.filter(name=name).order_by().values(*field_names(ModelConfig)), name=str)
_ALIAS_BY_NAME = ReusedQuery(
    lambda name: Alias.objects.filter(name=name).order_by().values(*field_names(Alias), "target__name"), name=str)
_DEFAULT_MODEL = ReusedQuery(
    lambda: ModelConfig.objects.filter(is_default=True).order_by().values(*field_names(ModelConfig)))


# Configuration validation ------------------------------------------------------------------------

# A base URL makes this server send requests wherever it points (SSRF), and api_key_env picks which
# key goes with them: only admins may set or change either.
REMOTE_PARAMETERS = ("base_url", "api_key_env")


def validated_config(data: dict, *, instance: ModelConfig | None = None, partial: bool = False, user=None) -> dict:
    """The registry's rules, shared by the API, the admin and registry imports.

    ``user`` is the person making the change (None for the server's own imports and bootstrap).
    """
    serializer = ModelConfigSerializer(instance=instance, data=data, partial=partial)
    if not serializer.is_valid():
        raise DRFValidationError(serializer.errors)
    config = dict(serializer.validated_data)
    runtime.check_model_location(config.get("model_id", instance.model_id if instance else ""))
    if user is not None and "parameters" in config and not has_global(user, "admin"):
        old = (instance.parameters or {}) if instance is not None else {}
        new = config["parameters"] or {}
        changed = [key for key in REMOTE_PARAMETERS if new.get(key) is not None and new.get(key) != old.get(key)]
        if changed:
            raise errors.PermissionDeniedError(
                _("Only administrators may set a remote %(parameters)s.") % {"parameters": " or ".join(changed)})
    return config


# Services --------------------------------------------------------------------------------------

@transaction.atomic
def registry_set_default(*, model: ModelConfig) -> ModelConfig:
    # Clear the old default first: the partial unique constraint allows one row with is_default=True.
    ModelConfig.objects.select_for_update().filter(is_default=True).exclude(pk=model.pk).update(is_default=False)
    if not model.is_default:
        model.is_default = True
        model.save(update_fields=["is_default", "updated_at"])
    return model


def registry_add(*, name: str, config: dict, set_as_default: bool = False, user=None) -> ModelConfig:
    config = validated_config(config, user=user)
    if Alias.objects.filter(name=name).exists():
        raise errors.ConflictError(f"An alias named '{name}' already exists.")
    try:
        with transaction.atomic():
            model = ModelConfig.objects.create(name=name, **config)
            if set_as_default or not ModelConfig.objects.filter(is_default=True).exists():
                registry_set_default(model=model)
    except IntegrityError:
        raise errors.ConflictError(f"A model named '{name}' already exists.") from None
    return model


def registry_update(*, model: ModelConfig, updates: dict, set_as_default: bool = False, user=None) -> tuple[ModelConfig, bool, list[str]]:
    """Applies a partial update; returns the entry, whether a loaded copy needs a reload, and the changed fields."""
    if "model_name" in updates or "name" in updates:
        raise errors.ValidationError("updates: a model cannot be renamed; add a new entry instead")
    config = validated_config(updates, instance=model, partial=True, user=user) if updates else {}
    changed = [field for field, value in config.items() if getattr(model, field) != value]
    with transaction.atomic():
        for field in changed:
            setattr(model, field, config[field])
        if changed:
            model.save()
        if set_as_default:
            registry_set_default(model=model)
    reload_needed = runtime.is_loaded(model.name) and any(field in RELOAD_FIELDS for field in changed)
    return model, reload_needed, changed


def registry_delete(*, model: ModelConfig, clear_cache: bool = False) -> dict:
    """Unloads the model, removes the entry, and keeps exactly one default among what remains.

    A model being downloaded is refused (409) before anything changes, as a cache clear is: its
    worker would write into files and a job row that are going away.
    """
    from models_app import downloads

    # Held while the files go: a download of this model cannot start meanwhile. The runner is
    # unloaded after, outside the row lock (an unload takes seconds); a file it maps stays readable.
    with downloads.exclusive(model):
        if ModelDownload.objects.filter(model=model, status__in=ModelDownload.ACTIVE).exists():
            raise errors.ConflictError(f"Model '{model.name}' is being downloaded; cancel the download first.")
        freed_bytes = runtime.clear_hub_cache(model.model_id) if clear_cache else 0
    was_loaded = runtime.unload(model.name)
    with transaction.atomic():
        was_default = model.is_default
        name = model.name
        model.delete()
        new_default = None
        if was_default:
            successor = ModelConfig.objects.order_by("created_at", "name").first()
            if successor is not None:
                registry_set_default(model=successor)
                new_default = successor.name
    return {"model_name": name, "unloaded": was_loaded, "cache_cleared_bytes": freed_bytes, "new_default": new_default}


def registry_validate(*, model: ModelConfig) -> dict:
    """Checks the entry without loading it: configuration here, files and engine through the runtime."""
    errors_found: list[str] = []
    serializer = ModelConfigSerializer(data=model_config_dict(model))
    if not serializer.is_valid():
        for field, messages in serializer.errors.items():
            errors_found.extend(f"{field}: {message}" for message in messages)
    result = runtime.inspect(model) if not errors_found else {"errors": [], "warnings": [], "estimated_memory_mb": None}
    errors_found.extend(result["errors"])
    return {
        "model_name": model.name,
        "valid": not errors_found,
        "errors": errors_found,
        "warnings": result["warnings"],
        "estimated_memory_mb": result["estimated_memory_mb"],
    }


def model_config_dict(model: ModelConfig) -> dict:
    data = {
        "model_id": model.model_id,
        "architecture": model.architecture,
        "engine": model.engine,
        "quantization": model.quantization,
        "dtype": model.dtype,
        "max_new_tokens": model.max_new_tokens,
        "description": model.description,
        "parameters": model.parameters,
    }
    data.update(model.generation_defaults)
    return data


# -- the serving core: the only way in for views, admin, consumers, /v1, system routes and commands --
# Engine errors leave here as API errors (mapped by type in runtime.py); reads are in selectors.py.

def model_load(*, model: ModelConfig, force_reload: bool = False, user=None) -> dict:
    """Loads ``model`` (409 when memory or a concurrent unload refuses it, 503-class ModelLoadError else)."""
    return runtime.load(model, force_reload=force_reload, user=user)


def model_unload(*, name: str) -> bool:
    """Stops the model's runner; its generations end as cancelled. False when it was not loaded."""
    return runtime.unload(name)


def models_unload_idle() -> list[str]:
    """Unloads every loaded model with nothing running or waiting; returns their names."""
    manager = runtime.manager_if_started()
    if manager is None:
        return []
    idle = [info.name for info in manager.loaded()
            if info.status == "loaded" and info.active_requests == 0 and info.queue_depth == 0]
    return [name for name in idle if manager.unload(name)]


def models_release_caches() -> list[str]:
    """Asks every runner to drop what it can rebuild (KV/prefix caches); returns the models that did."""
    manager = runtime.manager_if_started()
    return manager.release_caches() if manager is not None else []


def models_stop_all() -> list[str]:
    """Unloads every model at once and stops the spares (they imported the libraries of before); returns
    the models that were stopped."""
    from concurrent.futures import ThreadPoolExecutor

    manager = runtime.manager_if_started()
    if manager is None:
        return []
    previous = [info.name for info in manager.loaded()]
    with ThreadPoolExecutor(max_workers=max(1, len(previous))) as pool:
        stopped = [name for name, done in zip(previous, pool.map(manager.unload, previous)) if done]
    manager.stop_spares()
    return stopped


def models_configure(*, memory_budget_mb: float, max_loaded_models: int, default_keep_alive_s: float,
                     load_timeout_s: float) -> None:
    """New limits for the manager, if started (a later start reads them from settings)."""
    manager = runtime.manager_if_started()
    if manager is not None:
        manager.configure(memory_budget_mb=memory_budget_mb, max_loaded_models=max_loaded_models,
                          default_keep_alive_s=default_keep_alive_s, load_timeout_s=load_timeout_s)


def generations_pause() -> None:
    """New generations answer 503 until generations_resume()."""
    runtime.set_accepting_generations(False)


def generations_resume() -> None:
    runtime.set_accepting_generations(True)


def require_task(*, model: ModelConfig, task: str, field: str = "model") -> None:
    """400 naming ``field`` when ``model`` is not served for ``task`` (generate | embed)."""
    runtime.require_task(model, task, field=field)


def check_queue(*, model: ModelConfig) -> None:
    """429 when the model's queue is already full."""
    runtime.check_queue(model)


def count_tokens(*, name: str, messages: list[dict], tools: list[dict] | None = None) -> int:
    """Prompt tokens of ``messages`` (400 naming ``messages`` when the template refuses them)."""
    return runtime.count_tokens(name, messages, tools)


def generate(*, model: ModelConfig, messages: list[dict], params, tag: dict | None = None):
    """Submits a generation and returns its handle (429 at once when the queue is full).

    ``tag``: a JSON-able dict that comes back through ``models_app.signals.reply_orphaned`` (sent in
    another web process) when, with Ray placement, this process dies before the reply ends."""
    return runtime.generate(model, messages, params, tag=tag)


def embed(*, model: ModelConfig, inputs: list) -> tuple[list[list[float]], int]:
    """Unit vectors of ``inputs`` and their prompt tokens (400 naming ``input`` for refused input)."""
    return runtime.embed(model, inputs)

