"""The permission catalogue's checks: global rights, or grants on one registry entry."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from accounts.permissions import has_on

pytestmark = pytest.mark.django_db


def test_a_users_grants_on_a_model_are_read_once_per_user_object(make_user, grant, registry,
                                                                  django_assert_num_queries):
    user = make_user()
    grant(user, "model_read", registry["alpha"])
    grant(user, "chat", registry["alpha"])
    assert has_on(user, "model_read", registry["alpha"])
    with django_assert_num_queries(0):  # what a chat asks next, on the same model
        assert has_on(user, "chat", registry["alpha"])
        assert not has_on(user, "model_load", registry["alpha"])


def test_grants_on_another_model_are_read_for_that_model(make_user, grant, registry):
    user = make_user()
    grant(user, "chat", registry["alpha"])
    assert has_on(user, "chat", registry["alpha"])
    assert not has_on(user, "chat", registry["beta"])


def test_a_grant_shows_to_the_next_request(make_user, grant, registry):
    user = make_user()
    assert not has_on(user, "chat", registry["alpha"])
    grant(user, "chat", registry["alpha"])
    assert has_on(get_user_model().objects.get(pk=user.pk), "chat", registry["alpha"])


def test_an_inactive_user_holds_no_grant(make_user, grant, registry):
    user = make_user()
    grant(user, "chat", registry["alpha"])
    user.is_active = False
    user.save()
    assert not has_on(get_user_model().objects.get(pk=user.pk), "chat", registry["alpha"])
