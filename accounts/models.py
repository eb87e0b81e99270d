"""API keys: who a request acts as when it carries ``Authorization: Bearer`` or ``x-api-key``."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from beautyai_site.sql import ReusedQuery, field_names, instance

KEY_PREFIX_LENGTH = 8


def hash_key(raw_key: str) -> str:
    # Keys carry 256 random bits, so a plain SHA-256 is enough: there is nothing to brute-force.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class APIKeyQuerySet(models.QuerySet):
    def find(self, raw_key: str) -> APIKey | None:
        """The key matching ``raw_key`` (active or not) with its user, compared in constant time."""
        parts = raw_key.split("_", 2)
        if len(parts) != 3 or parts[0] != "bai" or len(parts[1]) != KEY_PREFIX_LENGTH:
            return None
        rows = _KEY_WITH_USER.rows(prefix=parts[1], using=self.db)
        if not rows or not hmac.compare_digest(rows[0]["key_hash"], hash_key(raw_key)):
            return None
        return _key_from_row(rows[0], self.db)


def _user_fields() -> list[str]:
    # Without the password hash: nothing that authenticates by key needs it, and the row may be cached.
    return [field.attname for field in APIKey.user.field.related_model._meta.concrete_fields if field.name != "password"]


# Every authenticated request without the key cache runs this (accounts/key_cache.py), so its SQL is
# written once (beautyai_site/sql.py). The prefix is unique: no ordering, at most one row.
_KEY_WITH_USER = ReusedQuery(lambda prefix: APIKey.objects.filter(prefix=prefix).order_by().values(
    *field_names(APIKey), *(f"user__{name}" for name in _user_fields())), prefix=str)


def _key_from_row(row: dict, using: str) -> APIKey:
    """The key and its user as ``select_related("user").defer("user__password")`` would build them."""
    user_fields = _user_fields()
    key = instance(APIKey, row, using=using)
    user_model = APIKey.user.field.related_model
    key.user = user_model.from_db(using, user_fields, [row[f"user__{name}"] for name in user_fields])
    return key


class APIKey(models.Model):
    """An API key: only a hash and a short lookup prefix are stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys",
                             verbose_name=_("user"), help_text=_("The key acts as this user, with their permissions."))
    name = models.CharField(_("name"), max_length=100, default="default")
    prefix = models.CharField(_("prefix"), max_length=KEY_PREFIX_LENGTH, unique=True, editable=False)
    key_hash = models.CharField(_("key hash"), max_length=64, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True, help_text=_("Empty: the key never expires."))
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created_at"]
        # The table was made when keys lived in system_app; the model moved (migration
        # accounts/0001), its rows and their ids did not.
        db_table = "system_app_apikey"

    def __str__(self) -> str:
        return f"{self.name} (bai_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
