from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

ROLES = ("system", "user", "assistant", "tool")
FINISH_REASONS = ("stop", "length", "tool_calls", "cancelled", "error")
ROLE_LABELS = {"system": pgettext_lazy("message role", "system"), "user": pgettext_lazy("message role", "user"),
               "assistant": pgettext_lazy("message role", "assistant"), "tool": pgettext_lazy("message role", "tool")}
FINISH_REASON_LABELS = {"stop": pgettext_lazy("finish reason", "stop"), "length": pgettext_lazy("finish reason", "length"),
                        "tool_calls": pgettext_lazy("finish reason", "tool calls"),
                        "cancelled": pgettext_lazy("finish reason", "cancelled"),
                        "error": pgettext_lazy("finish reason", "error")}
TOOL_CALL_ID_CHARS = 64


class ChatSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions",
                              verbose_name=_("owner"))
    # The name is kept apart from the foreign key so a session outlives its registry entry.
    model = models.ForeignKey("models_app.ModelConfig", null=True, blank=True, on_delete=models.SET_NULL,
                              verbose_name=_("model"))
    model_name = models.CharField(_("model name"), max_length=128)
    title = models.CharField(_("title"), max_length=200, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        verbose_name = _("chat")
        verbose_name_plural = _("chats")

    def __str__(self) -> str:
        return self.title or str(self.id)


class ChatMessage(models.Model):
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages", verbose_name=_("chat"))
    role = models.CharField(_("role"), max_length=16, choices=list(ROLE_LABELS.items()))
    content = models.TextField(_("content"), blank=True)
    reasoning = models.TextField(_("reasoning"), blank=True)
    prompt_tokens = models.PositiveIntegerField(_("prompt tokens"), null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(_("completion tokens"), null=True, blank=True)
    stats = models.JSONField(_("statistics"), default=dict, blank=True)
    finish_reason = models.CharField(_("finish reason"), max_length=16, blank=True, choices=list(FINISH_REASON_LABELS.items()))
    # An assistant turn's calls, as OpenAI writes them: [{"id", "type": "function", "function": {"name", "arguments"}}].
    tool_calls = models.JSONField(_("tool calls"), default=list, blank=True)
    # A tool turn answers the call with this id.
    tool_call_id = models.CharField(_("tool call id"), max_length=TOOL_CALL_ID_CHARS, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = _("chat message")
        verbose_name_plural = _("chat messages")

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


# Benchmarks, usage and quotas --------------------------------------------------------------------

BENCHMARK_TYPES = ("latency", "throughput", "comprehensive")
TRANSPORTS = ("rest", "sse", "websocket", "openai", "anthropic", "test", "benchmark")


class BenchmarkRun(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="benchmark_runs",
                             verbose_name=_("user"))
    model = models.ForeignKey("models_app.ModelConfig", null=True, blank=True, on_delete=models.SET_NULL,
                              verbose_name=_("model"))
    model_name = models.CharField(_("model name"), max_length=128)
    benchmark_type = models.CharField(_("benchmark type"), max_length=16, choices=[(t, t) for t in BENCHMARK_TYPES])
    config = models.JSONField(_("configuration"), default=dict)
    results = models.JSONField(_("results"), default=dict)
    summary = models.JSONField(_("summary"), default=dict)
    duration_ms = models.FloatField(_("duration (ms)"), default=0.0)
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("benchmark run")
        verbose_name_plural = _("benchmark runs")

    def __str__(self) -> str:
        return f"{self.benchmark_type} {self.model_name} ({self.created_at:%Y-%m-%d %H:%M})"


class UsageRecord(models.Model):
    """One row per generation, whatever the transport: what quotas and the usage route add up."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records",
                             verbose_name=_("user"))
    api_key = models.ForeignKey("accounts.APIKey", null=True, blank=True, on_delete=models.SET_NULL,
                                verbose_name=_("API key"))
    model_name = models.CharField(_("model name"), max_length=128)
    # The alias the request named, when it named one; model_name is the model that answered.
    requested_name = models.CharField(_("requested name"), max_length=128, blank=True)
    transport = models.CharField(_("transport"), max_length=16, choices=[(t, t) for t in TRANSPORTS])
    prompt_tokens = models.PositiveIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.PositiveIntegerField(_("completion tokens"), default=0)
    duration_ms = models.FloatField(_("duration (ms)"), default=0.0)
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "created_at"], name="usage_user_created")]
        verbose_name = _("usage record")
        verbose_name_plural = _("usage records")

    def __str__(self) -> str:
        return f"{self.user} {self.model_name} {self.prompt_tokens}+{self.completion_tokens}"


class QuotaRule(models.Model):
    """A limit for one user or for each member of a group, on one model or on all of them."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="quota_rules", verbose_name=_("user"))
    group = models.ForeignKey("auth.Group", null=True, blank=True, on_delete=models.CASCADE,
                              related_name="quota_rules", verbose_name=_("group"),
                              help_text=_("Set a user or a group, not both: a group rule limits each member."))
    model = models.ForeignKey("models_app.ModelConfig", null=True, blank=True, on_delete=models.CASCADE,
                              verbose_name=_("model"), help_text=_("Empty: the rule covers every model together."))
    requests_per_minute = models.PositiveIntegerField(_("requests per minute"), null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(_("tokens per day"), null=True, blank=True,
                                                    help_text=_("Prompt and completion tokens per UTC day."))
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["id"]
        verbose_name = _("quota rule")
        verbose_name_plural = _("quota rules")
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(user__isnull=False, group__isnull=True)
                           | models.Q(user__isnull=True, group__isnull=False)),
                name="quota_rule_user_xor_group",
            ),
        ]

    def clean(self):
        from django.core.exceptions import ValidationError

        if (self.user_id is None) == (self.group_id is None):
            raise ValidationError(_("Choose either a user or a group."))
        if self.requests_per_minute is None and self.tokens_per_day is None:
            raise ValidationError(_("Set requests per minute, tokens per day, or both."))

    def __str__(self) -> str:
        who = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"Quota #{self.pk} for {who} on {self.model or 'all models'}"
