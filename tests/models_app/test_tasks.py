"""The registry's ``task`` parameter (generate | embed) and the embedding options that go with it."""

from __future__ import annotations

import pytest

from models_app.models import ModelConfig
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db


def new_model(engine: str, parameters: dict, quantization: str = "none") -> dict:
    return {"model_name": "gamma", "model_config": {"model_id": "org/gamma", "engine": engine,
                                                    "quantization": quantization, "parameters": parameters}}


@pytest.mark.parametrize("engine,parameters", [
    ("transformers", {"task": "classify"}),
    ("transformers", {"task": 1}),
    ("vllm", {"task": "embed"}),
    ("openai", {"task": "embed", "base_url": "http://127.0.0.1:9"}),
    ("transformers", {"task": "embed", "pooling": "max"}),
    ("llama.cpp", {"task": "embed", "matryoshka": "yes"}),
    ("transformers", {"pooling": "mean"}),
    ("llama.cpp", {"matryoshka": True}),
])
def test_a_bad_task_or_embedding_option_is_a_400_naming_parameters(api_as, engine, parameters):
    response = api_as("model_write").post("/models/", new_model(engine, parameters), format="json")
    error = assert_error(response, 400, "ValidationError")
    assert error["error_message"].startswith("parameters: ")
    assert not ModelConfig.objects.filter(name="gamma").exists()


@pytest.mark.parametrize("engine,parameters", [
    ("transformers", {"task": "embed", "pooling": "cls", "matryoshka": True}),
    ("llama.cpp", {"task": "embed", "pooling": "last"}),
    ("vllm", {"task": "generate"}),
])
def test_embedding_entries_are_accepted_for_the_engines_that_embed(api_as, engine, parameters):
    assert_ok(api_as("model_write").post("/models/", new_model(engine, parameters), format="json"), 201)
    model = ModelConfig.objects.get(name="gamma")
    assert model.parameters == parameters and model.task == parameters["task"]


def test_an_entry_without_a_task_generates():
    assert ModelConfig(name="x", model_id="org/x", engine="transformers").task == "generate"
