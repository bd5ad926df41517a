"""The PROXY protocol: who the client behind a load balancer is.

A listener behind HAProxy, Envoy or a cloud load balancer reads the header
the balancer puts first (``ProtocolSwitchingFactory(..., prelude=
ProxyPrelude("required", ["10.0.0.0/8"]))``, or ``proxy_protocol`` and
``trusted_proxies`` in a config file); routes then match on the bytes after
it, and every target sees the client it names as ``transport.getPeer()``.
Handlers reach the rest of the header (the destination, the v2 TLVs)
through :func:`proxy_header`::

    from txcmux.proxy import proxy_header

    def render_GET(self, request):
        header = proxy_header(request)       # None: no PROXY header
        if header is not None:
            print(header.source, header.destination, header.authority)
"""

from __future__ import annotations

from ._handoff import prelude_of
from ._proxy._build import v1 as build_v1
from ._proxy._build import v2 as build_v2
from ._proxy._parser import (
    ProxyError,
    ProxyHeader,
    SSLInfo,
    parse,
    signature,
)
from ._proxy._stage import ProxyPrelude

__all__ = [
    "ProxyError",
    "ProxyHeader",
    "ProxyPrelude",
    "SSLInfo",
    "build_v1",
    "build_v2",
    "parse",
    "proxy_header",
    "signature",
]


def proxy_header(thing: object) -> ProxyHeader | None:
    """The PROXY header of the connection ``thing`` belongs to, or None.

    ``thing`` is a transport, a protocol, a twisted.web request, or a TLS
    connection over the socket that carried the header.
    """
    found = prelude_of(thing)
    return found if isinstance(found, ProxyHeader) else None
