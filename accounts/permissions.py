"""The permission catalogue: the contract's permission names, what each allows, and how they are checked.

The rows themselves are Meta permissions of ``models_app.ModelConfig`` (``PERMISSION_APP``), because
django-guardian grants the object-level ones on a registry entry and needs them on its content
type. This module names them; it imports no app, so every app can ask it.
"""

from __future__ import annotations

import functools

from beautyai_site.api.permissions import ContractPermission as RoutePermission
from beautyai_site.sql import ReusedQuery

PERMISSION_APP = "models_app"

CONTRACT_PERMISSIONS = {
    "model_read": "View model information",
    "model_write": "Add and update models",
    "model_delete": "Remove models",
    "model_load": "Load and unload models",
    "chat": "Chat completions",
    "test": "Model testing",
    "benchmark": "Performance benchmarking",
    "session_save": "Save chat sessions",
    "session_load": "Load chat sessions",
    "session_delete": "Delete chat sessions",
    "system_status": "View system status",
    "cache_clear": "Clear caches and memory",
    "admin": "Administrative operations",
}

# These may also be granted on a single registry entry.
OBJECT_PERMISSIONS = ("model_read", "model_load", "chat", "test", "benchmark")


def full_name(codename: str) -> str:
    return f"{PERMISSION_APP}.{codename}"


def has_global(user, codename: str) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(full_name(codename)))


def has_on(user, codename: str, obj) -> bool:
    """Global permission, or (for the object-grantable ones) the permission on ``obj``."""
    if has_global(user, codename):
        return True
    return codename in OBJECT_PERMISSIONS and user.is_authenticated and _object_checker(user).has_perm(
        full_name(codename), obj)


def _object_checker(user):
    """The guardian checker of this user object: it reads an object's grants once and keeps them.

    guardian's backend (``user.has_perm(perm, obj)``) makes a new checker, two queries, for every
    check, and a chat asks two or three on one model (docs/performance.md). Kept on the user object,
    like Django's own cache of global permissions: that object lives for one request (the API key
    and the session load it afresh, before any check), so a change of grants shows from the next.
    """
    checker = user.__dict__.get("_object_permission_checker")
    if checker is None:
        from guardian.core import ObjectPermissionChecker

        checker = user._object_permission_checker = ObjectPermissionChecker(user)
    return checker


def has_somewhere(user, codename: str) -> bool:
    """Global permission, or the permission on at least one object: enough to reach the route."""
    if has_global(user, codename):
        return True
    if codename not in OBJECT_PERMISSIONS or not (user and user.is_authenticated and user.is_active):
        return False
    return any(query.rows(user_id=user.pk, limit=1) for query in _GRANTS[codename])


def _grants(codename: str, user_id: int, *, through_groups: bool):
    """The user's own grants of ``codename`` on entries that exist, or their groups': together what
    ``guardian.shortcuts.get_objects_for_user(user, ..., accept_global_perms=False)`` finds."""
    from django.apps import apps
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ImproperlyConfigured
    from django.db.models import CharField
    from django.db.models.functions import Cast
    from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

    # Looked up when the query is first written, so the catalogue imports no app.
    entry = apps.get_model(PERMISSION_APP, "ModelConfig")
    grants = (get_group_obj_perms_model if through_groups else get_user_obj_perms_model)(entry)
    if not grants.objects.is_generic():
        raise ImproperlyConfigured("has_somewhere reads guardian's generic object permissions (object_pk)")
    if through_groups:
        # Through the membership table itself: a join to the groups' table adds nothing but planning time.
        holder = {"group__in": get_user_model().groups.through.objects.filter(user=user_id).values("group")}
    else:
        holder = {"user": user_id}
    return grants.objects.filter(
        permission__codename=codename,
        permission__content_type__app_label=entry._meta.app_label,
        permission__content_type__model=entry._meta.model_name,
        # guardian keeps the grants of a deleted entry (nothing cascades to a generic key), and
        # get_objects_for_user lists only entries that exist, so a grant counts only on one of those;
        # it matches them as guardian does, the entry's key as text against object_pk.
        object_pk__in=entry.objects.order_by().annotate(as_text=Cast("pk", CharField())).values("as_text"),
        **holder,
    ).order_by().values("pk")


# A user holding a permission only on some entries reaches its routes through this check, every
# request; guardian's get_objects_for_user wrote its SQL anew each time (docs/performance.md). The
# user's own grants first, their groups' only without one: two short queries, because one asking
# both (an OR of two subqueries) took PostgreSQL longer to plan than the two took together.
_GRANTS = {codename: [ReusedQuery(functools.partial(_grants, codename, through_groups=groups), user_id=int)
                      for groups in (False, True)]
           for codename in OBJECT_PERMISSIONS}


class ContractPermission(RoutePermission):
    """The REST framework's default permission class (settings): a route's permission is held
    globally or on at least one registry entry."""

    def grants(self, user, codename: str) -> bool:
        return has_somewhere(user, codename)
