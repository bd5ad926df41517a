"""Taking an HTTP/1.1 connection from twisted.web for another protocol.

A resource that answers an ``Upgrade`` (a WebSocket handshake) takes the
connection from the Site's HTTP channel and gives it to the protocol that
speaks from then on.  :func:`take_connection` does it so that txcmux keeps
track: the transport calls the new protocol where it called the channel
(through :func:`txcmux._handoff.install`), the connection stays counted
(listener and route ``active``, ``max_connections``) until the new protocol
loses it, and a drain asks the new protocol to end through its
``going_away()`` method when it has one.  :class:`WebSocketResource` uses it
to serve any WebSocket server factory, Autobahn's first of all::

    >>> from twisted.internet.protocol import Factory, Protocol
    >>> resource = WebSocketResource(Factory.forProtocol(Protocol))
    >>> resource.isLeaf, dict(resource.stats)
    (True, {})

Autobahn's own ``autobahn.twisted.resource.WebSocketResource`` swaps the
protocol behind txcmux's back: the WebSocket is served, but its connection
is never seen to close (``active`` stays up, and a drain waits
``drain_timeout`` for it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from ._drain import http_channel_of
from ._handoff import install
from ._log import describe_peer, log
from ._web._deadline import release

__all__ = ["WebSocketResource", "take_connection"]


def take_connection(request: Any, protocol: IProtocol) -> bool:
    """Give the HTTP/1.1 connection ``request`` came on to ``protocol``.

    The Site's channel stops reading, timing out and producing for the
    connection; ``protocol`` is connected to its transport and called by it
    from then on.  Nothing is replayed: the caller gives ``protocol`` what
    it needs of the request.  Returns False, with a log line, for a
    request this cannot take: one not over HTTP/1.1 (an HTTP/2 stream:
    left as it is), or one whose transport calls its protocol some other
    way (the connection is aborted).
    """
    channel: Any = request.channel
    transport: Any = getattr(channel, "transport", None)
    if transport is None or request.clientproto != b"HTTP/1.1":
        log.warn(
            "txcmux: cannot take a {version} connection for {uri}: HTTP/1.1 only",
            version=request.clientproto.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
        )
        return False
    # What the transport calls: the channel, or a chooser or proxy in front.
    current = next(
        (
            called
            for called in (
                getattr(transport, name, None)
                for name in ("protocol", "wrappedProtocol")
            )
            if called is not None and http_channel_of(called) is channel
        ),
        None,
    )
    if current is None:
        log.error(
            "txcmux: cannot take the connection from {channel} for {uri}",
            channel=channel,
            uri=request.uri.decode("latin-1"),
        )
        transport.abortConnection()
        return False
    # twisted.web suspends the channel's idle timeout while a request is
    # handled, and this one never ends; off for good all the same.
    channel.setTimeout(None)
    release(channel)  # and the web target's header deadline
    transport.unregisterProducer()  # the channel's registration
    install(transport, current, protocol)
    protocol.makeConnection(transport)
    # The channel may have paused reading while it handled the request.
    transport.resumeProducing()
    return True


def _request_bytes(request: Any) -> bytes:
    """The request again as the client sent it (header order kept)."""
    lines = [b"%s %s HTTP/1.1" % (request.method, request.uri)]
    for name, values in request.requestHeaders.getAllRawHeaders():
        lines.extend(b"%s: %s" % (name, value) for value in values)
    body: bytes = request.content.read() if request.content is not None else b""
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@implementer(IResource)
class WebSocketResource:
    """A twisted.web resource that hands its requests to a WebSocket factory.

    Put it in a Site's tree where the WebSocket endpoint lives
    (``root.putChild(b"ws", WebSocketResource(factory))``).  Each HTTP/1.1
    request for it (normally an ``Upgrade: websocket`` handshake) becomes a
    connection of a protocol from ``factory`` (an
    ``autobahn.twisted.websocket.WebSocketServerFactory``, or any factory
    whose protocols read the handshake from their first bytes): the
    request is given to it again as bytes, and it answers the handshake
    itself.  Other requests (HTTP/2, HTTP/1.0) get 426 Upgrade Required:
    WebSocket over HTTP/2 (RFC 8441) is not served by Twisted.

    ``stats`` counts ``taken`` connections, ``refused.version`` (the 426s),
    ``refused.transport`` (a connection :func:`take_connection` could not
    take, aborted) and
    ``refused.factory`` (the factory built no protocol: 500).
    """

    isLeaf = True

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory
        self.stats: Counter[str] = Counter()

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        """The resource has no children: it serves every path under it."""
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        """Children are not served here: refused."""
        raise NotImplementedError("a WebSocketResource has no children")

    def render(self, request: Any) -> bytes | int:
        """Hand an HTTP/1.1 request's connection to a protocol of the factory."""
        if request.clientproto != b"HTTP/1.1" or request.channel.transport is None:
            self.stats["refused.version"] += 1
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"WebSocket needs HTTP/1.1 here: this server has no RFC 8441.\n"
        protocol = self.factory.buildProtocol(request.getClientAddress())
        if protocol is None:
            self.stats["refused.factory"] += 1
            log.warn(
                "txcmux: {factory} built no protocol for {peer}",
                factory=self.factory,
                peer=describe_peer(request.getClientAddress()),
            )
            request.setResponseCode(500)
            return b""
        data = _request_bytes(request)
        if take_connection(request, protocol):
            self.stats["taken"] += 1
            protocol.dataReceived(data)
        else:
            self.stats["refused.transport"] += 1
        return NOT_DONE_YET
