"""Waiting on a condition with a deadline, instead of sleeping a fixed time."""

from __future__ import annotations

import time


def wait_for(condition, timeout: float = 60, message: str = "condition not met"):
    """Polls ``condition()`` until it returns something true, which is returned; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, message
        time.sleep(0.02)
