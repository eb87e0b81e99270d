"""Shared fixtures: users with exactly the permissions a test names, and API clients signed in as them."""

from __future__ import annotations

import itertools

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from beautyai_site.api.permissions import full_name
from models_app.models import ModelConfig
from system_app.models import APIKey

_names = itertools.count()


@pytest.fixture
def make_user(db):
    def make(*codenames: str, username: str | None = None, superuser: bool = False):
        users = get_user_model()
        username = username or f"user{next(_names)}"
        if superuser:
            return users.objects.create_superuser(username, password="pw-for-tests-only")
        user = users.objects.create_user(username, password="pw-for-tests-only")
        if codenames:
            user.user_permissions.add(
                *Permission.objects.filter(content_type__app_label="models_app", codename__in=codenames)
            )
        return user

    return make


@pytest.fixture
def client_for(db):
    """An APIClient that sends ``Authorization: Bearer <a fresh key of user>``."""

    def make(user) -> APIClient:
        _, raw = APIKey.issue(user=user, name="test")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.raw_key = raw
        return client

    return make


@pytest.fixture
def api_as(make_user, client_for):
    """``api_as("model_read", "chat")`` → a client for a new user holding just those global permissions."""

    def make(*codenames: str, superuser: bool = False) -> APIClient:
        client = client_for(make_user(*codenames, superuser=superuser))
        return client

    return make


@pytest.fixture
def anon():
    return APIClient()


@pytest.fixture
def grant():
    def do(user, codename: str, model: ModelConfig):
        assign_perm(full_name(codename), user, model)

    return do


@pytest.fixture
def registry(db):
    """Two hub-id entries (never loaded by these tests) with the first as default."""
    first = ModelConfig.objects.create(
        name="alpha", model_id="org/alpha", engine="transformers", quantization="4bit", is_default=True
    )
    second = ModelConfig.objects.create(name="beta", model_id="org/beta", engine="llama.cpp", quantization="Q4_K_M")
    return {"alpha": first, "beta": second}
