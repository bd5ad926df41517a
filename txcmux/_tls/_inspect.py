"""What a handler behind TLS can ask of its transport: server name, client certificate.

Each function takes a transport behind
:class:`~txcmux.tls.TLSTerminationFactory` (or any Twisted TLS transport),
or a twisted.web request, whose TLS transport it finds over HTTP/1.1 and
HTTP/2; on a connection without TLS each answers None::

    >>> from twisted.internet.testing import StringTransport
    >>> server_name(StringTransport()) is None
    True
    >>> peer_certificate(StringTransport()) is None
    True
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL

from .. import _compat


def ssl_connection(transport: object) -> SSL.Connection | None:
    """The OpenSSL connection under ``transport``, or None if it has none.

    Works for the transport handlers get behind :class:`TLSTerminationFactory`
    and for Twisted's own TLS ports (``ssl:`` endpoints, ``listenSSL``).
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        handle = get_handle()
    except Exception:
        return None
    return handle if isinstance(handle, SSL.Connection) else None


def server_name(transport: object) -> str | None:
    """The server name (SNI) the client asked for, lower-cased, or None.

    ``transport`` is a protocol's transport behind
    :class:`TLSTerminationFactory` (or any Twisted TLS transport); None also
    when the connection is not TLS or the client sent no server name.

    In a twisted.web resource use ``request.channel.transport`` over HTTP/1.1;
    over HTTP/2 ``request.channel`` is the stream, whose connection's
    transport is the TLS one: :func:`server_name` accepts the request itself
    and looks in both places.
    """
    connection = ssl_connection(_tls_transport(transport))
    if connection is None:
        return None
    name = connection.get_servername()
    return name.decode("ascii", "replace").rstrip(".").lower() if name else None


def peer_certificate(transport: object) -> x509.Certificate | None:
    """The client's certificate, as a ``cryptography`` object, or None.

    Only set when the TLS layer asked for client certificates (``client_ca``)
    and the client sent one; it has then been verified against that CA.
    Accepts the same objects as :func:`server_name`.
    """
    connection = ssl_connection(_tls_transport(transport))
    if connection is None:
        return None
    return connection.get_peer_certificate(as_cryptography=True)


def _tls_transport(thing: object) -> object:
    """Find the transport in a transport, a twisted.web request or channel."""
    if ssl_connection(thing) is not None:
        return thing
    channel = getattr(thing, "channel", None)
    for candidate in (
        getattr(thing, "transport", None),
        getattr(channel, "transport", None),
        # an HTTP/2 stream keeps its connection, whose transport is the TLS one
        getattr(_compat.h2_stream_connection(channel), "transport", None),
        getattr(_compat.h2_stream_connection(thing), "transport", None),
    ):
        if candidate is not None and ssl_connection(candidate) is not None:
            return candidate
    return thing
