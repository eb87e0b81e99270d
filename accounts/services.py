"""Issuing API keys: the one way the management command, bootstrap and the admin create them."""

from __future__ import annotations

import secrets
from datetime import datetime

from accounts.models import KEY_PREFIX_LENGTH, APIKey, hash_key


def create_api_key(*, user, name: str = "default", expires_at: datetime | None = None) -> tuple[APIKey, str]:
    """Creates a key for ``user`` and returns it with its clear text, which is kept nowhere."""
    while True:
        prefix = secrets.token_hex(KEY_PREFIX_LENGTH // 2)
        if not APIKey.objects.filter(prefix=prefix).exists():
            break
    raw = f"bai_{prefix}_{secrets.token_urlsafe(32)}"
    key = APIKey.objects.create(user=user, name=name, prefix=prefix, key_hash=hash_key(raw), expires_at=expires_at)
    return key, raw
