"""Server-Sent Events for chat, and running a reply to its end off the request."""

from __future__ import annotations

import json
import threading

from channels.db import database_sync_to_async
from django.db import close_old_connections
from django.http import StreamingHttpResponse

from inference_app import active
from inference_app.services import ReplyBuilder, chat_record


def sse(event_type: str, payload: dict) -> bytes:
    return f"event: {event_type}\ndata: {json.dumps(payload, ensure_ascii=False, allow_nan=False, default=str)}\n\n".encode()


def record_in_background(builder: ReplyBuilder) -> None:
    """Stores the reply from a thread: after a disconnect the event loop task is being cancelled
    and must not await the database; the thread finishes the write regardless."""

    def run():
        try:
            chat_record(builder)
        finally:
            close_old_connections()

    threading.Thread(target=run, name="chat-record", daemon=True).start()


async def events_for(builder: ReplyBuilder, handle):
    """The transport events of one reply, ending with done or error.

    If the consumer stops early (client gone, socket closed), the runner is told to cancel and
    the partial reply is stored as cancelled.
    """
    try:
        yield builder.start_event()
        async for event in handle:
            for item in builder.on_event(event, handle.queue_time_ms):
                if item[0] in ("done", "error"):
                    # Stored before it is announced: a client that saw "done" finds the reply in its session.
                    await database_sync_to_async(chat_record)(builder)
                yield item
    finally:
        if not handle.finished:
            handle.cancel()
            builder.cancelled_locally(reason="cancelled: client disconnected")
        active.unregister(builder.plan.request_id)
        if not builder.recorded:
            record_in_background(builder)


def sse_response(builder: ReplyBuilder, handle) -> StreamingHttpResponse:
    async def body():
        async for event_type, payload in events_for(builder, handle):
            yield sse(event_type, payload)

    response = StreamingHttpResponse(body(), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the stream back
    return response
