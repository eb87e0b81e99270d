"""The permission catalogue: the contract's permission names, what each allows, and how they are checked.

The rows themselves are Meta permissions of ``models_app.ModelConfig`` (``PERMISSION_APP``), because
django-guardian grants the object-level ones on a registry entry and needs them on its content
type. This module names them; it imports no app, so every app can ask it.
"""

from __future__ import annotations

from beautyai_site.api.permissions import ContractPermission as RoutePermission

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
    from guardian.shortcuts import get_objects_for_user

    # Without ``klass`` guardian takes the model from the permission's content type (ModelConfig's),
    # so the catalogue needs no import of the app that owns the rows.
    return get_objects_for_user(user, full_name(codename), accept_global_perms=False).exists()


class ContractPermission(RoutePermission):
    """The REST framework's default permission class (settings): a route's permission is held
    globally or on at least one registry entry."""

    def grants(self, user, codename: str) -> bool:
        return has_somewhere(user, codename)
