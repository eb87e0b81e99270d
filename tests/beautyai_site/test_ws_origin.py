"""The WebSocket's Origin check: scheme, host and port of this site only (tests/resilience has the real socket)."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from beautyai_site.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def opens(host: str, origin: str | None = None, **headers: str) -> bool:
    sent = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin is not None else [])
    sent += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    ws = WebsocketCommunicator(application, "/ws/chat/", headers=sent)
    connected, _ = await ws.connect()
    # A refused socket's consumer is still running: end it here, inside the test. Left to the event
    # loop's close, its channel-layer receive (Redis) was cancelled there and once held the teardown
    # for the whole 300 s timeout.
    await ws.disconnect()
    return connected


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:8000", "HTTP://127.0.0.1:8000"])
async def test_it_opens_for_the_sites_own_origin_and_for_clients_without_one(origin):
    assert await opens("127.0.0.1:8000", origin)


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:9999",    # another port of the same host
    "https://127.0.0.1:8000",   # another scheme
    "http://localhost:8000",    # another (allowed) host name
    "http://127.0.0.1",         # the default port is 80, not 8000
    "http://127.0.0.1:99999",   # not a port
    "null",                     # sandboxed frames and file:// pages
    "http://evil.example",
])
async def test_it_refuses_any_other_origin(origin):
    assert not await opens("127.0.0.1:8000", origin)


async def test_default_ports_are_the_same_origin_written_or_not():
    assert await opens("localhost:80", "http://localhost")
    assert await opens("localhost", "http://localhost:80")


async def test_a_host_outside_allowed_hosts_is_no_origin_of_ours():
    # DNS rebinding: evil.example resolves to this server, so the page's origin equals the Host header.
    assert not await opens("evil.example:8000", "http://evil.example:8000")


@override_settings(CSRF_TRUSTED_ORIGINS=["https://beautyai.example.org", "https://*.example.net"])
@pytest.mark.parametrize(("origin", "expected"), [
    ("https://beautyai.example.org", True),
    ("https://beautyai.example.org:443", True),
    ("https://chat.example.net", True),
    ("http://beautyai.example.org", False),
    ("https://beautyai.example.org:8443", False),
    ("https://example.org", False),
])
async def test_trusted_origins_count_with_their_scheme_and_port(origin, expected):
    assert await opens("127.0.0.1:8000", origin) is expected


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
async def test_behind_a_tls_proxy_the_sites_origin_is_https():
    assert await opens("127.0.0.1:8000", "https://127.0.0.1:8000", x_forwarded_proto="https")
    assert not await opens("127.0.0.1:8000", "http://127.0.0.1:8000", x_forwarded_proto="https")
    assert not await opens("127.0.0.1:8000", "https://127.0.0.1:8000")
