"""API-key lookups are cached (with Redis only), and every change to a key or its user is seen by the next request.

Without REDIS_URL (the suite's default) the tests of the cache give it an in-memory ``api_keys`` alias:
within this one process that behaves as Redis does for the processes of a deployment.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.admin.sites import site
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import key_cache
from accounts.models import APIKey, hash_key
from accounts.services import create_api_key
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def key_cache_alias(settings, monkeypatch):
    """The ``api_keys`` cache (Redis when configured, else in memory), and a backend object made from it."""
    if "api_keys" not in settings.CACHES:
        settings.CACHES = {**settings.CACHES, "api_keys": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "api-keys-under-test"}}
    monkeypatch.setattr(key_cache, "_shared", None)


@pytest.fixture
def without_key_cache(key_cache_alias, settings, monkeypatch):
    """The settings of a deployment without Redis: no ``api_keys`` alias."""
    settings.CACHES = {alias: config for alias, config in settings.CACHES.items() if alias != "api_keys"}
    monkeypatch.setattr(key_cache, "_shared", None)


def _key_queries(queries) -> list[str]:
    return [q["sql"] for q in queries if "system_app_apikey" in q["sql"] and q["sql"].lstrip().startswith("SELECT")]


def _key_of(client) -> APIKey:
    return APIKey.objects.get(prefix=client.raw_key.split("_")[1])


def test_a_known_key_is_looked_up_once_then_read_from_the_cache(make_user, client_for, registry):
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    with CaptureQueriesContext(connection) as queries:
        assert_ok(client.get("/models/"))
    assert _key_queries(queries.captured_queries) == []


def test_the_cache_is_keyed_by_the_hash_and_holds_no_password(make_user, client_for, registry):
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    cached = key_cache._cache().get(key_cache._entry(hash_key(client.raw_key)))
    assert cached is not None and cached.key_hash == hash_key(client.raw_key)
    assert "password" in cached.user.get_deferred_fields()


def test_every_thread_shares_one_cache_backend():
    # caches[alias] is per context, and each ASGI request is a new one: one backend serves them all.
    seen = []
    thread = threading.Thread(target=lambda: seen.append(key_cache._cache()))
    thread.start()
    thread.join()
    assert seen == [key_cache._cache()] and seen[0] is key_cache._cache()


def test_a_revoked_key_is_refused_at_once(make_user, client_for, registry):
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    _key_of(client).revoke()
    assert_error(client.get("/models/"), 401, "AuthenticationError")


def test_a_key_revoked_from_the_admin_action_is_refused_at_once(make_user, client_for, registry):
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    admin = site._registry[APIKey]
    request = RequestFactory().post("/admin/")
    request.user = make_user(superuser=True)
    request._messages = type("Messages", (), {"add": lambda *a, **k: None})()
    admin.revoke_keys(request, APIKey.objects.filter(pk=_key_of(client).pk))
    assert_error(client.get("/models/"), 401, "AuthenticationError")


def test_a_deleted_key_is_refused_at_once(make_user, client_for, registry):
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    _key_of(client).delete()
    assert_error(client.get("/models/"), 401, "AuthenticationError")


@pytest.mark.parametrize("change", ["deactivate", "delete"])
def test_a_change_to_the_keys_user_is_seen_at_once(make_user, client_for, registry, change):
    user = make_user("model_read")
    client = client_for(user)
    assert_ok(client.get("/models/"))
    if change == "deactivate":
        user.is_active = False
        user.save()
    else:
        user.delete()
    assert_error(client.get("/models/"), 401, "AuthenticationError")


def test_a_cached_key_still_expires_on_time(make_user, registry):
    from rest_framework.test import APIClient

    _, raw = create_api_key(user=make_user("model_read"), expires_at=timezone.now() + timedelta(seconds=1.5))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_ok(client.get("/models/"))
    time.sleep(1.6)
    assert_error(client.get("/models/"), 401, "AuthenticationError")


def test_with_the_cache_off_every_request_reads_the_key(make_user, client_for, registry, settings):
    settings.API_KEY_CACHE_SECONDS = 0
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    with CaptureQueriesContext(connection) as queries:
        assert_ok(client.get("/models/"))
    assert len(_key_queries(queries.captured_queries)) == 1


def test_without_redis_there_is_no_key_cache_and_every_request_reads_the_key(without_key_cache, make_user, client_for,
                                                                             registry):
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    with CaptureQueriesContext(connection) as queries:
        assert_ok(client.get("/models/"))
    assert len(_key_queries(queries.captured_queries)) == 1
    _key_of(client).revoke()
    assert_error(client.get("/models/"), 401, "AuthenticationError")


def test_the_settings_give_the_key_cache_to_redis_only():
    from beautyai_site import settings as production

    assert ("api_keys" in production.CACHES) == bool(production.REDIS_URL)
    assert all(config["BACKEND"].endswith("RedisCache") for alias, config in production.CACHES.items()
               if alias == "api_keys")
