from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from accounts import key_cache
from accounts.models import APIKey
from accounts.permissions import has_global
from accounts.services import create_api_key


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "prefix")
    fields = ("user", "name", "expires_at", "prefix", "created_at", "revoked_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "revoked_at", "last_used_at")
    actions = ["revoke_keys"]

    def has_change_permission(self, request, obj=None):
        # A key is issued and revoked, never edited: editing could not change its secret anyway.
        return obj is None and super().has_change_permission(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        # A key acts as its user: a staff member issuing one for somebody else would become them.
        if db_field.name == "user" and not has_global(request.user, "admin"):
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            return
        key, raw = create_api_key(user=obj.user, name=obj.name, expires_at=obj.expires_at)
        obj.pk = key.pk
        obj.prefix = key.prefix
        self.message_user(request, _("New API key (shown once, copy it now): %(key)s") % {"key": raw}, messages.WARNING)

    @admin.action(description=gettext_lazy("Revoke selected keys"), permissions=["change"])
    def revoke_keys(self, request, queryset):
        active = queryset.filter(revoked_at__isnull=True)
        hashes = list(active.values_list("key_hash", flat=True))
        count = active.update(revoked_at=timezone.now())
        key_cache.forget(hashes)  # update() sends no signals
        self.message_user(request, ngettext("Revoked %(count)d key.", "Revoked %(count)d keys.", count) % {"count": count})
