"""API keys: who a request acts as when it carries ``Authorization: Bearer`` or ``x-api-key``."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

KEY_PREFIX_LENGTH = 8


def hash_key(raw_key: str) -> str:
    # Keys carry 256 random bits, so a plain SHA-256 is enough: there is nothing to brute-force.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class APIKeyQuerySet(models.QuerySet):
    def find(self, raw_key: str) -> APIKey | None:
        """The key matching ``raw_key`` (active or not), compared in constant time."""
        parts = raw_key.split("_", 2)
        if len(parts) != 3 or parts[0] != "bai" or len(parts[1]) != KEY_PREFIX_LENGTH:
            return None
        # Without the password hash: nothing that authenticates by key needs it, and the row may be cached.
        candidate = self.select_related("user").defer("user__password").filter(prefix=parts[1]).first()
        if candidate is None or not hmac.compare_digest(candidate.key_hash, hash_key(raw_key)):
            return None
        return candidate


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
