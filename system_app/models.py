from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils import timezone


class AuditEvent(models.Model):
    """One row per mutating request, per 401/403 and per admin change. Never request bodies."""

    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             verbose_name=_("user"))
    username = models.CharField(_("username"), max_length=150, blank=True)
    api_key = models.ForeignKey("accounts.APIKey", null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("API key"))
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
