from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils import timezone

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

    def __str__(self) -> str:
        return f"{self.name} (bai_{self.prefix}_…)"

    @classmethod
    def issue(cls, *, user, name: str = "default", expires_at=None) -> tuple[APIKey, str]:
        """Create a key and return it with its clear text, which is not kept anywhere."""
        while True:
            prefix = secrets.token_hex(KEY_PREFIX_LENGTH // 2)
            if not cls.objects.filter(prefix=prefix).exists():
                break
        raw = f"bai_{prefix}_{secrets.token_urlsafe(32)}"
        key = cls.objects.create(user=user, name=name, prefix=prefix, key_hash=hash_key(raw), expires_at=expires_at)
        return key, raw

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class AuditEvent(models.Model):
    """One row per mutating request, per 401/403 and per admin change. Never request bodies."""

    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             verbose_name=_("user"))
    username = models.CharField(_("username"), max_length=150, blank=True)
    api_key = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("API key"))
    client_ip = models.GenericIPAddressField(_("client address"), null=True, blank=True)
    method = models.CharField(_("method"), max_length=10)
    route = models.CharField(_("route"), max_length=255)
    action = models.CharField(_("action"), max_length=100, blank=True)
    target = models.CharField(_("target"), max_length=255, blank=True)
    status_code = models.PositiveSmallIntegerField(_("status code"))
    error_code = models.CharField(_("error code"), max_length=64, blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status_code"]), models.Index(fields=["action"])]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.method} {self.route} {self.status_code}"


class RequestMetric(models.Model):
    """One row per API request, written off the request path by the background writer.

    ``route`` is the URL pattern (``/models/<str:model_name>``), never the raw path, so that rows
    group by route and no client-chosen text is stored.
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    method = models.CharField(max_length=10)
    route = models.CharField(max_length=255)
    status_code = models.PositiveSmallIntegerField()
    duration_ms = models.FloatField()
    # A name, not a foreign key: rows are inserted in batches after the response, when the user may
    # already be gone, and a failed constraint would drop the whole batch.
    username = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.method} {self.route} {self.status_code}"


class ResourceSample(models.Model):
    """What the sampler measured at one tick. GPU figures are 0 on a host without a GPU."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    cpu_percent = models.FloatField()
    memory_percent = models.FloatField()
    gpu_percent = models.FloatField()
    gpu_memory_percent = models.FloatField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} cpu {self.cpu_percent:.0f}% mem {self.memory_percent:.0f}%"


class LogRecord(models.Model):
    """A log line of the web process or of a runner (``source`` is then the model name), scrubbed."""

    created_at = models.DateTimeField(_("time"), db_index=True)
    level = models.CharField(_("level"), max_length=10)
    levelno = models.PositiveSmallIntegerField(_("level number"))
    source = models.CharField(_("source"), max_length=200)
    message = models.TextField(_("message"))

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["levelno", "created_at"])]
        verbose_name = _("log line")
        verbose_name_plural = _("log lines")

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.level} {self.source}"


class UserPreference(models.Model):
    """What a user chose for the pages; read on every page they open, whatever browser or session."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE,
                                related_name="preference", verbose_name=_("user"))
    language = models.CharField(_("language"), max_length=10, choices=settings.LANGUAGES)

    class Meta:
        verbose_name = _("user preference")
        verbose_name_plural = _("user preferences")

    def __str__(self) -> str:
        return f"{self.user}: {self.language}"
