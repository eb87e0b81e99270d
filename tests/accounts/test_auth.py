"""API keys: hashed at rest, shown once, revocable, expiring; sessions work beside them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey, hash_key
from accounts.services import create_api_key

from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db


def test_a_key_is_stored_only_as_a_hash_and_a_prefix(make_user):
    key, raw = create_api_key(user=make_user())
    stored = APIKey.objects.filter(pk=key.pk).values().get()
    assert raw not in str(stored)
    assert stored["key_hash"] == hash_key(raw) and raw.startswith(f"bai_{stored['prefix']}_")


def test_a_valid_key_authenticates_and_records_last_use(make_user, client_for, registry):
    client = client_for(make_user("model_read"))
    assert_ok(client.get("/models/"))
    key = APIKey.objects.get(prefix=client.raw_key.split("_")[1])
    assert key.last_used_at is not None


def test_a_key_in_an_x_api_key_header_authenticates_on_every_json_route(make_user, client_for, registry):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=client_for(make_user("model_read")).raw_key)
    assert_ok(client.get("/models/"))


def test_the_bearer_header_wins_over_x_api_key(make_user, client_for, registry):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer bai_deadbeef_nope",
                       HTTP_X_API_KEY=client_for(make_user("model_read")).raw_key)
    assert_error(client.get("/models/"), 401, "AuthenticationError")


@pytest.mark.parametrize("header", ["Bearer bai_deadbeef_nope", "Bearer ", "Bearer x", "Basic abc", "Bearer bai_x"])
def test_a_wrong_or_malformed_key_answers_401(registry, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/models/")
    assert_error(response, 401, "AuthenticationError")


def test_a_key_with_the_right_prefix_but_wrong_secret_answers_401(make_user, client_for, registry):
    client = client_for(make_user("model_read"))
    forged = client.raw_key[:-4] + "AAAA"
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert_error(other.get("/models/"), 401, "AuthenticationError")


def test_a_key_of_a_deactivated_user_answers_401(make_user, client_for, registry):
    user = make_user("model_read")
    client = client_for(user)
    user.is_active = False
    user.save()
    assert_error(client.get("/models/"), 401, "AuthenticationError")


def test_401_answers_carry_a_bearer_challenge(anon, registry):
    assert anon.get("/models/")["WWW-Authenticate"].startswith("Bearer")


def test_a_browser_session_works_for_the_same_routes(make_user, registry):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(make_user("model_read"))
    assert_ok(client.get("/models/"))


def test_a_browser_session_needs_csrf_for_writes(make_user, registry):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(make_user("model_write"))
    assert_error(client.post("/models/default/beta"), 403, "PermissionDeniedError")


def test_superusers_hold_every_permission(api_as, registry):
    assert_ok(api_as(superuser=True).post("/models/default/beta"))


def test_create_api_key_prints_the_key_as_the_last_line(make_user, capsys, registry):
    make_user("model_read", username="carol")
    call_command("create_api_key", "carol", "--name", "ci", "--expires-days", "3")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    key = APIKey.objects.get(prefix=raw.split("_")[1])
    assert key.name == "ci" and key.user.username == "carol"
    assert timedelta(days=2, hours=23) < key.expires_at - timezone.now() <= timedelta(days=3)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_ok(client.get("/models/"))


def test_create_api_key_refuses_an_unknown_user(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("create_api_key", "nobody")


def test_the_contract_permissions_each_exist_once():
    from django.contrib.auth.models import Permission

    from accounts.permissions import CONTRACT_PERMISSIONS

    for codename in CONTRACT_PERMISSIONS:
        assert Permission.objects.filter(codename=codename).count() == 1, codename
    assert len(CONTRACT_PERMISSIONS) == 13


def test_the_standard_groups_hold_their_documented_permissions():
    from django.contrib.auth.models import Group

    def perms(name):
        return set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))

    assert perms("viewer") == {"model_read", "system_status", "session_load"}
    assert perms("operator") == perms("viewer") | {
        "model_load", "chat", "test", "benchmark", "session_save", "session_delete", "cache_clear"}
    assert perms("administrator") == perms("operator") | {"model_write", "model_delete", "admin"}


def test_a_key_is_found_with_its_user_and_without_the_password_hash(make_user):
    user = make_user("model_read")
    key, raw = create_api_key(user=user, expires_at=timezone.now() + timedelta(days=1))
    found = APIKey.objects.find(raw)
    assert (found.pk, found.name, found.expires_at, found.revoked_at) == (key.pk, key.name, key.expires_at, None)
    assert found.user == user and found.user.username == user.username and found.user.is_active
    assert found.get_deferred_fields() == set() and found.user.get_deferred_fields() == {"password"}
    assert APIKey.objects.find(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None


def test_looking_a_key_up_writes_its_sql_only_the_first_time(make_user, monkeypatch):
    from django.db.models.sql.compiler import SQLCompiler

    _, raw = create_api_key(user=make_user())
    APIKey.objects.find(raw)
    written = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(SQLCompiler, "as_sql", lambda self, *a, **k: written.append(1) or as_sql(self, *a, **k))
    _, other = create_api_key(user=make_user())
    written.clear()  # creating the key wrote its own
    assert APIKey.objects.find(raw) is not None and APIKey.objects.find(other) is not None
    assert written == []
