from django.apps import AppConfig


class SystemAppConfig(AppConfig):
    name = "system_app"
    verbose_name = "System"
    default_auto_field = "django.db.models.BigAutoField"
