"""First-run setup, safe to repeat: a second run changes nothing."""

from __future__ import annotations

import json
import secrets

from django.contrib.auth import get_user_model
from django.db import transaction

from accounts.services import create_api_key
from models_app import services
from models_app.models import ModelConfig
from models_app.registry_io import SEED_REGISTRY, registry_import

BUNDLED_LLAMA_CPP = "smollm2-135m-instruct"
BUNDLED_TRANSFORMERS = "smollm2-135m-instruct-hf"
BUNDLED_EMBEDDING = "embed-small"
ADMIN_USERNAME = "admin"


def bundled_entries() -> dict[str, dict]:
    from models_app.serving.engines.bundled import bundled_embedding_path, bundled_gguf_path

    gguf = bundled_gguf_path()
    description = "SmolLM2-135M-Instruct (Apache-2.0), bundled for tests and first runs"
    return {
        BUNDLED_LLAMA_CPP: {
            "model_id": str(gguf), "engine": "llama.cpp", "quantization": "Q4_1", "max_new_tokens": 512,
            "description": f"{description}; llama.cpp on the GGUF", "parameters": {"n_ctx": 2048},
        },
        BUNDLED_TRANSFORMERS: {
            "model_id": str(gguf.parent), "engine": "transformers", "dtype": "float32", "max_new_tokens": 512,
            "description": f"{description}; transformers on the dequantised GGUF",
            "parameters": {"gguf_file": gguf.name},
        },
        BUNDLED_EMBEDDING: {
            "model_id": str(bundled_embedding_path()), "engine": "transformers", "dtype": "float32",
            "architecture": "bert",
            "description": "all-MiniLM-L6-v2 (Apache-2.0): 384-dimensional sentence embeddings, mean pooled "
                           "and normalised; bundled for /v1/embeddings",
            "parameters": {"task": "embed"},
        },
    }


@transaction.atomic
def bootstrap() -> dict:
    """Returns what it did; ``admin_password`` and ``api_key`` appear only on the run that created them."""
    report: dict = {"seed_imported": False, "bundled_added": [], "default_set": None}
    fresh = not ModelConfig.objects.exists()
    if fresh:
        registry_import(data=json.loads(SEED_REGISTRY.read_text(encoding="utf-8")))
        report["seed_imported"] = True
    for name, config in bundled_entries().items():
        if not ModelConfig.objects.filter(name=name).exists():
            services.registry_add(name=name, config=config)
            report["bundled_added"].append(name)
    if fresh:
        services.registry_set_default(model=ModelConfig.objects.get(name=BUNDLED_LLAMA_CPP))
        report["default_set"] = BUNDLED_LLAMA_CPP
    users = get_user_model()
    if not users.objects.filter(username=ADMIN_USERNAME).exists():
        password = secrets.token_urlsafe(18)
        admin = users.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
        _, raw_key = create_api_key(user=admin, name="bootstrap")
        report["admin_password"] = password
        report["api_key"] = raw_key
    return report
