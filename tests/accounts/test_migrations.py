"""Moving API keys from system_app to accounts (accounts 0001) keeps every key working, and what
points at their content type — permissions, the groups and users holding them — keeps its ids."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from accounts.models import hash_key
from tests.envelope import assert_ok



def migrate_to_before_the_move():
    """Unapplies accounts 0001 and what depends on it; returns the models as they were then."""
    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", None)])
    return executor.loader.project_state(("system_app", "0003_userpreference_translatable_labels")).apps


def migrate_to_the_end():
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_a_key_made_before_the_move_still_authenticates_with_its_permissions_and_groups():
    old_apps = migrate_to_before_the_move()
    key_type = ContentType.objects.get(app_label="system_app", model="apikey")
    view_keys = Permission.objects.get(content_type=key_type, codename="view_apikey")
    user = get_user_model().objects.create_user("keeper", password="pw-for-tests-only")
    user.groups.add(Group.objects.get(name="viewer"))
    user.user_permissions.add(view_keys)
    raw = "bai_0123abcd_" + "s" * 43
    old_apps.get_model("system_app", "APIKey").objects.create(
        user_id=user.pk, name="old", prefix="0123abcd", key_hash=hash_key(raw))

    migrate_to_the_end()

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_ok(client.get("/models/"))  # model_read, through the viewer group
    assert ContentType.objects.get(app_label="accounts", model="apikey").pk == key_type.pk
    assert not ContentType.objects.filter(app_label="system_app", model="apikey").exists()
    user = get_user_model().objects.get(pk=user.pk)
    assert list(user.groups.values_list("name", flat=True)) == ["viewer"]
    assert user.has_perm("accounts.view_apikey") and user.user_permissions.get().pk == view_keys.pk
