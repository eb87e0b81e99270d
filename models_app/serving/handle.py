"""What a caller holds while a generation streams: the `GenerationHandle` and its `Event`s.

The manager's reader thread pushes events; the caller iterates them, in a thread or on an event loop.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

from models_app.serving.engines.contract import GenerationStats
from models_app.serving.protocol import Cancel, ErrorCode


@dataclass
class Event:
    kind: str  # "delta" | "done" | "error"
    text: str = ""
    stats: GenerationStats | None = None
    message: str = ""
    code: ErrorCode | None = None  # an error's: ErrorCode.CANCELLED ends a reply on purpose, it is no failure

    @property
    def cancelled(self) -> bool:
        return self.code is ErrorCode.CANCELLED


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "runner exited"
    if exitcode < 0:
        try:
            return f"runner killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"runner killed by signal {-exitcode}"
    return f"runner exited with code {exitcode}"


class GenerationHandle:
    """One streamed generation. Iterate it (sync or async) for Events; the last is done or error."""

    def __init__(self, runner, req_id: str):  # runner: the manager's entry; only its send() is used, to cancel
        self.id = req_id
        self.queue_time_ms: float | None = None
        self._runner = runner
        self._submitted = time.monotonic()
        self._lock = threading.Lock()
        self._sync_q: queue.Queue[Event] = queue.Queue()
        self._async_q: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished = False
        self._tokens_seen = 0

    @property
    def finished(self) -> bool:
        return self._finished

    def _started(self) -> None:
        """The runner took the request off its queue."""
        if self.queue_time_ms is None:
            self.queue_time_ms = (time.monotonic() - self._submitted) * 1000.0

    def _push(self, event: Event) -> bool:
        """Deliver an event from the reader thread; False once the stream already ended."""
        with self._lock:
            if self._finished:
                return False
            self._started()
            if event.kind == "delta":
                self._tokens_seen += 1
            else:
                self._finished = True
            if self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._async_q.put_nowait, event)
                except RuntimeError:
                    pass  # the consumer's loop is closed; nobody is listening any more
            else:
                self._sync_q.put(event)
            return True

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._sync_q.get()
            yield event
            if event.kind != "delta":
                return

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._aiter()

    async def _aiter(self):
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._async_q = asyncio.Queue()
            # Events that arrived before the async consumer subscribed move over in order.
            while not self._sync_q.empty():
                self._async_q.put_nowait(self._sync_q.get_nowait())
        while True:
            event = await self._async_q.get()
            yield event
            if event.kind != "delta":
                return

    def cancel(self) -> None:
        if not self._finished:
            self._runner.send(Cancel(id=self.id))
