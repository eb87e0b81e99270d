from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy
from rest_framework.exceptions import ValidationError as DRFValidationError
from guardian.admin import GuardedModelAdmin

from accounts.permissions import has_global
from beautyai_site.api import errors
from beautyai_site.api.jsonsafe import UntrustedJSONError, loads_untrusted
from models_app import downloads, selectors, services
from models_app.models import Alias, ModelConfig, ModelDownload

# The runtime's and the file check's state words, shown translated; the API keeps them as English codes.
MODEL_STATES = {"loading": pgettext_lazy("model state", "loading"), "loaded": pgettext_lazy("model state", "loaded"),
                "unloaded": pgettext_lazy("model state", "unloaded"), "error": pgettext_lazy("model state", "error")}
FILE_STATES = {"present": pgettext_lazy("model files", "present"), "missing": pgettext_lazy("model files", "missing"),
               "downloading": pgettext_lazy("model files", "downloading"),
               "failed": pgettext_lazy("model files", "failed")}


class UntrustedJSONField(forms.JSONField):
    """Django's JSONField parses with json.loads, which recurses once per nesting level (a deep
    document is a RecursionError, a 500); the platform's one loader measures depth first."""

    def to_python(self, value):
        if self.disabled or value in self.empty_values or not isinstance(value, str):
            return super().to_python(value)
        try:
            return loads_untrusted(value)
        except UntrustedJSONError as exc:
            raise forms.ValidationError(str(exc), code="invalid") from None


class ModelConfigForm(forms.ModelForm):
    """The registry's rules (engine × quantisation, path confinement) apply in the admin as in the API."""

    parameters = UntrustedJSONField(required=False, initial=dict)

    class Meta:
        model = ModelConfig
        fields = "__all__"

    user = None  # set per request by ModelConfigAdmin.get_form

    def clean(self):
        cleaned = super().clean()
        config = {k: v for k, v in cleaned.items() if k in services.ModelConfigSerializer().fields}
        instance = self.instance if self.instance.pk else None
        try:
            services.validated_config(config, instance=instance, user=self.user)
        except DRFValidationError as exc:
            # Each problem next to its field, in the page's language where the message is translated.
            detail = exc.detail if isinstance(exc.detail, dict) else {None: exc.detail}
            for field, problems in detail.items():
                self.add_error(field if field in self.fields else None, _flatten(problems))
        except errors.APIError as exc:
            raise forms.ValidationError(exc.message) from None
        return cleaned


def _flatten(detail) -> list[str]:
    if isinstance(detail, dict):
        return [message for value in detail.values() for message in _flatten(value)]
    if isinstance(detail, list):
        return [message for value in detail for message in _flatten(value)]
    return [str(detail)]


