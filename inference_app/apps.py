from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class InferenceAppConfig(AppConfig):
    name = "inference_app"
    verbose_name = _("Inference")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from inference_app.services import store_orphaned_reply
        from models_app.signals import reply_orphaned

        # With Ray placement, the replies of a web process that died mid-generation reach this one.
        reply_orphaned.connect(store_orphaned_reply, dispatch_uid="inference_app.store_orphaned_reply")
