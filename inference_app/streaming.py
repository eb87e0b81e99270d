"""Server-Sent Events for chat, and running a reply to its end off the request."""

from __future__ import annotations

import json
import threading
import weakref

from channels.db import database_sync_to_async
from django.db import close_old_connections
from django.http import StreamingHttpResponse

from inference_app import active
from inference_app.services import ReplyBuilder, chat_record


def sse(event_type: str, payload: dict) -> bytes:
    return f"event: {event_type}\ndata: {json.dumps(payload, ensure_ascii=False, allow_nan=False, default=str)}\n\n".encode()


def record_in_background(builder: ReplyBuilder, handle=None) -> None:
    """Stores the reply from a thread: after a disconnect the event loop task is being cancelled
    and must not await the database; the thread finishes the write regardless. With ``handle``,
    the thread first reads the events nobody read (a cancelled runner ends at once)."""

    def run():
        try:
            if handle is not None:
                for event in handle:
                    builder.on_event(event, handle.queue_time_ms)
            chat_record(builder)
        finally:
            close_old_connections()

    threading.Thread(target=run, name="chat-record", daemon=True).start()


def _end_early(builder: ReplyBuilder, handle, *, unread: bool = False) -> None:
    """A reply whose consumer stopped: the runner is told to cancel, the partial reply is stored as
    cancelled. ``unread``: nobody read the handle's events; the storing thread reads them first."""
    if not handle.finished:
        handle.cancel()
        if not unread:
            builder.cancelled_locally(reason="cancelled: client disconnected")
    active.unregister(builder.plan.request_id)
    if not builder.recorded:
        record_in_background(builder, handle if unread else None)


def _dropped(builder: ReplyBuilder, handle) -> None:
    if not builder.streamed:
        _end_early(builder, handle, unread=True)


def streaming_response(builder: ReplyBuilder, handle, body) -> StreamingHttpResponse:
    """An event-stream response for ``body`` (an async iterator built on ``events_for``).

    A client that leaves after the view returned but before the first byte makes Django cancel the
    request task while the response is still unsent: its body never runs, and neither does the
    cleanup in ``events_for``. The generation would then run to its token limit unseen, so the
    same cleanup also runs when the response is collected without having streamed.
    """
    response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the stream back
    weakref.finalize(response, _dropped, builder, handle).atexit = False
    return response


async def events_for(builder: ReplyBuilder, handle):
    """The transport events of one reply, ending with done or error.

    If the consumer stops early (client gone, socket closed), the runner is told to cancel and
    the partial reply is stored as cancelled.
    """
    builder.streamed = True
    try:
        yield builder.start_event()
        async for event in handle:
            for item in builder.on_event(event, handle.queue_time_ms):
                if item[0] in ("done", "error"):
                    # Stored before it is announced: a client that saw "done" finds the reply in its session.
                    await database_sync_to_async(chat_record)(builder)
                yield item
    finally:
        _end_early(builder, handle)


def sse_response(builder: ReplyBuilder, handle) -> StreamingHttpResponse:
    async def body():
        async for event_type, payload in events_for(builder, handle):
            yield sse(event_type, payload)

    return streaming_response(builder, handle, body())
