"""daphne's WebSocket protocol, plus dropping sockets whose client stopped reading.

daphne gives the ASGI application no send backpressure: ``send()`` returns at once and Twisted
queues whatever the kernel will not take, without limit. A client that never reads would make
that queue grow for as long as its generations run. Twisted does tell a registered push producer
when its buffer passes ``bufferSize`` (``pauseProducing``) and when it has drained
(``resumeProducing``); this protocol is that producer, and a socket that stays paused for
``WEBSOCKET_SLOW_READER_SECONDS`` is aborted. daphne then sends ``websocket.disconnect`` to the
consumer, which cancels the socket's generations like any other disconnect.
"""

from __future__ import annotations

import logging

from daphne.ws_protocol import WebSocketProtocol
from django.conf import settings
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

logger = logging.getLogger(__name__)


@implementer(IPushProducer)
class SlowReaderClosingProtocol(WebSocketProtocol):
    stall = None  # the pending drop while the transport's buffer is over its limit

    def onOpen(self):
        super().onOpen()
        # The transport comes from daphne's HTTPChannel, which registered itself as its producer
        # for the upgrade request and never unregisters; a transport holds only one producer.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    def pauseProducing(self):
        # Twisted calls this on every write while the buffer is full; only the first one counts.
        if self.stall is not None:
            return
        self.stall = self.factory.reactor.callLater(settings.WEBSOCKET_SLOW_READER_SECONDS, self.drop_slow_reader)
        # Stop reading until the client catches up, as Twisted's HTTPChannel does: otherwise a
        # client that pings and never reads fills our buffer with pongs as fast as it can send.
        self.transport.pauseProducing()

    def resumeProducing(self):
        if self.stall is not None:
            self.cancel_stall()
            self.transport.resumeProducing()

    def stopProducing(self):
        self.cancel_stall()

    def connectionLost(self, reason):
        # autobahn unregisters the producer before some drops (ping timeout), so stopProducing
        # is not always called.
        self.cancel_stall()
        super().connectionLost(reason)

    def cancel_stall(self):
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def drop_slow_reader(self):
        self.stall = None
        client = "%s:%s" % tuple(self.client_addr) if self.client_addr else "unknown"
        logger.warning("WebSocket client %s has not read its messages for %s s; dropping the connection",
                       client, settings.WEBSOCKET_SLOW_READER_SECONDS)
        # Abort, not close: a close frame would queue behind what the client is not reading.
        self.dropConnection(abort=True)
