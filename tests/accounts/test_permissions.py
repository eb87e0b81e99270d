"""The permission catalogue's checks: global rights, or grants on one registry entry."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group
from django.db.models.sql.compiler import SQLCompiler
from guardian.models import UserObjectPermission
from guardian.shortcuts import assign_perm, get_objects_for_user

from accounts.permissions import OBJECT_PERMISSIONS, full_name, has_global, has_on, has_somewhere
from models_app.models import ModelConfig

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


def route_check_as_guardian_answers(user, codename: str) -> bool:
    """has_somewhere as it was before its query was a ReusedQuery: the reference for its answers."""
    if has_global(user, codename):
        return True
    if codename not in OBJECT_PERMISSIONS or not (user and user.is_authenticated and user.is_active):
        return False
    return get_objects_for_user(user, full_name(codename), accept_global_perms=False).exists()


def test_the_route_check_answers_as_guardians_objects_for_user(make_user, grant, registry):
    group, other_group = Group.objects.create(name="trial"), Group.objects.create(name="other")
    nobody, direct, member, outsider, inactive, orphaned, reader = (make_user() for _ in range(7))
    grant(direct, "chat", registry["alpha"])
    grant(reader, "model_read", registry["beta"])  # another permission than the one asked
    group.user_set.add(member, inactive)
    other_group.user_set.add(outsider)
    assign_perm(full_name("test"), group, registry["beta"])
    assign_perm(full_name("benchmark"), other_group, registry["alpha"])
    grant(inactive, "chat", registry["alpha"])
    inactive.is_active = False
    inactive.save()
    gone = ModelConfig.objects.create(name="gone", model_id="org/gone", engine="transformers")
    grant(orphaned, "model_load", gone)
    assign_perm(full_name("chat"), other_group, gone)
    gone_pk = gone.pk
    gone.delete()
    # guardian keeps the grants of a deleted entry: the case is real.
    assert UserObjectPermission.objects.filter(user=orphaned, object_pk=str(gone_pk)).exists()
    users = [get_user_model().objects.get(pk=u.pk)
             for u in (nobody, direct, member, outsider, inactive, orphaned, reader)] + [AnonymousUser()]
    holders = make_user("chat"), make_user(superuser=True)
    answers = {(str(user), codename): has_somewhere(user, codename)
               for user in (*users, *holders) for codename in (*OBJECT_PERMISSIONS, "model_write")}
    assert answers == {(str(user), codename): route_check_as_guardian_answers(user, codename)
                       for user in (*users, *holders) for codename in (*OBJECT_PERMISSIONS, "model_write")}
    held = {key for key, found in answers.items() if found and key[0] not in {str(h) for h in holders}}
    assert held == {
        (str(direct), "chat"), (str(reader), "model_read"), (str(member), "test"), (str(outsider), "benchmark")}


def test_the_route_check_writes_its_sql_once(make_user, grant, registry, monkeypatch):
    user, other = make_user(), make_user()
    grant(user, "chat", registry["alpha"])
    assert has_somewhere(user, "chat")
    other.get_all_permissions()  # Django's own cache of global permissions, read once per user object
    written = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(SQLCompiler, "as_sql", lambda self, *a, **k: written.append(1) or as_sql(self, *a, **k))
    assert has_somewhere(user, "chat") and not has_somewhere(other, "chat")
    assert written == []
