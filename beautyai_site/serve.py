"""Runs daphne with BeautyAI's protocols: ``python -m beautyai_site.serve <daphne arguments>``.

Every daphne option works as with the ``daphne`` command; the differences:

- WebSocket connections are served by ``SlowReaderClosingProtocol``, which drops clients that stop
  reading (beautyai_site/ws_protocol.py);
- HTTP requests are ``BodyLimitedRequest``s, which answer 413 as soon as a body is declared or sent
  over ``BEAUTYAI_MAX_BODY_BYTES`` (beautyai_site/http_protocol.py). Plain ``daphne`` lacks this: it
  stores a whole body, in a temporary file past 100 KB, before the application sees any of it;
  ``BodyLimitMiddleware`` still answers 413 then, but only after the disk took the body.
"""

from __future__ import annotations

import sys

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory

from beautyai_site.http_protocol import BodyLimitedHTTPFactory
from beautyai_site.ws_protocol import SlowReaderClosingProtocol


def main(argv: list[str]) -> None:
    # daphne builds its WebSocketFactory inside Server.run; the factory's protocol class is the one
    # hook it leaves, and it is the usual Twisted way to choose a protocol.
    WebSocketFactory.protocol = SlowReaderClosingProtocol
    # Its HTTPFactory sets each channel's requestFactory to its own WebRequest in buildProtocol, so
    # the factory class that Server.run instantiates is what has to change.
    daphne.server.HTTPFactory = BodyLimitedHTTPFactory
    CommandLineInterface().run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
