"""The registry admin applies the API's rules: remote settings for admins only, api_key_env by prefix."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from models_app.models import ModelConfig

pytestmark = pytest.mark.django_db

ADD = "/admin/models_app/modelconfig/add/"
REMOTE = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "BEAUTYAI_REMOTE_KEY_UPSTREAM"}


@pytest.fixture
def staff(make_user):
    """``staff("model_write")`` → a Django test client logged in to the admin as a staff user with those permissions."""

    def make(*codenames: str) -> Client:
        user = make_user(*codenames)
        user.is_staff = True
        user.save()
        client = Client()
        client.force_login(user)
        return client

    return make


def form(name: str, *, engine: str = "openai", parameters: dict | None = None, **fields) -> dict:
    return {"name": name, "model_id": "remote-model", "architecture": "causal_lm", "engine": engine,
            "quantization": "none", "dtype": "auto", "max_new_tokens": "512", "description": "",
            "do_sample": "unknown", "parameters": json.dumps(parameters or {}), **fields}


def change_url(model: ModelConfig) -> str:
    return f"/admin/models_app/modelconfig/{model.pk}/change/"


def test_the_admin_refuses_a_remote_base_url_from_a_non_admin(staff):
    response = staff("model_write").post(ADD, form("remote", parameters=REMOTE))
    assert response.status_code == 200  # the form again, with its error
    assert "Only administrators may set a remote base_url" in response.content.decode()
    assert not ModelConfig.objects.filter(name="remote").exists()


def test_the_admin_lets_an_admin_add_a_remote_model(staff):
    response = staff("model_write", "admin").post(ADD, form("remote", parameters=REMOTE))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert ModelConfig.objects.get(name="remote").parameters == REMOTE


def test_a_non_admin_may_edit_a_remote_model_without_touching_its_remote_settings(staff):
    model = ModelConfig.objects.create(name="remote", model_id="remote-model", engine="openai", parameters=REMOTE)
    client = staff("model_write")
    kept = client.post(change_url(model), form("remote", parameters=REMOTE, description="now described"))
    assert kept.status_code == 302
    moved = client.post(change_url(model), form("remote", parameters={**REMOTE, "base_url": "http://169.254.169.254/"}))
    assert moved.status_code == 200 and "Only administrators may set a remote base_url" in moved.content.decode()
    model.refresh_from_db()
    assert (model.description, model.parameters) == ("now described", REMOTE)


@pytest.mark.parametrize("variable", ["DJANGO_SECRET_KEY", "DATABASE_URL", "BEAUTYAI_REMOTE_KEY_",
                                      "beautyai_remote_key_x"])
def test_the_admin_refuses_an_api_key_env_without_the_documented_prefix(staff, variable):
    response = staff("model_write", "admin").post(ADD, form("remote", parameters={**REMOTE, "api_key_env": variable}))
    assert response.status_code == 200
    assert "api_key_env must be the NAME of an environment variable starting with BEAUTYAI_REMOTE_KEY_" in (
        response.content.decode())
    assert not ModelConfig.objects.filter(name="remote").exists()
