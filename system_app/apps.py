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
