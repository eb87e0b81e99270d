"""The permission class of the JSON routes: which permission an action needs, and 401 versus 403.

Whether a user holds a permission is the accounts app's business (``accounts.permissions``, whose
subclass is the configured default): this plumbing imports no app.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission


class ContractPermission(BasePermission):
    """Reads the permission a view action needs from ``view.required_permissions[action]`` and asks
    ``grants(user, codename)``, which a subclass supplies.

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
        return self.grants(request.user, codename)

    def grants(self, user, codename: str) -> bool:
        raise NotImplementedError("a subclass decides whether the user holds the permission")
