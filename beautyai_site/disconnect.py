"""Whether the HTTP client of the current request is still there, for sync views that run long.

Django's ASGI handler notices a client leaving (``http.disconnect``) and cancels the request's task,
but a sync view goes on in its thread: a non-streamed chat or a benchmark would keep generating for
nobody (THREATS C19). ``ReusingThreadsASGIHandler`` gives every request a ``ClientGone`` in a
context variable (asyncio tasks and asgiref's threads copy the context, so the view's thread sees
the same object) and fires it when the client leaves; work started by the view registers how to
stop itself with ``watch``. Outside ASGI (the test client, management commands) nothing ever fires.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from contextlib import contextmanager
from typing import Callable

logger = logging.getLogger(__name__)


class ClientGone:
    def __init__(self):
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.gone = False

    def fire(self) -> None:
        """The client left: runs the registered callbacks (on the event loop's thread; they must be quick)."""
        with self._lock:
            self.gone = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("stopping work for a client that left failed")

    @contextmanager
    def watch(self, callback: Callable[[], None]):
        """Calls ``callback`` if the client leaves while the block runs (at once if it already has)."""
        with self._lock:
            already_gone = self.gone
            if not already_gone:
                self._callbacks.append(callback)
        if already_gone:
            callback()
        try:
            yield
        finally:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)


_NEVER = ClientGone()  # outside a request served over ASGI
_current: contextvars.ContextVar[ClientGone] = contextvars.ContextVar("beautyai_client_gone", default=_NEVER)


def current() -> ClientGone:
    return _current.get()


def begin_request() -> ClientGone:
    """A fresh ``ClientGone`` for the request handled in this context."""
    gone = ClientGone()
    _current.set(gone)
    return gone
