from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save, pre_delete

        from accounts import key_cache
        from accounts.models import APIKey

        for signal in (post_save, post_delete):
            signal.connect(key_cache.on_key_changed, sender=APIKey, dispatch_uid=f"key_cache.key.{signal}")
        # pre_delete for users: their keys are still there to be found (the cascade removes them next).
        for signal in (post_save, pre_delete):
            signal.connect(key_cache.on_user_changed, sender=get_user_model(), dispatch_uid=f"key_cache.user.{signal}")
