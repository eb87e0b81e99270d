"""The API-key admin: staff issue keys for themselves only (admins for anyone); revoking needs the change permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import APIKey
from accounts.services import create_api_key


pytestmark = pytest.mark.django_db

ADD = "/admin/accounts/apikey/add/"
CHANGELIST = "/admin/accounts/apikey/"


@pytest.fixture
def staff(make_user):
    """``staff(["add_apikey"], "admin")`` → (user, client): a staff user with those key and contract permissions."""

    def make(key_permissions: list[str], *codenames: str):
        user = make_user(*codenames)
        user.is_staff = True
        user.save()
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label="accounts",
                                                             codename__in=key_permissions))
        client = Client()
        client.force_login(user)
        return user, client

    return make


def test_a_staff_user_cannot_issue_a_key_for_somebody_else(staff, make_user):
    victim = make_user("admin")
    user, client = staff(["add_apikey", "view_apikey"])
    response = client.post(ADD, {"user": victim.pk, "name": "borrowed"})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not APIKey.objects.filter(user=victim).exists()
    assert client.post(ADD, {"user": user.pk, "name": "mine"}).status_code == 302
    assert list(APIKey.objects.values_list("user", "name")) == [(user.pk, "mine")]


def test_an_admin_may_issue_a_key_for_another_user(staff, make_user):
    other = make_user()
    _, client = staff(["add_apikey", "view_apikey"], "admin")
    assert client.post(ADD, {"user": other.pk, "name": "for-other"}).status_code == 302
    assert APIKey.objects.get(name="for-other").user == other


@pytest.mark.parametrize("permissions, revoked", [(["view_apikey"], False), (["view_apikey", "change_apikey"], True)])
def test_revoking_keys_needs_the_change_permission(staff, make_user, permissions, revoked):
    key, _ = create_api_key(user=make_user(), name="target")
    _, client = staff(permissions)
    client.post(CHANGELIST, {"action": "revoke_keys", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert (key.revoked_at is not None) is revoked
