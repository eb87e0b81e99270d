from django.apps import AppConfig
from django.core import mail
from django.core.signals import request_started
from django.utils.translation import gettext_lazy as _


def _resume_downloads(**kwargs) -> None:
    """At a server process's first request: take over download jobs whose process is gone."""
    request_started.disconnect(_resume_downloads, dispatch_uid="models_app.resume_downloads")
    # Under test (Django installs mail.outbox) the test process is no server; the servers it starts are.
    if hasattr(mail, "outbox"):
        return
    from models_app import downloads

    try:
        downloads.resume_interrupted()
    except Exception:
        import logging

        logging.getLogger(__name__).exception("resuming interrupted downloads failed")


class ModelsAppConfig(AppConfig):
    name = "models_app"
    verbose_name = _("Model registry")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Not here: ready() also runs for migrate and every other management command.
        request_started.connect(_resume_downloads, dispatch_uid="models_app.resume_downloads")
