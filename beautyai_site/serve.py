"""Runs daphne with BeautyAI's WebSocket protocol: ``python -m beautyai_site.serve <daphne arguments>``.

Every daphne option works as with the ``daphne`` command; the only difference is that WebSocket
connections are served by ``SlowReaderClosingProtocol``, which drops clients that stop reading.
"""

from __future__ import annotations

import sys

from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory

from beautyai_site.ws_protocol import SlowReaderClosingProtocol


def main(argv: list[str]) -> None:
    # daphne builds its WebSocketFactory inside Server.run; the factory's protocol class is the one
    # hook it leaves, and it is the usual Twisted way to choose a protocol.
    WebSocketFactory.protocol = SlowReaderClosingProtocol
    CommandLineInterface().run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
