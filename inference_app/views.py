"""Chat routes: parse, check access, run the chat service, answer JSON or a stream."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets

from beautyai_site.api import errors
from beautyai_site.api.envelope import ok
from beautyai_site.api.serializers import EnvelopeSerializer, ErrorResponseSerializer
from beautyai_site.api.validation import parse
from inference_app import active, consumers, limits, services
from inference_app.serializers import ChatRequestSerializer, ChatResponseSerializer

ERRORS = {status: ErrorResponseSerializer for status in (400, 401, 403, 404, 409, 429, 500, 503)}


def api_key_id(request) -> int | None:
    return getattr(request.auth, "pk", None)


class ChatViewSet(viewsets.ViewSet):
    required_permissions = {"chat": "chat", "cancel": "chat"}
    throttle_scope = limits.SCOPE

    @extend_schema(request=ChatRequestSerializer, responses={200: ChatResponseSerializer, **ERRORS},
                   description="stream=true answers text/event-stream: start, delta, reasoning, done, error events.")
    def chat(self, request):
        data = parse(ChatRequestSerializer, request.data)
        run = services.chat_open(user=request.user, data=data, transport="sse" if data["stream"] else "rest",
                                 api_key_id=api_key_id(request))
        if data["stream"]:
            return run.stream_response()
        return ok(request, **run.run_to_end().response_fields())

    @extend_schema(parameters=[OpenApiParameter("request_id", str, OpenApiParameter.PATH)], request=None,
                   responses={200: EnvelopeSerializer, **ERRORS})
    def cancel(self, request, request_id: str):
        if active.cancel(request_id, request.user.pk):
            return ok(request, data={"request_id": request_id, "cancelled": True, "forwarded": False})
        if settings.REDIS_URL:
            # Several web processes share the Redis layer: the socket streaming it may live in another one.
            async_to_sync(get_channel_layer().group_send)(
                consumers.user_group(request.user.pk), {"type": "chat.cancel", "request_id": request_id}
            )
            return ok(request, status=202, data={"request_id": request_id, "cancelled": False, "forwarded": True})
        raise errors.NotFoundError("No generation with this request id is running for you.")
