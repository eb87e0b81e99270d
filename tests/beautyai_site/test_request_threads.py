"""Request threads kept between requests: the executor pool, and the ASGI handler that uses it."""

from __future__ import annotations

import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import connections

from beautyai_site.request_threads import ExecutorPool, ReusingThreadsASGIHandler


def thread_of(executor) -> int:
    return executor.submit(threading.get_ident).result(timeout=5)


def test_an_executor_given_back_idle_is_handed_out_again_with_the_same_thread():
    pool = ExecutorPool(max_idle=2)
    first = pool.take()
    ident = thread_of(first)
    pool.give_back(first)
    assert pool.idle_count() == 1

    again = pool.take()
    assert again is first and thread_of(again) == ident
    pool.give_back(again)


def test_an_executor_still_running_a_call_is_not_reused_and_its_thread_ends_after_the_call():
    pool = ExecutorPool(max_idle=2)
    busy = pool.take()
    release = threading.Event()
    running = busy.submit(release.wait, 5)
    pool.give_back(busy)  # a client left while its view ran: Django stopped waiting, the call goes on
    assert pool.idle_count() == 0
    assert pool.take() is not busy

    release.set()
    assert running.result(timeout=5) is True
    for thread in list(busy._threads):
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_the_pool_keeps_at_most_max_idle_executors():
    pool = ExecutorPool(max_idle=2)
    taken = [pool.take() for _ in range(4)]
    for executor in taken:
        thread_of(executor)
        pool.give_back(executor)
    assert pool.idle_count() == 2


@pytest.mark.django_db
def test_a_retired_executor_closes_its_threads_database_connection_first():
    pool = ExecutorPool(max_idle=0)
    executor = pool.take()

    def open_connection():
        conn = connections["default"]
        conn.ensure_connection()
        return conn

    conn = executor.submit(open_connection).result(timeout=5)
    assert conn.connection is not None
    pool.give_back(executor)  # no idle slot: retired
    for thread in list(executor._threads):
        thread.join(timeout=5)
    assert conn.connection is None


async def request_thread(handler, path="/healthz") -> tuple[int, threading.Thread]:
    """(status, the thread that finished the request: Django closes responses in it). Thread objects,
    not idents: the system may give an ended thread's ident to a new one."""
    seen = []

    def on_finished(**kwargs):
        seen.append(threading.current_thread())

    request_finished.connect(on_finished)
    try:
        app = ApplicationCommunicator(handler, {
            "type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        })
        await app.send_input({"type": "http.request", "body": b""})
        start = await app.receive_output(5)
        while (await app.receive_output(5)).get("more_body"):
            pass
        await app.wait(5)
    finally:
        request_finished.disconnect(on_finished)
    return start["status"], seen[-1]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_consecutive_requests_run_their_sync_code_in_the_same_thread():
    handler = ReusingThreadsASGIHandler()
    handler.pool = ExecutorPool()
    first = await request_thread(handler)
    second = await request_thread(handler)
    assert first[0] == second[0] == 200
    assert first[1] is second[1] is not threading.current_thread()
    assert handler.pool.idle_count() == 1


async def thread_hops(handler, monkeypatch, path: str) -> list[str]:
    """What the request's sync_to_async calls ran, in order."""
    from asgiref.sync import SyncToAsync

    hops = []
    call = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    await request_thread(handler, path)
    monkeypatch.undo()
    return hops


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_middleware_chain_and_the_view_cross_to_the_request_thread_once(monkeypatch):
    # Between the request_started signal and the response's close: one hop, where Django's own
    # async chain makes one per middleware step and per view (the comparison says it still does).
    for path in ("/healthz", "/models/"):  # a 200, and a 401 that Django logs
        ours = await thread_hops(ReusingThreadsASGIHandler(), monkeypatch, path)
        assert ours[1:-1] == ["BaseHandler.get_response"], ours
        assert len(await thread_hops(ASGIHandler(), monkeypatch, path)) > len(ours) + 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_djangos_own_handler_gives_each_request_a_new_thread():
    # The behaviour ReusingThreadsASGIHandler replaces; if Django ever reuses threads itself, this says so.
    handler = ASGIHandler()
    first = await request_thread(handler)
    second = await request_thread(handler)
    assert first[1] is not second[1]


def test_the_installed_asgiref_and_django_still_have_what_request_threads_re_implements():
    # ReusingThreadsASGIHandler.__call__ is a copy of Django's with one change (the executor), and it
    # passes its executor to asgiref's ThreadSensitiveContext; pyproject pins both to the versions
    # read. A new version that changes either fails here, and the copy is read again.
    import inspect
    from importlib.metadata import version

    from asgiref.sync import ThreadSensitiveContext

    assert version("asgiref").startswith("3.13.") and version("django").startswith("5.2.")
    executor = inspect.signature(ThreadSensitiveContext).parameters["executor"]
    assert executor.kind is inspect.Parameter.KEYWORD_ONLY and executor.default is None
    django_call = inspect.getsource(ASGIHandler.__call__)
    body = [line.strip() for line in django_call.split('"""')[-1].splitlines()
            if line.strip() and not line.strip().startswith("#")]
    assert body == ['if scope["type"] != "http":', "raise ValueError(",
                    '"Django can only handle ASGI/HTTP connections, not %s." % scope["type"]', ")",
                    "async with ThreadSensitiveContext():", "await self.handle(scope, receive, send)"]
    assert list(inspect.signature(ASGIHandler.listen_for_disconnect).parameters) == ["self", "receive"]
    assert list(inspect.signature(ASGIHandler.handle).parameters) == ["self", "scope", "receive", "send"]
