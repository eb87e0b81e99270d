"""The slow-reader rule on a real daphne factory and Twisted transport, with a Twisted clock for time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daphne.ws_protocol import WebSocketFactory
from django.test import override_settings
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from beautyai_site.ws_protocol import SlowReaderClosingProtocol

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ws(clock):
    """A protocol registered as its transport's producer, as onOpen leaves it; the tests play the
    transport's part in calling pause and resume (tests/resilience/test_slow_reader.py has the real one)."""
    factory = WebSocketFactory(None, reactor=clock)
    factory.setProtocolOptions(openHandshakeTimeout=0)  # the handshake is not what these tests drive
    protocol = SlowReaderClosingProtocol()
    protocol.factory = factory
    protocol.makeConnection(StringTransport())
    protocol.transport.registerProducer(protocol, True)
    protocol.client_addr = ["203.0.113.7", 50123]
    return protocol


@override_settings(WEBSOCKET_SLOW_READER_SECONDS=3)
def test_a_socket_that_stays_backed_up_is_aborted_after_the_limit(ws, clock, caplog):
    ws.pauseProducing()
    clock.advance(1)
    ws.pauseProducing()  # Twisted repeats this on every write while full; the clock must not restart
    clock.advance(1.9)
    assert not ws.transport.disconnecting
    assert ws.transport.producerState == "paused"  # no reading while the client is not reading either
    clock.advance(0.2)
    assert ws.transport.disconnected  # StringTransport's mark of abortConnection
    assert "203.0.113.7:50123" in caplog.text


@override_settings(WEBSOCKET_SLOW_READER_SECONDS=3)
def test_a_socket_that_drains_in_time_stays_open_and_starts_afresh_next_time(ws, clock):
    ws.pauseProducing()
    clock.advance(2.5)
    ws.resumeProducing()
    assert ws.transport.producerState == "producing"
    clock.advance(10)
    ws.pauseProducing()
    clock.advance(2.5)
    assert not ws.transport.disconnecting
    assert len(clock.getDelayedCalls()) == 1


@override_settings(WEBSOCKET_SLOW_READER_SECONDS=3)
def test_a_socket_that_goes_away_leaves_nothing_scheduled(ws, clock):
    ws.pauseProducing()
    ws.stopProducing()
    assert clock.getDelayedCalls() == []


def test_a_bad_limit_stops_the_server_at_start_naming_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "BEAUTYAI_"))}
    env.update({"BEAUTYAI_DATA_DIR": str(tmp_path), "BEAUTYAI_WS_SLOW_READER_SECONDS": "soon"})
    result = subprocess.run([sys.executable, "-m", "beautyai_site.serve", "-p", "0", "beautyai_site.asgi:application"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "BEAUTYAI_WS_SLOW_READER_SECONDS" in result.stderr and "ImproperlyConfigured" in result.stderr
