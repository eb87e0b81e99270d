"""Generations in flight in this process, by request id, so any transport's stream can be cancelled."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_active: dict[str, tuple[int, object]] = {}


def register(request_id: str, user_id: int, handle) -> None:
    with _lock:
        _active[request_id] = (user_id, handle)


def unregister(request_id: str) -> None:
    with _lock:
        _active.pop(request_id, None)


def cancel(request_id: str, user_id: int) -> bool:
    """Cancels the caller's own generation; another user's request id is treated as unknown."""
    with _lock:
        entry = _active.get(request_id)
    if entry is None or entry[0] != user_id:
        return False
    entry[1].cancel()
    return True
