"""Serve an ASGI 3 application (FastAPI, Starlette, Django) on a txcmux port.

:class:`ASGIApplication` is a Twisted service running the app on an
asyncio loop in a thread of its own, with its lifespan tied to the
service's start and stop; its :meth:`~ASGIApplication.factory` is the
route's target, serving the app over HTTP/1.1, h2c and h2 (TLS ALPN), and
WebSocket over HTTP/1.1::

    >>> from txcmux import ProtocolSwitchingFactory, Route, matchers
    >>> from txcmux.asgi import ASGIApplication
    >>> async def app(scope, receive, send):
    ...     pass  # e.g. a FastAPI() instance
    >>> api = ASGIApplication(app)
    >>> mux = ProtocolSwitchingFactory([
    ...     Route("api", [matchers.http1(), matchers.http2()], api.factory()),
    ... ])
    >>> api  # api.setServiceParent(application) starts it
    <ASGIApplication txcmux.asgi:app lifespan=auto not running>

Needs ``pip install txcmux[asgi]`` (wsproto, for WebSocket).
:class:`LifespanError` says the app's lifespan startup failed;
:class:`ClientDisconnected` is what ``send`` raises on a WebSocket whose
client has gone.
"""

from ._apps._asgi import ASGIApplication, LifespanError
from ._apps._asgi_ws import ClientDisconnected

__all__ = ["ASGIApplication", "ClientDisconnected", "LifespanError"]
