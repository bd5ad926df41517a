"""HTTP/2 for a twisted.web Site on any transport: starting Twisted's H2Connection.

Twisted switches a connection to HTTP/2 only inside its channel proxy, and
only when TLS ALPN negotiated ``h2``.  :func:`start_h2` does what that proxy
does at that moment, for any transport, so a Site can also serve HTTP/2
with prior knowledge (h2c)::

    >>> from twisted.internet.task import Clock
    >>> from twisted.internet.testing import StringTransport
    >>> from twisted.web.resource import Resource
    >>> from twisted.web.server import Site
    >>> from txcmux import _compat
    >>> site = Site(Resource(), reactor=Clock())
    >>> h2_connection = _compat.h2_connection_class()  # ConfigurationError if absent
    >>> template = site.buildProtocol(None)
    >>> channel = start_h2(h2_connection, StringTransport(), template, site)
    >>> type(channel).__name__
    'H2Connection'

``H2Connection`` lives in Twisted's private ``twisted.web._http2``; what
this relies on of it is listed and checked in :mod:`txcmux._compat`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocol, IPushProducer, ITransport
from twisted.web.server import Site


def start_h2(
    connection_class: type[Any],
    transport: ITransport,
    template: IProtocol,
    site: Site,
) -> IProtocol:
    """Start an HTTP/2 server connection for ``site`` on ``transport``.

    ``template`` is the (never connected) channel ``site.buildProtocol``
    made for this connection: its ``requestFactory``, ``site``, ``factory``,
    ``timeOut`` and ``callLater`` are what Twisted copies into its
    H2Connection when ALPN picks h2; the Site's own values stand in for any
    a custom channel lacks.  The connection is made, and registered as the
    transport's streaming producer where the transport is a push producer,
    exactly as Twisted does it.  The caller points the transport at it and
    replays the client's first bytes.
    """
    connection = connection_class(reactor=site.reactor)
    connection.requestFactory = getattr(template, "requestFactory", site.requestFactory)
    connection.site = getattr(template, "site", site)
    connection.factory = getattr(template, "factory", site)
    connection.timeOut = getattr(template, "timeOut", site.timeOut)
    connection.callLater = getattr(template, "callLater", site.reactor.callLater)
    connection.makeConnection(transport)
    # HTTPChannel finds its network producer the same way; a transport that
    # is not a push producer (TLSMemoryBIOProtocol, ProtocolWrapper) gets none.
    network = IPushProducer(transport, None)
    if network is not None:
        transport.registerProducer(connection, True)  # type: ignore[attr-defined]
    channel: IProtocol = connection
    return channel
