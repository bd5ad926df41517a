"""HTTP/2 for a twisted.web Site on any transport: starting Twisted's H2Connection.

Twisted switches a connection to HTTP/2 only inside
``twisted.web.http._GenericHTTPChannelProtocol``, and only when TLS ALPN
negotiated ``h2``.  This module does what that class does at that moment, for
any transport, so a Site can also serve HTTP/2 with prior knowledge (h2c)::

    h2_connection = load_h2_connection()      # ConfigurationError if absent
    channel = start_h2(h2_connection, transport, template, site)

``twisted.web._http2`` is private; :func:`load_h2_connection` checks that
the class has what :func:`start_h2` relies on.  Checked against the sources
of Twisted 24.7.0 (the oldest release txcmux allows) and 26.10.0: both have
``H2Connection(reactor=None)`` taking ``requestFactory``, ``site``,
``factory``, ``timeOut`` and ``callLater`` as plain attributes, set up this
way by ``_GenericHTTPChannelProtocol.dataReceived``.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.interfaces import IProtocol, IPushProducer, ITransport
from twisted.web.server import Site

from ._errors import ConfigurationError

# What start_h2 touches on the class (requestFactory is set on instances only).
_REQUIRED = (
    "site",
    "factory",
    "timeOut",
    "callLater",
    "setTimeout",
    "makeConnection",
    "dataReceived",
    "connectionLost",
)
_INSTALL_HINT = (
    "install Twisted's HTTP/2 extra (pip install 'twisted[http2]': the h2 and"
    " priority packages), or pass http2=False to serve HTTP/1.1 only"
)


def _twisted_version() -> str:
    import twisted

    return str(getattr(twisted, "__version__", "unknown"))


def load_h2_connection() -> type[Any]:
    """Return Twisted's ``H2Connection`` class, or raise ConfigurationError.

    Raises when Twisted was installed without HTTP/2 (``H2_ENABLED`` false)
    or when its private HTTP/2 class no longer looks as txcmux expects.
    """
    from twisted.web import http

    if not getattr(http, "H2_ENABLED", False):
        raise ConfigurationError(
            "HTTP/2 is unavailable: twisted.web.http.H2_ENABLED is false in"
            f" Twisted {_twisted_version()}; {_INSTALL_HINT}"
        )
    try:
        from twisted.web._http2 import H2Connection
    except ImportError as error:  # pragma: no cover - H2_ENABLED says it imports
        raise ConfigurationError(
            f"HTTP/2 is unavailable: twisted.web._http2 does not import ({error});"
            f" {_INSTALL_HINT}"
        ) from error
    missing = [name for name in _REQUIRED if not hasattr(H2Connection, name)]
    if not IPushProducer.implementedBy(H2Connection):
        missing.append("IPushProducer")
    try:
        inspect.signature(H2Connection).bind(reactor=None)
    except TypeError:
        missing.append("__init__(reactor)")
    if missing:
        raise ConfigurationError(
            "twisted.web._http2.H2Connection in Twisted"
            f" {_twisted_version()} lacks {', '.join(missing)}; txcmux.web"
            " needs a Twisted release between 24.7 and 26.10 (the range it was"
            " checked against), or pass http2=False to serve HTTP/1.1 only"
        )
    connection_class: type[Any] = H2Connection
    return connection_class


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
