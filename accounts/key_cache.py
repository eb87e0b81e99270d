"""A short-lived cache of API-key lookups, so that authenticating a request is not a database query.

Entries are keyed by the key's SHA-256 (what the database stores), never by the key itself, and
hold the APIKey row with its user as read from the database, before any permission was checked
on it (permissions are read fresh on every request). Every change to a key or to its user —
save, delete, revocation from the admin — removes the entries at once and again when the
transaction commits, so that a request racing the change cannot put the old row back for long.
The cache is the ``api_keys`` alias, which exists only with Redis: shared by every process that
changes keys, so no process keeps a stale entry. Without Redis every request reads the key from the
database (the file cache that served without Redis was dropped: docs/security.md has the numbers).
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import caches
from django.db import transaction

from accounts.models import APIKey, hash_key

_PREFIX = "beautyai:apikey:"


_shared = None


def _cache():
    """One backend object for the whole process. ``caches[alias]`` is context-local, and under ASGI
    every request is a new context, so it built a new backend per request. The Redis backend is
    safe to share between threads: its client keeps a connection pool."""
    global _shared
    if _shared is None:
        _shared = caches.create_connection("api_keys")
    return _shared


def _configured() -> bool:
    return "api_keys" in settings.CACHES


def _entry(key_hash: str) -> str:
    return _PREFIX + key_hash


def find_key(raw_key: str) -> APIKey | None:
    """``APIKey.objects.find`` through the cache; unknown keys are not cached."""
    if not settings.API_KEY_CACHE_SECONDS or not _configured():
        return APIKey.objects.find(raw_key)
    key = _cache().get(_entry(hash_key(raw_key)))
    if key is None:
        key = APIKey.objects.find(raw_key)
        if key is not None:
            remember(key)
    return key


def remember(key: APIKey) -> None:
    """Stores ``key``: after a lookup, and again after a field of it changed in this request (``last_used_at``)."""
    if settings.API_KEY_CACHE_SECONDS and _configured():
        _cache().set(_entry(key.key_hash), key, settings.API_KEY_CACHE_SECONDS)


def forget(key_hashes) -> None:
    if not _configured():
        return
    entries = [_entry(h) for h in key_hashes if h]
    if not entries:
        return
    _cache().delete_many(entries)
    transaction.on_commit(lambda: _cache().delete_many(entries))


def forget_keys_of(user_id) -> None:
    forget(APIKey.objects.filter(user_id=user_id).values_list("key_hash", flat=True))


def on_key_changed(sender, instance, **kwargs) -> None:
    forget([instance.key_hash])


def on_user_changed(sender, instance, **kwargs) -> None:
    forget_keys_of(instance.pk)
