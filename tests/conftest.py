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


def pytest_collection_modifyitems(items):
    # A flush after a transactional test recreates content types and permissions with new ids, which
    # the session-long live server has cached (guardian then raises MixedContentTypeError), and it
    # drops the groups the migration made. Restoring the migrated rows, ids and all, avoids both.
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is not None and marker.kwargs.get("transaction"):
            item.add_marker(pytest.mark.django_db(**{**marker.kwargs, "serialized_rollback": True}), append=False)


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


# Real models and a real server ---------------------------------------------------------------------

BUNDLED = "smollm2-135m-instruct"
BUNDLED_HF = "smollm2-135m-instruct-hf"


@pytest.fixture
def bundled_model(db):
    """The bundled SmolLM2 GGUF registered for llama.cpp (loading is left to the test or on demand)."""
    from models_app import services
    from models_app.bootstrap import bundled_entries

    config = dict(bundled_entries()[BUNDLED])
    config["parameters"] = {**config["parameters"], "n_ctx": 1024}
    return services.registry_add(name=BUNDLED, config=config, set_as_default=True)


@pytest.fixture
def loaded_model(bundled_model):
    from models_app import runtime

    runtime.load(bundled_model)
    return bundled_model


@pytest.fixture(scope="session", autouse=True)
def _stop_runners_at_the_end():
    yield
    from models_app import runtime

    manager = runtime.manager_if_started()
    if manager is not None:
        manager.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, django_db_blocker):
    """A real daphne serving this checkout against the test database, for streams and disconnects.

    Tests that use it need ``transactional_db`` so that what they create is committed and visible.
    """
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx
    from django.db import connection

    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        database_url = f"sqlite:///{settings_dict['NAME']}"
    else:
        auth = settings_dict["USER"] + (f":{settings_dict['PASSWORD']}" if settings_dict["PASSWORD"] else "")
        database_url = (f"postgres://{auth}@{settings_dict['HOST'] or '127.0.0.1'}:"
                        f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}")
    port = _free_port()
    # No sampler or log writer: their rows would race the flushes between transactional tests.
    # A short slow-reader limit keeps tests/resilience/test_slow_reader.py quick; clients that read
    # drain in milliseconds, so no other test comes near it.
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "beautyai_site.settings",
           "PYTHONUNBUFFERED": "1", "BEAUTYAI_BACKGROUND_TASKS": "0", "BEAUTYAI_WS_SLOW_READER_SECONDS": "2"}
    root = Path(__file__).resolve().parents[1]
    from django.conf import settings

    log = open(settings.DATA_DIR / "live-server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "beautyai_site.serve", "-b", "127.0.0.1", "-p", str(port),
         "beautyai_site.asgi:application"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/no-such-page", timeout=1)
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the live server did not start; see {settings.DATA_DIR / 'live-server.log'}")
            time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
