from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy

from system_app.models import AuditEvent, LogRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    """Evidence (audit events, log lines) is shown, never added, edited or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "username", "method", "route", "target", "status_code", "error_code", "client_ip")
    list_filter = ("method", "status_code", "error_code", "action")
    search_fields = ("username", "route", "target", "request_id")
    date_hierarchy = "created_at"


@admin.register(LogRecord)
class LogRecordAdmin(ReadOnlyAdmin):
    """Read-only: log lines are evidence, like audit events."""

    list_display = ("created_at", "level", "source", "short_message")
    list_filter = ("level", "source")
    search_fields = ("message", "source")
    date_hierarchy = "created_at"

    @admin.display(description=gettext_lazy("message"))
    def short_message(self, obj):
        return obj.message[:200]
