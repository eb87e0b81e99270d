from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

ROLES = ("system", "user", "assistant")
FINISH_REASONS = ("stop", "length", "cancelled", "error")


class ChatSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    # The name is kept apart from the foreign key so a session outlives its registry entry.
    model = models.ForeignKey("models_app.ModelConfig", null=True, blank=True, on_delete=models.SET_NULL)
    model_name = models.CharField(max_length=128)
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or str(self.id)


class ChatMessage(models.Model):
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=[(r, r) for r in ROLES])
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    stats = models.JSONField(default=dict, blank=True)
    finish_reason = models.CharField(max_length=16, blank=True, choices=[(f, f) for f in FINISH_REASONS])
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


# Benchmarks, usage and quotas --------------------------------------------------------------------

BENCHMARK_TYPES = ("latency", "throughput", "comprehensive")
TRANSPORTS = ("rest", "sse", "websocket", "openai", "test", "benchmark")


class BenchmarkRun(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="benchmark_runs")
    model = models.ForeignKey("models_app.ModelConfig", null=True, blank=True, on_delete=models.SET_NULL)
    model_name = models.CharField(max_length=128)
    benchmark_type = models.CharField(max_length=16, choices=[(t, t) for t in BENCHMARK_TYPES])
    config = models.JSONField(default=dict)
    results = models.JSONField(default=dict)
    summary = models.JSONField(default=dict)
    duration_ms = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.benchmark_type} {self.model_name} ({self.created_at:%Y-%m-%d %H:%M})"


class UsageRecord(models.Model):
    """One row per generation, whatever the transport: what quotas and the usage route add up."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records")
    api_key = models.ForeignKey("system_app.APIKey", null=True, blank=True, on_delete=models.SET_NULL)
    model_name = models.CharField(max_length=128)
    transport = models.CharField(max_length=16, choices=[(t, t) for t in TRANSPORTS])
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    duration_ms = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "created_at"], name="usage_user_created")]

    def __str__(self) -> str:
        return f"{self.user} {self.model_name} {self.prompt_tokens}+{self.completion_tokens}"


class QuotaRule(models.Model):
    """A limit for one user or for each member of a group, on one model or on all of them."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="quota_rules")
    group = models.ForeignKey("auth.Group", null=True, blank=True, on_delete=models.CASCADE,
                              related_name="quota_rules")
    model = models.ForeignKey("models_app.ModelConfig", null=True, blank=True, on_delete=models.CASCADE,
                              help_text="Empty: the rule covers every model together.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True,
                                                    help_text="Prompt and completion tokens per UTC day.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
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
            raise ValidationError("Choose either a user or a group.")
        if self.requests_per_minute is None and self.tokens_per_day is None:
            raise ValidationError("Set requests per minute, tokens per day, or both.")

    def __str__(self) -> str:
        who = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"Quota #{self.pk} for {who} on {self.model or 'all models'}"
