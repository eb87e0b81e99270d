import atexit
import threading

from django.apps import AppConfig
from django.core import mail
from django.core.signals import request_started
from django.utils.translation import gettext_lazy as _

_lock = threading.Lock()


def start_background_tasks() -> None:
    """Starts the background writer (log records, request metrics) and the resource sampler; idempotent."""
    from django.conf import settings

    from system_app.logging import writer
    from system_app.sampler import sampler

    with _lock:
        writer.start(queue_size=int(settings.LOG_QUEUE_SIZE))
        sampler.start(interval_s=float(settings.SAMPLER_INTERVAL_SECONDS),
                      prune_interval_s=float(settings.PRUNE_INTERVAL_SECONDS))


def stop_background_tasks() -> None:
    """Stops the sampler, then writes what is queued and stops the writer."""
    from system_app.logging import writer
    from system_app.sampler import sampler

    with _lock:
        sampler.stop()
        writer.stop()


def _under_test() -> bool:
    # Django's setup_test_environment() (used by pytest-django and manage.py test) installs
    # mail.outbox. Threads started by a test's request would write into a test database that is
    # flushed or dropped under them, so tests start and stop these tasks themselves.
    return hasattr(mail, "outbox")


def _autostart(**kwargs) -> None:
    from django.conf import settings

    request_started.disconnect(_autostart, dispatch_uid="system_app.autostart")
    if settings.BACKGROUND_TASKS_AUTOSTART and not _under_test():
        start_background_tasks()
        atexit.register(stop_background_tasks)


class SystemAppConfig(AppConfig):
    name = "system_app"
    verbose_name = _("System")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Started with the first request a server handles, not here: ready() also runs for migrate,
        # makemigrations and every other management command, which must not sample or write rows.
        request_started.connect(_autostart, dispatch_uid="system_app.autostart")
        self._connect_key_cache()

    @staticmethod
    def _connect_key_cache() -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save, pre_delete

        from system_app import key_cache
        from system_app.models import APIKey

        for signal in (post_save, post_delete):
            signal.connect(key_cache.on_key_changed, sender=APIKey, dispatch_uid=f"key_cache.key.{signal}")
        # pre_delete for users: their keys are still there to be found (the cascade removes them next).
        for signal in (post_save, pre_delete):
            signal.connect(key_cache.on_user_changed, sender=get_user_model(), dispatch_uid=f"key_cache.user.{signal}")
