"""The body limit of BodyLimitedRequest on a real daphne factory and channel, with a Twisted clock for time.

tests/resilience/test_hostile_http.py has the real server and sockets.
"""

from __future__ import annotations

import json

import pytest
from django.test import override_settings
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from beautyai_site.http_protocol import LINGER_SECONDS, BodyLimitedHTTPFactory


class Server:
    """What daphne's WebRequest asks of its Server before a request is complete."""

    def protocol_connected(self, protocol):
        pass

    def protocol_disconnected(self, protocol):
        pass


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def connection(clock):
    factory = BodyLimitedHTTPFactory(Server())
    factory.reactor = clock
    channel = factory.buildProtocol(IPv4Address("TCP", "203.0.113.7", 50123))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def answer(transport) -> tuple[bytes, dict]:
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return head, json.loads(body)


@override_settings(MAX_REQUEST_BODY_BYTES=1024)
def test_a_declared_body_over_the_limit_is_answered_413_when_the_headers_end(connection):
    channel, transport = connection
    channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n")
    head, body = answer(transport)
    assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head
    assert body["error"]["type"] == "invalid_request_error"  # OpenAI's shape under /v1/
    channel.dataReceived(b"x" * 1025)  # the rest arrives, is dropped, and nothing is left to wait for
    assert transport.disconnecting


@override_settings(MAX_REQUEST_BODY_BYTES=1024)
def test_a_client_that_keeps_the_connection_after_a_413_loses_it_after_the_linger(connection, clock):
    channel, transport = connection
    channel.dataReceived(b"POST /models/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"800\r\n" + b"x" * 2048 + b"\r\n")
    assert answer(transport)[1]["error_code"] == "PayloadTooLargeError"
    clock.advance(LINGER_SECONDS - 1)
    channel.dataReceived(b"800\r\n" + b"x" * 2048 + b"\r\n")
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
