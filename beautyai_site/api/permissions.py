"""The contract's permissions, checked globally and per registry entry (django-guardian)."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

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
    return codename in OBJECT_PERMISSIONS and user.is_authenticated and user.has_perm(full_name(codename), obj)


def has_somewhere(user, codename: str) -> bool:
    """Global permission, or the permission on at least one object: enough to reach the route."""
    if has_global(user, codename):
        return True
    if codename not in OBJECT_PERMISSIONS or not (user and user.is_authenticated and user.is_active):
        return False
    from guardian.shortcuts import get_objects_for_user

    from models_app.models import ModelConfig

    return get_objects_for_user(
        user, full_name(codename), klass=ModelConfig, accept_global_perms=False
    ).exists()


class ContractPermission(BasePermission):
    """Reads the permission a view action needs from ``view.required_permissions[action]``.

    Unauthenticated callers fail here with 401 (DRF turns a denial into NotAuthenticated when no
    authenticator succeeded). Per-object checks happen in the selectors, which answer 404 for a
    model the caller may not read.
    """

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        if getattr(view, "action_map", None) is not None and view.action is None:
            return True  # a method this route does not have: let DRF answer 405
        required = getattr(view, "required_permissions", {})
        codename = required.get(getattr(view, "action", None) or request.method.lower())
        if codename is None:
            return False  # a route that names no permission is closed, not open
        return has_somewhere(request.user, codename)
