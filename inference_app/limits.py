"""The per-user chat rate (the "chat" throttle scope in REST_FRAMEWORK) for every way a generation starts.

REST chat, /v1, the model test and the benchmark count through DRF's ScopedRateThrottle; WebSocket
chats are not DRF requests, so they count here against the same cache entry. One budget per user,
whatever the transport.
"""

from __future__ import annotations

from types import SimpleNamespace

from rest_framework.throttling import ScopedRateThrottle

from beautyai_site.api import errors

SCOPE = "chat"


class GeneratingActionsThrottled:
    """For viewsets whose listing actions stay free: only ``generating_actions`` count toward the chat rate."""

    generating_actions: tuple[str, ...] = ("run",)

    @property
    def throttle_scope(self) -> str | None:
        return SCOPE if getattr(self, "action", None) in self.generating_actions else None


def check_chat_rate(user) -> None:
    """Counts one generation for ``user``; RateLimitError (429) once the rate is used up."""
    throttle = ScopedRateThrottle()
    if not throttle.allow_request(SimpleNamespace(user=user), SimpleNamespace(throttle_scope=SCOPE)):
        raise errors.RateLimitError(details={"retry_after_seconds": throttle.wait()})
