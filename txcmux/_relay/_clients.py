"""The relay's hook for telling a backend which client it carries.

A relay reports each backend connection it joins to an
:class:`IRelayedClients` (``RelayFactory(..., clients=...)``): "the
connection from this local address carries this client".  By default that
is the process-wide registry the in-process gRPC server reads
(``txcmux.relay.lookup_client``); any object with the method will do::

    >>> from zope.interface import implementer
    >>> @implementer(IRelayedClients)
    ... class Printer:
    ...     def relayed(self, local, client):
    ...         print(f"{local} carries {client}")
    ...         return lambda: print(f"{local} closed")
    >>> forget = Printer().relayed("unix:/run/c1", "203.0.113.9:5000")
    unix:/run/c1 carries 203.0.113.9:5000
    >>> forget()
    unix:/run/c1 closed
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress
from zope.interface import Interface


class IRelayedClients(Interface):
    """Told which client each of a relay's backend connections carries."""

    def relayed(local: IAddress, client: IAddress) -> Callable[[], object]:
        """Note that the backend connection from ``local`` carries ``client``.

        ``local`` is the relay's end of the backend connection (what the
        backend sees as its peer).  Returns what the relay calls once that
        connection and the client's have both closed.
        """
