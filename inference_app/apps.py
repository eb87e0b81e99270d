from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class InferenceAppConfig(AppConfig):
    name = "inference_app"
    verbose_name = _("Inference")
    default_auto_field = "django.db.models.BigAutoField"
