"""Shared fixtures: users with exactly the permissions a test names, and API clients signed in as them."""

from __future__ import annotations

import itertools
import time

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.permissions import full_name
from accounts.services import create_api_key
from models_app.models import ModelConfig

_names = itertools.count()


# Fixtures that start a runner, a server or a browser, or convert the bundled model: a test using any
# of them (directly or through another fixture) is marked slow, so `make test-fast` (-m "not slow")
# leaves it out without every such test having to carry the mark.
# bundled_model is on the list because most tests that register it load it, through the API or on demand.
SLOW_FIXTURES = frozenset({
    "bundled_model", "loaded_model", "live_server_url", "safetensors_dir", "strict_template_dir",
    "hub_server",  # tests/conftest.py
    "gguf_path", "manager", "shared_manager", "llama_server", "embedders",  # tests/engines
    "load_model",  # tests/system_app
    "chat_key",  # tests/inference_app/test_websocket.py
    "two_loaded_models",  # tests/resilience/test_hidden_models.py
    "browser_thread",  # tests/pages
})


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# Rows the migrations made that a flush between transactional tests must leave alone: content types and
# permissions recreated with new ids would break the session-long live server, which has cached the
# old ones (guardian then raises MixedContentTypeError); the standard groups (and their permissions) are
# there for every later test, whichever order the tests run in (two workers each take modules as they
# come). No transactional test changes these tables; a test that adds a group is rolled back.
KEPT_TABLES = frozenset({"django_content_type", "auth_permission", "auth_group", "auth_group_permissions"})


