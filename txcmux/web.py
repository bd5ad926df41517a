"""Serve a twisted.web Site over HTTP/1.1, h2c and h2 (TLS ALPN) from one factory.

:class:`WebFactory` is a protocol factory for a txcmux route (or any
listener).  Each connection it serves looks at the client's first bytes once
and becomes the Site's HTTP/1.1 channel, or Twisted's HTTP/2 connection when
the bytes are the HTTP/2 preface (prior knowledge, "h2c") or TLS ALPN chose
``h2``::

    >>> from twisted.web.resource import Resource
    >>> from twisted.web.server import Site
    >>> from twisted.web.static import Data
    >>> from txcmux import ProtocolSwitchingFactory, Route, matchers
    >>> from txcmux.web import WebFactory
    >>> root = Resource()
    >>> root.putChild(b"", Data(b"hello", "text/plain"))
    >>> web = WebFactory(Site(root))
    >>> mux = ProtocolSwitchingFactory([
    ...     Route("web", [matchers.http1(), matchers.http2()], web),
    ... ])
    >>> web.acceptableProtocols()  # what a TLS route in front offers in ALPN
    [b'h2', b'http/1.1']

After that choice the transport calls the chosen channel directly: nothing
of txcmux stays on the path of later reads.  :func:`http1_channel` builds
the HTTP/1.1 channel a plain Site would.
"""

from ._web._channel import WebFactory, http1_channel

__all__ = ["WebFactory", "http1_channel"]
