"""Relay a route's connections to another server, flow-controlled.

Give a route a :class:`RelayFactory` and each connection the detector hands
it is joined to a fresh connection to the backend, byte for byte::

    >>> from twisted.internet.task import Clock
    >>> from txcmux import ProtocolSwitchingFactory, Route, matchers
    >>> from txcmux.relay import RelayFactory
    >>> clock = Clock()
    >>> mux = ProtocolSwitchingFactory([
    ...     Route("ssh", matchers.ssh(),
    ...           RelayFactory("tcp:host=127.0.0.1:port=22", reactor=clock)),
    ...     Route("app", matchers.any(),
    ...           RelayFactory("unix:path=/run/app.sock", reactor=clock)),
    ... ], clock=clock)

What the client sent while the detector decided reaches the backend first.
A slow reader on either side pauses the other; half-close, clean close and
reset/abort are each passed on as what they are.  A backend that refuses,
is absent or does not answer within ``connect_timeout`` gets the client
closed at once, one log line and a count in ``RelayFactory.stats``.

:func:`lookup_client` tells a backend in this process which real client is
behind one of the relay's connections to it (every relay reports to it
unless given other ``clients``, an :class:`IRelayedClients`);
:class:`NamedUNIXClientEndpoint` gives relayed unix-socket connections the
distinct names that this needs.
"""

from ._grpc._peers import lookup_client, peer_key
from ._grpc._unix_endpoint import NamedUNIXClientEndpoint
from ._relay._clients import IRelayedClients
from ._relay._relay import RelayFactory, RelayProtocol

__all__ = [
    "IRelayedClients",
    "NamedUNIXClientEndpoint",
    "RelayFactory",
    "RelayProtocol",
    "lookup_client",
    "peer_key",
]
