"""WebSocket chat at /ws/chat/: several chats per socket, same events as SSE, each with request_id."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from rest_framework.exceptions import APIException, AuthenticationFailed

from accounts.auth import authenticate_api_key, bearer_token, session_user
from accounts.permissions import has_somewhere
from beautyai_site.api import errors
from beautyai_site.api.envelope import error_body
from beautyai_site.api.exceptions import _as_api_error
from beautyai_site.api.jsonsafe import UntrustedJSONError, loads_untrusted
from beautyai_site.api.parsers import refused_value
from beautyai_site.api.validation import parse
from inference_app import limits, services
from inference_app.serializers import ChatRequestSerializer

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_LARGE = 4413
CLOSE_TOO_FAST = 4429


def user_group(user_id: int) -> str:
    """Every socket of a user joins this group, so a cancel can reach it from any web process."""
    return f"chat-user-{user_id}"


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.user = None
        self.api_key_id = None
        # The credential itself, not only the user it named: it is checked again before every chat
        # and every WEBSOCKET_RECHECK_SECONDS, and a socket outlives revocations and sign-outs.
        self.api_key_raw = None
        self.session_key = None
        self.may_chat = False
        self.watch = None
        self.tasks: dict[str, asyncio.Task] = {}
        self.handles: dict[str, object] = {}  # by the client's request_id
        self.by_server_id: dict[str, object] = {}
        self.window_start = time.monotonic()
        self.window_count = 0
        await self.accept()
        session_user = self.scope.get("user")
        token = bearer_token(_header(self.scope, b"authorization"))
        if token:
            await self._authenticate_key(token)
        elif session_user is not None and session_user.is_authenticated:
            self.user, self.session_key = session_user, self.scope["session"].session_key
        if self.user is None:
            self.grace = asyncio.get_running_loop().call_later(
                settings.WEBSOCKET_AUTH_GRACE_SECONDS, self._close_unauthenticated
            )
        else:
            await self._joined()

    def _close_unauthenticated(self):
        if self.user is None:
            asyncio.ensure_future(self.close(code=CLOSE_UNAUTHENTICATED))

    async def _joined(self):
        self.may_chat = await database_sync_to_async(has_somewhere)(self.user, "chat")
        self.watch = asyncio.ensure_future(self._watch_credentials())
        if self.channel_layer is not None:
            await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
        await self.send_json({"type": "ready", "user": self.user.get_username()})

    async def _authenticate_key(self, raw: str) -> bool:
        try:
            key = await database_sync_to_async(authenticate_api_key)(raw)
        except AuthenticationFailed:
            return False
        self.user, self.api_key_id, self.api_key_raw = key.user, key.pk, raw
        return True

    def _current_user(self):
        """The socket's user read afresh (Django caches permissions on the user object, so a kept one
        would keep answering from them), or None when its key or browser session no longer authenticates it."""
        if self.api_key_raw is not None:
            try:
                return authenticate_api_key(self.api_key_raw).user
            except AuthenticationFailed:
                return None
        user = session_user(self.session_key)
        return user if user is not None and user.pk == self.user.pk else None

    def _credential_state(self):
        user = self._current_user()
        return user, user is not None and has_somewhere(user, "chat")

    async def _watch_credentials(self):
        """Closes the socket with 4401 once its credential is gone, and with 4403 once its user lost the
        chat permission everywhere: an idle socket must not outlive either, nor must its running chats."""
        while True:
            await asyncio.sleep(settings.WEBSOCKET_RECHECK_SECONDS)
            try:
                user, may_chat = await database_sync_to_async(self._credential_state, thread_sensitive=False)()
            except Exception:  # database or cache unreachable: chats fail by themselves; check next round
                continue
            if user is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
            # Only a loss closes the socket: a user who never could chat gets an error event per chat.
            lost_chat = self.may_chat and not may_chat
            self.user, self.may_chat = user, may_chat
            if lost_chat:
                await self.close(code=CLOSE_FORBIDDEN)
                return

    async def disconnect(self, code):
        if self.watch is not None:
            self.watch.cancel()
        # Closing the socket cancels every generation it started.
        for handle in list(self.handles.values()):
            handle.cancel()
        for task in list(self.tasks.values()):
            task.cancel()
        if self.user is not None and self.channel_layer is not None:
            await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WEBSOCKET_MAX_MESSAGE_BYTES:
            await self.close(code=CLOSE_TOO_LARGE)
            return
        # Every message counts, before any parsing: junk, arrays and messages before "auth" get an
        # error reply each and would otherwise be a free way to make the server write.
        if not self._within_rate():
            await self.close(code=CLOSE_TOO_FAST)
            return
        try:
            content = loads_untrusted(text_data) if text_data is not None else None
        except UntrustedJSONError as exc:
            await self._error(None, refused_value(exc))
            return
        except ValueError:
            content = None
        if not isinstance(content, dict):
            await self._error(None, errors.ValidationError("Messages must be JSON objects with a type."))
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        kind = content.get("type")
        request_id = content.get("request_id") if isinstance(content.get("request_id"), str) else None
        if kind == "auth":
            await self._on_auth(content)
            return
        if self.user is None:
            await self._error(request_id, errors.AuthenticationError("Authenticate first: {\"type\": \"auth\", \"api_key\": ...}"))
            return
        if kind == "chat":
            await self._on_chat(content, request_id)
        elif kind == "cancel":
            handle = self.handles.get(request_id or "")
            if handle is None:
                await self._error(request_id, errors.NotFoundError("No generation with this request_id on this socket."))
            else:
                handle.cancel()
        else:
            await self._error(request_id, errors.ValidationError("type: must be auth, chat or cancel"))

    def _within_rate(self) -> bool:
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self.window_start, self.window_count = now, 0
        self.window_count += 1
        return self.window_count <= settings.WEBSOCKET_MESSAGES_PER_SECOND

    async def _on_auth(self, content):
        if self.user is not None:
            await self._error(None, errors.ValidationError("Already authenticated."))
            return
        raw = content.get("api_key")
        if not isinstance(raw, str) or not await self._authenticate_key(raw):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.grace.cancel()
        await self._joined()

    async def _on_chat(self, content, request_id):
        if request_id is None or not (1 <= len(request_id) <= 64) or request_id in self.tasks:
            await self._error(request_id, errors.ValidationError("request_id: a new, unique string of 1–64 characters"))
            return
        body = {k: v for k, v in content.items() if k not in ("type", "request_id")}
        body.pop("stream", None)
        self.tasks[request_id] = asyncio.ensure_future(self._run_chat(request_id, body))

    async def _run_chat(self, request_id: str, body: dict):
        # The socket's request_id names the stream to the client; the server's own id (made by
        # chat_open) keeps requests of different sockets apart in the runner and in the cancel registry.
        try:
            run = await sync_to_async(self._open, thread_sensitive=False)(body)
        except Exception as exc:  # every failure becomes an error event; the socket stays usable
            self.tasks.pop(request_id, None)
            await self._error(request_id, _as_api_error(exc) or errors.SystemError())
            if isinstance(exc, errors.AuthenticationError):  # ...unless its credential is gone
                await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        server_id = run.plan.request_id
        self.handles[request_id] = self.by_server_id[server_id] = run.handle
        try:
            async for event_type, payload in run.events():
                if event_type == "start":
                    payload = {**payload, "server_request_id": server_id}
                await self.send_json({"type": event_type, **payload, "request_id": request_id})
        finally:
            self.handles.pop(request_id, None)
            self.by_server_id.pop(server_id, None)
            self.tasks.pop(request_id, None)

    def _open(self, body: dict) -> services.ChatRun:
        from django.db import close_old_connections

        close_old_connections()
        try:
            user = self._current_user()
            if user is None:
                raise errors.AuthenticationError("This socket's API key or browser session is no longer valid.")
            data = parse(ChatRequestSerializer, body)
            if not has_somewhere(user, "chat"):
                raise errors.PermissionDeniedError("You do not have the 'chat' permission.")
            limits.check_chat_rate(user)
            return services.chat_open(user=user, data=data, transport="websocket",
                                      api_key_id=self.api_key_id)
        finally:
            close_old_connections()

    async def _error(self, request_id, error: errors.APIError | APIException):
        body = error_body(None, code=error.error_code, message=error.message, details=error.details)
        await self.send_json({"type": "error", "request_id": request_id, **body})

    async def chat_cancel(self, message):
        """A cancel forwarded by POST /inference/requests/{id}/cancel in another web process."""
        handle = self.by_server_id.get(message.get("request_id", ""))
        if handle is not None:
            handle.cancel()
