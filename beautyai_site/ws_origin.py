"""The WebSocket's Origin check: a browser page may open a socket only from this site's own origin.

Browsers send the user's cookie with a socket from any page, so the Origin they always send is
what keeps another site (or another port of the same host: a second local server, a dev tool)
from chatting as the signed-in user. An origin is (scheme, host, port), compared with default
ports filled in: the site's are those in ``CSRF_TRUSTED_ORIGINS`` and the one the socket was
opened on (its Host header, when ``ALLOWED_HOSTS`` allows it, with http for ws and https for wss
or behind a proxy that says so through ``SECURE_PROXY_SSL_HEADER``), as Django's CSRF check has it
for the pages.

Clients that send no Origin are not browsers, so no cookie was sent on a user's behalf; they
still have to authenticate (API key) like any other client.
"""

from __future__ import annotations

from urllib.parse import urlparse

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host


def _headers(scope, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", []) if key.lower() == name]


def _secure(scope) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        header = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        values = _headers(scope, header)
        return bool(values) and values[0].split(",")[0].strip() == secure_value
    return False


def site_origins(scope) -> list[str]:
    """The origins a page on this site has: the trusted ones, and the one this socket was opened on."""
    origins = [origin.replace("://*.", "://.", 1) for origin in settings.CSRF_TRUSTED_ORIGINS]
    host = (_headers(scope, b"host") or [""])[0]
    domain, _ = split_domain_port(host)
    if domain and validate_host(domain, settings.ALLOWED_HOSTS):
        origins.append(f"{'https' if _secure(scope) else 'http'}://{host}")
    return origins


class SameOriginValidator(OriginValidator):
    """channels' OriginValidator compares scheme, host and port once a pattern has a scheme; here
    the patterns depend on the connection (its Host header), so they are made per socket."""

    def __init__(self, application):
        super().__init__(application, allowed_origins=())

    async def __call__(self, scope, receive, send):
        origins = _headers(scope, b"origin")
        if origins and not all(self.origin_allowed(scope, origin) for origin in origins):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

    def origin_allowed(self, scope, origin: str) -> bool:
        try:
            parsed = urlparse(origin.lower())
            return any(self.match_allowed_origin(parsed, pattern) for pattern in site_origins(scope))
        except ValueError:  # a port that is not a port, in the Origin or the Host header
            return False
