"""Serve WebSockets from a twisted.web Site's tree, with txcmux keeping count.

:class:`WebSocketResource` is the Site's way to a WebSocket endpoint: it
gives the connection of each HTTP/1.1 upgrade for its path to a protocol
of a WebSocket factory (Autobahn's, for one), and txcmux goes on counting
and draining that connection as the route's::

    from autobahn.twisted.websocket import WebSocketServerFactory
    from txcmux.websocket import WebSocketResource

    root.putChild(b"ws", WebSocketResource(WebSocketServerFactory()))

:func:`take_connection` is what it does underneath, for a resource of
your own.  The other way to a WebSocket endpoint is a route with the
``websocket`` matcher and the factory as its target; docs/websocket.md
says when to use which.
"""

from ._takeover import WebSocketResource, take_connection

__all__ = ["WebSocketResource", "take_connection"]
