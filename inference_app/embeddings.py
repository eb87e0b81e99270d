"""Embeddings (/v1/embeddings): access, quota and on-demand load as for chat, then one runner call.

Nothing is stored but the usage record: an embedding request is not a chat. The permission is
``chat`` (the same keys that may generate with a model may embed with it), the rate is the chat
rate and the record's transport is ``openai``.
"""

from __future__ import annotations

import time

from beautyai_site.api import errors
from inference_app import services
from inference_app.usage import quota_check, usage_record
from models_app import selectors, services as registry


def _bad(field: str, message: str) -> errors.ValidationError:
    return errors.ValidationError(f"{field}: {message}", details={"fields": {field: [message]}})


def embeddings_create(*, user, model_name: str, inputs: list, dimensions: int | None = None,
                      api_key_id: int | None = None) -> dict:
    """``{"model", "vectors", "prompt_tokens"}``: one unit vector per input, in order.

    ``dimensions`` keeps the first that many components and normalises again, which is meaningful
    only for models trained for it (Matryoshka); the entry says so with parameter ``matryoshka``.
    A refused request records nothing.
    """
    if not selectors.accepting_generations():
        raise errors.ServiceUnavailableError("The server is restarting; try again shortly.")
    model = registry.model_get_for_user(user=user, name=model_name, permission="chat")
    registry.require_task(model=model, task="embed")
    if dimensions is not None and (model.parameters or {}).get("matryoshka") is not True:
        raise _bad("dimensions", f"'{model.name}' cannot shorten its embeddings (it is not a Matryoshka model)")
    quota_check(user=user, model=model)
    services.ensure_loaded(user=user, model=model)
    started = time.perf_counter()
    vectors, prompt_tokens = registry.embed(model=model, inputs=inputs)
    duration_ms = (time.perf_counter() - started) * 1000.0
    if dimensions is not None:
        if dimensions > len(vectors[0]):
            raise _bad("dimensions", f"'{model.name}' has {len(vectors[0])} dimensions")
        vectors = [registry.normalized(vector[:dimensions]) for vector in vectors]
    usage_record(user=user, api_key_id=api_key_id, model_name=model.name, transport="openai",
                 prompt_tokens=prompt_tokens, completion_tokens=0, duration_ms=duration_ms)
    return {"model": model.name, "vectors": vectors, "prompt_tokens": prompt_tokens}
