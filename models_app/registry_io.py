"""The seed registry file format (``model_registry.json``): import, export, and the bundled-model bootstrap."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from rest_framework.exceptions import ValidationError as DRFValidationError

from beautyai_site.api import errors
from models_app import services
from models_app.models import ModelConfig

SEED_REGISTRY = Path(__file__).resolve().parent / "seed" / "model_registry.json"
FILE_KEYS = {"model_id", "engine_type", "quantization", "dtype", "max_new_tokens", "name", "description",
             "model_architecture", "custom_generation_params", "parameters"}
GENERATION_KEYS = set(ModelConfig.GENERATION_FIELDS)


def entry_to_config(name: str, entry: dict) -> dict:
    """One file entry → the API's model_config shape. Unknown keys are refused so nothing is dropped silently."""
    if not isinstance(entry, dict):
        raise errors.ValidationError(f"models.{name}: must be an object")
    unknown = set(entry) - FILE_KEYS
    if unknown:
        raise errors.ValidationError(f"models.{name}: unknown keys {sorted(unknown)}")
    generation = entry.get("custom_generation_params") or {}
    if not isinstance(generation, dict) or set(generation) - GENERATION_KEYS:
        raise errors.ValidationError(f"models.{name}.custom_generation_params: only {sorted(GENERATION_KEYS)} are known")
    config = {
        "model_id": entry.get("model_id"),
        "engine": entry.get("engine_type"),
        "architecture": entry.get("model_architecture", "causal_lm"),
        **{key: entry[key] for key in ("quantization", "dtype", "max_new_tokens", "description", "parameters") if key in entry},
        **generation,
    }
    return config


def config_to_entry(model: ModelConfig) -> dict:
    config = services.model_config_dict(model)
    entry = {
        "model_id": config["model_id"],
        "engine_type": config["engine"],
        "quantization": config["quantization"],
        "dtype": config["dtype"],
        "max_new_tokens": config["max_new_tokens"],
        "name": model.name,
        "description": config["description"],
        "model_architecture": config["architecture"],
        "custom_generation_params": model.generation_defaults,
    }
    if config["parameters"]:
        entry["parameters"] = config["parameters"]
    return entry


def registry_import(*, data: dict, replace: bool = False) -> dict:
    """Imports a registry file's content atomically: an invalid entry imports nothing.

    Existing entries are kept unless ``replace``; importing the same file twice changes nothing.
    The file's default becomes the default when there is none yet, or with ``replace``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise errors.ValidationError("a registry file is an object with a 'models' object")
    created, updated, unchanged = [], [], []
    with transaction.atomic():
        for name, entry in data["models"].items():
            if not isinstance(name, str):
                raise errors.ValidationError("model names must be strings")
            try:
                config = services.validated_config(entry_to_config(name, entry))
            except DRFValidationError as exc:
                raise errors.ValidationError(f"models.{name}: {exc.detail}") from None
            existing = ModelConfig.objects.filter(name=name).first()
            if existing is None:
                try:
                    ModelConfig(name=name, **config).full_clean(exclude=["is_default"])
                except DjangoValidationError as exc:
                    raise errors.ValidationError(f"models.{name}: {'; '.join(exc.messages)}") from None
                ModelConfig.objects.create(name=name, **config)
                created.append(name)
            elif replace and any(getattr(existing, key) != value for key, value in config.items()):
                for key, value in config.items():
                    setattr(existing, key, value)
                existing.save()
                updated.append(name)
            else:
                unchanged.append(name)
        default_name = data.get("default_model")
        if default_name is not None:
            default = ModelConfig.objects.filter(name=default_name).first()
            if default is None:
                raise errors.ValidationError(f"default_model '{default_name}' is not among the models")
            if replace or services.default_model() is None:
                services.registry_set_default(model=default)
    return {"created": created, "updated": updated, "unchanged": unchanged}


def registry_export() -> dict:
    default = services.default_model()
    return {
        "default_model": default.name if default else None,
        "models": {model.name: config_to_entry(model) for model in ModelConfig.objects.order_by("name")},
    }


def write_json_atomically(path: Path, data: dict) -> None:
    """Write to a temporary file beside ``path`` and rename it into place: a failure leaves the old file intact."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8")
    try:
        with handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
