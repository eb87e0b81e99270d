"""daphne's HTTP request, plus refusing bodies over ``MAX_REQUEST_BODY_BYTES`` while they arrive.

daphne's request is Twisted's ``http.Request``, which stores the whole body before daphne calls
the application: in memory up to 100 KB, beyond that in a temporary file (``gotLength``), one
chunk after another (``handleContentChunk``). ``BodyLimitMiddleware`` sees the body only after
that, so an unauthenticated client declaring or sending gigabytes had them written to disk first.
Here a declared length is judged when the headers end, and a chunked body is counted as it comes;
past the limit the client is answered 413 at once and nothing more is stored.

After the 413 the connection is not closed at once: closing a socket with unread data makes the
kernel answer with a reset, and a client still sending its body then loses the 413 and sees only
"connection reset". So what the client goes on sending is read and dropped until its body ends, it
closes, or ``LINGER_SECONDS`` pass (nginx's lingering close).
"""

from __future__ import annotations

from daphne.http_protocol import HTTPFactory, WebRequest
from django.conf import settings

LINGER_SECONDS = 10


class BodyLimitedRequest(WebRequest):
    refused = False
    received = 0  # body bytes of a chunked request so far
    linger = None  # the pending close after a 413

    def gotLength(self, length):
        if length is not None and length > settings.MAX_REQUEST_BODY_BYTES:
            # The channel answers "Expect: 100-continue" right after this; the 413 is the answer instead.
            self.requestHeaders.removeHeader(b"Expect")
            self.refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.received += len(data)
        if self.received > settings.MAX_REQUEST_BODY_BYTES:
            self.content.close()  # a temporary file: gone with what it held
            self.content = None
            self.refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self.refused:
            # The whole body was read and dropped: nothing left to linger for.
            self.loseConnection()
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        if self.linger is not None and self.linger.active():
            self.linger.cancel()
        super().connectionLost(reason)

    def refuse(self):
        # Imported here: serve.py installs this class before daphne loads the application, which sets up Django.
        from beautyai_site.api.asgi_limits import error_json, too_large

        self.refused = True
        error = too_large()
        # Request.path is set only once the body is in; the channel has the request line already.
        body = error_json(self.channel._path.decode("latin-1"), error)
        self.transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.linger = self.channel.callLater(LINGER_SECONDS, self.loseConnection)


class BodyLimitedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BodyLimitedRequest
        return protocol
