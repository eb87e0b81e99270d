"""Request-body limit at the ASGI level.

Django's ASGI handler reads a whole body into a temporary file before any middleware runs, and a
body sent without Content-Length is not bounded there at all (GHSA-933h-hp56-hf7m). This wrapper
counts the bytes as they arrive and answers 413 as soon as the limit is passed.
"""

from __future__ import annotations

import json

from django.conf import settings

from beautyai_site.api.envelope import error_body_for_path
from beautyai_site.api.errors import PayloadTooLargeError, ValidationError


def too_large() -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than {settings.MAX_REQUEST_BODY_BYTES} bytes.")


def error_json(path: str, error) -> bytes:
    """The body of an error answered below Django: the envelope, or OpenAI's shape under /v1/."""
    return json.dumps(error_body_for_path(path, None, status=error.status_code, code=error.error_code,
                                          message=error.message)).encode()


class BodyLimitMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.MAX_REQUEST_BODY_BYTES
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    return await self._reject(scope, send, too_large())
            except ValueError:
                return await self._reject(scope, send, ValidationError("Content-Length is not a number."))
        buffered, size = [], 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await self._reject(scope, send, too_large())
            if not message.get("more_body", False):
                break

        async def replay():
            # The buffered body first, then the live channel (a streaming response waits on it for disconnects).
            return buffered.pop(0) if buffered else await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _reject(scope, send, error):
        body = error_json(scope.get("path", ""), error)
        await send({"type": "http.response.start", "status": error.status_code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
