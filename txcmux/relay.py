"""Relay a route's connections to another server, flow-controlled.

Give a route a :class:`RelayFactory` and each connection the detector hands
it is joined to a fresh connection to the backend, byte for byte::

    from txcmux import ProtocolSwitchingFactory, Route, matchers
    from txcmux.relay import RelayFactory

    mux = ProtocolSwitchingFactory([
        Route("ssh", matchers.ssh(), RelayFactory("tcp:host=127.0.0.1:port=22")),
        Route("app", matchers.any(), RelayFactory("unix:path=/run/app.sock")),
    ])

What the client sent while the detector decided reaches the backend first.
A slow reader on either side pauses the other; half-close, clean close and
reset/abort are each passed on as what they are.  A backend that refuses,
is absent or does not answer within ``connect_timeout`` gets the client
closed at once, one log line and a count in ``RelayFactory.stats``.

:func:`lookup_client` tells a backend in this process which real client is
behind one of the relay's connections to it; :class:`NamedUNIXClientEndpoint`
gives relayed unix-socket connections the distinct names that this needs.
"""

from ._relay import (
    NamedUNIXClientEndpoint,
    RelayFactory,
    RelayProtocol,
    lookup_client,
    peer_key,
)

__all__ = [
    "NamedUNIXClientEndpoint",
    "RelayFactory",
    "RelayProtocol",
    "lookup_client",
    "peer_key",
]
