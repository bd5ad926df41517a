"""TLS on a txcmux port: terminate it and detect again, or pass it through.

Terminate TLS and route the decrypted bytes with a second detector; the
ALPN offer follows from the inner routes' matchers::

    >>> from twisted.web.resource import Resource
    >>> from twisted.web.server import Site
    >>> from txcmux import Route, matchers
    >>> from txcmux.tls import protocols_for_routes
    >>> site = Site(Resource())
    >>> inner = [Route("web", [matchers.http1(), matchers.http2()], site)]
    >>> protocols_for_routes(inner)
    ['h2', 'http/1.1']

and, with the certificate files::

    https = TLSTerminationFactory("server.pem", "server.key", inner)
    mux = ProtocolSwitchingFactory([
        Route("pass", matchers.tls(sni="pass.example"), relay_to_backend),
        Route("tls", matchers.tls(), https),
        Route("web", matchers.http1(), site),
    ])

A handler behind TLS reads what it would on a plain TLS port:
``transport.negotiatedProtocol``, ``transport.getPeerCertificate()``,
``ISSLTransport(transport)``, twisted.web's ``request.isSecure()``; and, with
the helpers here, :func:`server_name` and :func:`peer_certificate`.

SNI pass-through needs nothing from this module: a route whose matcher is
``matchers.tls(sni=...)`` and whose factory relays the bytes, still
encrypted, to a backend that keeps its own certificate.
"""

from __future__ import annotations

from ._tls._alpn import protocols_for_routes
from ._tls._factory import TLSTerminationFactory
from ._tls._inspect import peer_certificate, server_name, ssl_connection
from ._tls._pem import Identity

__all__ = [
    "Identity",
    "TLSTerminationFactory",
    "peer_certificate",
    "protocols_for_routes",
    "server_name",
    "ssl_connection",
]