def _sql_flush_keeping_migrated_rows(style, connection, reset_sequences=True, allow_cascade=False):
    tables = [table for table in connection.introspection.django_table_names(only_existing=True, include_views=False)
              if table not in KEPT_TABLES]
    return connection.ops.sql_flush(style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test database, with flushes between transactional tests that keep ``KEPT_TABLES``."""
    from django.core.management.commands import flush

    mp = pytest.MonkeyPatch()
    mp.setattr(flush, "sql_flush", _sql_flush_keeping_migrated_rows)
    yield
    mp.undo()
    # Connections opened by other threads of this process (the executor threads of in-process ASGI
    # tests, channels' database_sync_to_async, for one) stay open for the life of the process; PostgreSQL
    # refuses to drop a database that has sessions, and pytest-django then leaves it behind with a
    # warning. Nothing of the suite runs any more at this point: end those sessions before the drop.
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


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
        _, raw = create_api_key(user=user, name="test")
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


@pytest.fixture(scope="session")
def safetensors_dir(tmp_path_factory):
    """The bundled model as a Hugging Face safetensors folder (converted once per test run)."""
    from models_app.serving.engines.bundled import ensure_safetensors_folder

    return ensure_safetensors_folder(tmp_path_factory.mktemp("hf") / "smollm2-135m")


@pytest.fixture(scope="session")
def strict_template_dir(safetensors_dir, tmp_path_factory):
    """The safetensors folder with a chat template that refuses two user turns in a row."""
    from tests.model_files import ALTERNATING_ONLY_TEMPLATE, folder_with_template

    return folder_with_template(safetensors_dir, tmp_path_factory.mktemp("strict") / "smollm2-strict",
                                ALTERNATING_ONLY_TEMPLATE)


@pytest.fixture
def hub_server(request, tmp_path, monkeypatch, settings):
    """A local Hugging Face Hub (tests/hub_server.py) that huggingface_hub in this process downloads from.

    ``hub_server(*repo_ids, repos=None, **HubServer options) -> HubServer`` serves the named standard repos
    (both when neither ``repo_ids`` nor ``repos`` is given) plus the custom ``repos``:

    - ``test-org/smollm2-gguf``: the bundled GGUF and a README.md;
    - ``test-org/smollm2``: the files of ``safetensors_dir`` (converted on first use: slow) and a small
      ``pytorch_model.bin``, a pickle name that a careful client never fetches.

    HF_HOME is a fresh ``tmp_path / "hf"``. huggingface_hub reads its environment once, at import, so setting
    the environment reaches only processes started later; until the test ends (the servers stop first) it patches:

    - environment: HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE=0, HF_HUB_DISABLE_XET=1, HF_HUB_DISABLE_IMPLICIT_TOKEN=1,
      and removes HF_HUB_CACHE and HUGGINGFACE_HUB_CACHE, which would win over HF_HOME;
    - ``huggingface_hub.constants``: ENDPOINT and HUGGINGFACE_CO_URL_TEMPLATE (every hub URL is built from
      them at call time), HF_HUB_CACHE (the download cache), HF_HUB_OFFLINE=False (the suite runs with
      HF_HUB_OFFLINE=1, which refuses every request), HF_HUB_DISABLE_XET=True, and
      HF_HUB_DISABLE_IMPLICIT_TOKEN=True (a developer's token is neither read nor sent);
    - values copied at import: ``huggingface_hub.hf_api.api.endpoint`` (``huggingface_hub.model_info``,
      ``list_repo_tree`` and the other module-level functions are methods of that instance) and
      ``huggingface_hub.utils._cache_manager.HF_HUB_CACHE`` (``scan_cache_dir()``'s default);
    - ``huggingface_hub.utils._detect_agent._registry``: empty, or else the first request of the process
      starts with a GET /api/agent-harnesses to the hub whose answer is written into HF_HOME;
    - Django's ``settings.HF_HOME``.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _cache_manager, _detect_agent

    from models_app.serving.engines.bundled import bundled_gguf_path
    from tests.hub_server import HubServer

    def gguf_repo():
        gguf = bundled_gguf_path()
        return {gguf.name: gguf, "README.md": b"---\nlicense: apache-2.0\n---\n# SmolLM2-135M-Instruct, GGUF\n"}

    def safetensors_repo():
        folder = request.getfixturevalue("safetensors_dir")
        files = {path.relative_to(folder).as_posix(): path for path in folder.rglob("*") if path.is_file()}
        return {**files, "pytorch_model.bin": b"not a pickle: a client that skips *.bin never sees this"}

    standard = {"test-org/smollm2-gguf": gguf_repo, "test-org/smollm2": safetensors_repo}
    hf_home = tmp_path / "hf"
    servers = []

    def start(*repo_ids: str, repos: dict | None = None, **options) -> HubServer:
        chosen = repo_ids or (() if repos else tuple(standard))
        server = HubServer({**{repo_id: standard[repo_id]() for repo_id in chosen}, **(repos or {})}, **options)
        servers.append(server)
        for name, value in {"HF_ENDPOINT": server.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
                            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
        for name, value in {"ENDPOINT": server.url,
                            "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
                            "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": False,
                            "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_IMPLICIT_TOKEN": True}.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", server.url)
        monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
        settings.HF_HOME = hf_home
        return server

    yield start
    for server in servers:
        server.stop()


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


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, django_db_blocker):
    """A real daphne serving this checkout against the test database, for streams and disconnects.

    Tests that use it need ``transactional_db`` so that what they create is committed and visible.
    """
    from django.conf import settings

    from tests.servers import start_server, stop_server

    # No sampler or log writer: their rows would race the flushes between transactional tests.
    # A short slow-reader limit keeps tests/resilience/test_slow_reader.py quick; clients that read
    # drain in milliseconds, so no other test comes near it.
    process, url = start_server(settings.DATA_DIR / "live-server.log",
                                env={"BEAUTYAI_BACKGROUND_TASKS": "0", "BEAUTYAI_WS_SLOW_READER_SECONDS": "2"})
    yield url
    stop_server(process)


@pytest.fixture(autouse=True)
def _live_server_writes_settle(request):
    """A test that talked to the live server ends only once the server's own database work is done.

    The server stores a reply, its usage and its audit row after the client has read the last event;
    the flush that ends a transactional test truncates every table and deadlocks with such a write on
    PostgreSQL (seen in test_streaming). Set up after ``transactional_db``, so this waits before its flush.
    """
    if "live_server_url" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return  # SQLite: one file lock, no deadlock to wait out
    busy_sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND (state = 'active' OR state LIKE 'idle in transaction%')")
    deadline, quiet = time.monotonic() + 10, 0
    # Quiet three polls in a row: a write that starts just after one poll is seen by the next.
    while quiet < 3 and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(busy_sql)
            quiet = quiet + 1 if cursor.fetchone()[0] == 0 else 0
        time.sleep(0.05)
