"""The system app's settings with their defaults, read at call time so that override_settings applies.

settings.py sets them from the environment (see docs/configuration.md); a missing one takes the
default here.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def sampler_interval_s() -> float:
    """Seconds between two ResourceSample rows (and CPU readings)."""
    return float(getattr(settings, "SAMPLER_INTERVAL_SECONDS", 10))


def metrics_retention_days() -> float:
    """RequestMetric and ResourceSample rows older than this are pruned."""
    return float(getattr(settings, "METRICS_RETENTION_DAYS", 7))


def log_retention_days() -> float:
    return float(getattr(settings, "LOG_RETENTION_DAYS", 14))


def prune_interval_s() -> float:
    return float(getattr(settings, "PRUNE_INTERVAL_SECONDS", 3600))


def metrics_address_allowed(address: str | None) -> bool:
    """Whether a client address may scrape /metrics without a key (METRICS_ALLOWED_IPS: addresses or networks).

    Empty by default: every scraper then needs a key with system_status. A reverse proxy on the same
    host makes every client look like 127.0.0.1, which is why loopback is not allowed by default.
    """
    entries = list(getattr(settings, "METRICS_ALLOWED_IPS", []))
    try:
        networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
    except ValueError:
        raise ImproperlyConfigured("METRICS_ALLOWED_IPS must list IP addresses or networks such as 10.0.0.0/8") from None
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in networks)


def log_queue_size() -> int:
    """Rows (log records and request metrics) waiting for the background writer; more are dropped."""
    return int(getattr(settings, "LOG_QUEUE_SIZE", 10000))


def background_autostart() -> bool:
    """Start the sampler and the background writer with the first request a server handles."""
    return bool(getattr(settings, "BACKGROUND_TASKS_AUTOSTART", True))


def restart_drain_timeout_s() -> float:
    """How long POST /system/restart waits for in-flight generations before giving up (without force)."""
    return float(getattr(settings, "RESTART_DRAIN_TIMEOUT_SECONDS", 30))
