"""Django's ASGI handler, with the thread that runs a request's sync code kept for the next request.

Django enters a fresh ``ThreadSensitiveContext`` per request, so asgiref makes a single-thread
executor for each request and, when it ends, starts a second thread only to join the first. Under
load those two thread starts were about 9 % of the web process's CPU (py-spy, ``GET /models/`` at 16
clients), and every request met a new thread, so no per-thread state survived it: Django's
per-thread cache objects were rebuilt (the file cache's ``makedirs`` each time), and a PostgreSQL
connection could not outlive its request whatever ``CONN_MAX_AGE`` said.

Here a request borrows a single-thread executor from an idle list and gives it back when Django is
done with it (asgiref 3.13 added executors that the caller owns). Reusing request threads is
what threaded WSGI servers do; Django still closes or checks database connections at each request's
start and end (``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``). An executor whose thread is still busy
when its request ends (a client left while a view was running, and Django stopped waiting for it)
is not reused: it finishes that work and exits, as Django's own executors do.

The middleware chain is built once in sync mode and run in one call on that thread. Django's ASGI
handler builds it in async mode, and then every ``MiddlewareMixin`` middleware's ``process_request``
and ``process_response``, every ``process_view`` and the (sync) view each cross to a thread and
back: five thread hops before a chat's generation starts, ≈ 1 ms of its first token
(docs/performance.md). Every middleware here and every view is sync, so one hop carries them all;
a streaming response's async iterator is still consumed on the event loop by ``send_response``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.db import connections

from beautyai_site import disconnect

# Idle request threads kept; beyond that, threads end with their request (as in Django).
MAX_IDLE = 32


class RequestExecutor(ThreadPoolExecutor):
    """One worker thread, and a count of the calls submitted to it that have not finished yet."""

    def __init__(self):
        super().__init__(max_workers=1, thread_name_prefix="request")
        self._lock = threading.Lock()
        self.unfinished = 0

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            self.unfinished += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future) -> None:
        with self._lock:
            self.unfinished -= 1

    def retire(self) -> None:
        """Closes this thread's database connections, then lets the thread end after its work."""
        super().submit(connections.close_all)
        self.shutdown(wait=False)


class ExecutorPool:
    def __init__(self, max_idle: int = MAX_IDLE):
        self.max_idle = max_idle
        self._idle: list[RequestExecutor] = []
        self._lock = threading.Lock()

    def take(self) -> RequestExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: its thread and connection are warm
        return RequestExecutor()

    def give_back(self, executor: RequestExecutor) -> None:
        if executor.unfinished == 0:
            with self._lock:
                if len(self._idle) < self.max_idle:
                    self._idle.append(executor)
                    return
        executor.retire()

    def idle_count(self) -> int:
        return len(self._idle)


class ReusingThreadsASGIHandler(ASGIHandler):
    pool = ExecutorPool()

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)  # ASGIHandler.__init__ asks for the async chain

    async def get_response_async(self, request):
        # In the request's ThreadSensitiveContext: the borrowed thread, as every sync call of it.
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.pool.take()
        # Set before handle(): the tasks it creates and the threads that run the view copy this context.
        disconnect.begin_request()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.pool.give_back(executor)

    async def listen_for_disconnect(self, receive):
        try:
            return await super().listen_for_disconnect(receive)
        except RequestAborted:
            # Django cancels the request's task, which does not stop a sync view's thread.
            disconnect.current().fire()
            raise