@admin.register(ModelConfig)
class ModelConfigAdmin(GuardedModelAdmin):
    form = ModelConfigForm
    list_display = ("name", "engine", "quantization", "model_id", "is_default", "live_status", "files",
                    "updated_at")
    list_filter = ("engine", "quantization", "is_default")
    search_fields = ("name", "model_id", "description")
    readonly_fields = ("is_default", "created_at", "updated_at")
    actions = ["load_models", "unload_models", "download_models", "validate_models", "make_default"]

    # The registry uses the contract's permissions instead of Django's add/change/delete/view.
    def has_view_permission(self, request, obj=None):
        return has_global(request.user, "model_read")

    def has_add_permission(self, request):
        return has_global(request.user, "model_write")

    def has_change_permission(self, request, obj=None):
        return has_global(request.user, "model_write")

    def has_delete_permission(self, request, obj=None):
        return has_global(request.user, "model_delete")

    def has_load_permission(self, request):
        return has_global(request.user, "model_load")

    def has_write_permission(self, request):
        return has_global(request.user, "model_write")

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.user = request.user  # get_form builds a new class on every call, so this stays per request
        return form

    @admin.display(description=gettext_lazy("status"))
    def live_status(self, obj):
        state = selectors.model_status(obj.name)
        if state["status"] == "loaded":
            return _("loaded · %(memory)s") % {"memory": filesizeformat(state["memory_usage_mb"] * 2**20)}
        return MODEL_STATES.get(state["status"], state["status"])

    @admin.display(description=gettext_lazy("files"))
    def files(self, obj):
        status = downloads.download_statuses([{"name": obj.name, "model_id": obj.model_id, "engine": obj.engine,
                                               "quantization": obj.quantization}])[obj.name]
        return FILE_STATES.get(status, status)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not ModelConfig.objects.filter(is_default=True).exists():
            services.registry_set_default(model=obj)

    def delete_model(self, request, obj):
        services.registry_delete(model=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            services.registry_delete(model=obj)

    def _each(self, request, queryset, call):
        """``call(model)`` returns the (translated) outcome; a refusal is reported with the server's reason."""
        for model in queryset:
            try:
                outcome = call(model)
            except errors.APIError as exc:
                self.message_user(request, f"{model.name}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{model.name}: {outcome}", messages.INFO)

    @admin.action(description=gettext_lazy("Load selected models into memory"), permissions=["load"])
    def load_models(self, request, queryset):
        self._each(request, queryset, lambda m: _("loaded, %(memory)s") % {
            "memory": filesizeformat(services.model_load(model=m, user=request.user)["memory_usage_mb"] * 2**20)})

    @admin.action(description=gettext_lazy("Unload selected models from memory"), permissions=["load"])
    def unload_models(self, request, queryset):
        self._each(request, queryset, lambda m: _("unloaded") if services.model_unload(name=m.name) else _("was not loaded"))

    @admin.action(description=gettext_lazy("Download selected models from the hub"), permissions=["load"])
    def download_models(self, request, queryset):
        def start(model):
            job, created = downloads.download_start(model=model, user=request.user)
            outcome = _("download started (%(size)s)") if created else _("download already running (%(size)s)")
            return outcome % {"size": filesizeformat(job.bytes_total)}

        self._each(request, queryset, start)

    @admin.action(description=gettext_lazy("Validate selected models"), permissions=["view"])
    def validate_models(self, request, queryset):
        def check(model):
            result = services.registry_validate(model=model)
            if result["valid"]:
                return _("configuration is valid")
            return _("not valid: %(errors)s") % {"errors": "; ".join(result["errors"])}

        self._each(request, queryset, check)

    @admin.action(description=gettext_lazy("Make the selected model the default"), permissions=["write"])
    def make_default(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, _("Select exactly one model to make it the default."), messages.ERROR)
            return

        def make(model):
            services.registry_set_default(model=model)
            return _("is now the default model")

        self._each(request, queryset, make)


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    """Aliases belong to the registry: the same permissions as its entries."""

    list_display = ("name", "target", "fallback", "created_at")
    search_fields = ("name", "target__name", "description")
    autocomplete_fields = ("target", "fallback")

    def has_view_permission(self, request, obj=None):
        return has_global(request.user, "model_read")

    def has_add_permission(self, request):
        return has_global(request.user, "model_write")

    def has_change_permission(self, request, obj=None):
        return has_global(request.user, "model_write")

    def has_delete_permission(self, request, obj=None):
        return has_global(request.user, "model_write")


@admin.register(ModelDownload)
class ModelDownloadAdmin(admin.ModelAdmin):
    """Download jobs: read-only rows (the jobs write them), with a cancel action."""

    list_display = ("model_name", "status", "progress", "bytes_done", "bytes_total", "files", "revision",
                    "requested_by", "created_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("model_name", "repo_id")
    actions = ["cancel_downloads"]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in ModelDownload._meta.fields]

    def has_view_permission(self, request, obj=None):
        return has_global(request.user, "model_read")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_load_permission(self, request):
        return has_global(request.user, "model_load")

    @admin.display(description=gettext_lazy("progress"))
    def progress(self, obj):
        return f"{obj.bytes_done / obj.bytes_total:.0%}" if obj.bytes_total else "–"

    @admin.display(description=gettext_lazy("files"))
    def files(self, obj):
        return f"{obj.files_done}/{obj.files_total}"

    @admin.action(description=gettext_lazy("Cancel selected downloads (partial files kept)"), permissions=["load"])
    def cancel_downloads(self, request, queryset):
        for job in queryset.select_related("model"):
            if not job.active:
                self.message_user(request, _("%(model)s: not running (%(status)s)") % {
                    "model": job.model_name, "status": job.get_status_display()}, messages.WARNING)
                continue
            downloads.download_cancel(model=job.model)
            self.message_user(request, _("%(model)s: download cancelled") % {"model": job.model_name}, messages.INFO)
