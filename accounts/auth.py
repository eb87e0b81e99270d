"""The API-key authenticator for DRF and the WebSocket consumer, and the browser-session re-check."""

from __future__ import annotations

from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from accounts import key_cache
from accounts.models import APIKey


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authenticate_api_key(raw_key: str) -> APIKey:
    """The active key for ``raw_key``; raises AuthenticationFailed for unknown, revoked or expired keys.

    The message is the same for all three so that a caller cannot probe which keys exist.
    """
    key = key_cache.find_key(raw_key)
    if key is None or not key.is_active or not key.user.is_active:
        raise AuthenticationFailed("Invalid, revoked or expired API key.")
    now = timezone.now()
    # Writing last_used_at on every request would turn each read into a write; a minute's precision is plenty.
    precision = timedelta(seconds=settings.API_KEY_LAST_USED_PRECISION_SECONDS)
    if key.last_used_at is None or now - key.last_used_at > precision:
        APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
        key_cache.remember(key)
    return key


def session_user(session_key: str | None):
    """The active user that the browser session ``session_key`` still signs in, read afresh from the
    database; None once it was signed out or expired, its user deactivated or their password changed.

    Unlike ``django.contrib.auth.get_user`` this never rotates or flushes the session: a WebSocket
    that re-checks it cannot hand the browser a new cookie.
    """
    if not session_key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    backend_path = session.get(BACKEND_SESSION_KEY)
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(get_user_model()._meta.pk.to_python(session.get(SESSION_KEY)))
    if user is None:
        return None
    stored = session.get(HASH_SESSION_KEY) or ""
    valid = (user.get_session_auth_hash(), *user.get_session_auth_fallback_hash())
    return user if any(constant_time_compare(stored, candidate) for candidate in valid) else None


class APIKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer <key>``, or ``x-api-key: <key>`` as Anthropic's clients send it (the
    Bearer header wins when both come). Without either, the next authenticator (the session) is tried."""

    def authenticate(self, request):
        token = bearer_token(request.headers.get("Authorization", "")) or request.headers.get("x-api-key", "").strip()
        if not token:
            return None
        key = authenticate_api_key(token)
        return key.user, key

    def authenticate_header(self, request):
        return 'Bearer realm="beautyai"'


class APIKeySchema(OpenApiAuthenticationExtension):
    """Describes the bearer keys in the OpenAPI schema."""

    target_class = APIKeyAuthentication
    name = "BearerAPIKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "An API key: bai_<prefix>_<secret> (also accepted as an x-api-key header)"}
