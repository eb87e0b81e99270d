from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy

from inference_app.models import BenchmarkRun, ChatMessage, ChatSession, QuotaRule, UsageRecord


class ChatMessageInline(admin.TabularInline):
    model = ChatMessage
    fields = ("role", "content", "finish_reason", "prompt_tokens", "completion_tokens", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner", "model_name", "created_at", "updated_at")
    list_filter = ("model_name",)
    search_fields = ("id", "title", "owner__username", "model_name")
    readonly_fields = ("id", "owner", "model", "model_name", "created_at", "updated_at")
    date_hierarchy = "updated_at"
    inlines = [ChatMessageInline]


@admin.register(ChatMessage)
class ChatMessageAdmin(admin.ModelAdmin):
    list_display = ("created_at", "session", "role", "short_content", "finish_reason", "completion_tokens")
    list_filter = ("role", "finish_reason")
    search_fields = ("session__id", "content")
    readonly_fields = ("session", "created_at")

    @admin.display(description=gettext_lazy("content"))
    def short_content(self, obj):
        return obj.content[:80]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Measurements are evidence: shown and deletable, never edited or made up."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(BenchmarkRun)
class BenchmarkRunAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "model_name", "benchmark_type", "duration_ms")
    list_filter = ("benchmark_type", "model_name")
    search_fields = ("user__username", "model_name")
    date_hierarchy = "created_at"


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "api_key", "model_name", "requested_name", "transport", "prompt_tokens",
                    "completion_tokens", "duration_ms")
    list_filter = ("transport", "model_name")
    search_fields = ("user__username", "model_name")
    date_hierarchy = "created_at"


@admin.register(QuotaRule)
class QuotaRuleAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "group", "model", "requests_per_minute", "tokens_per_day", "enabled")
    list_filter = ("enabled", "model")
    search_fields = ("user__username", "group__name")
