"""Which real client each of the relay's backend connections carries.

A backend sees the relay, not the client, as its peer.  The relay tells a
:class:`ClientRegistry` which client each backend connection carries, keyed
by that connection's local address spelled as grpcio's ``context.peer()``
spells it, so that a backend in this process (the in-process gRPC server,
above all) can ask::

    >>> from twisted.internet.address import IPv4Address
    >>> registry = ClientRegistry()
    >>> forget = registry.relayed(
    ...     IPv4Address("TCP", "127.0.0.1", 41234), IPv4Address("TCP", "203.0.113.9", 5)
    ... )
    >>> registry.lookup("ipv4:127.0.0.1:41234")
    IPv4Address(type='TCP', host='203.0.113.9', port=5)
    >>> forget()
    >>> registry.lookup("ipv4:127.0.0.1:41234") is None
    True

:data:`CLIENTS` is the process-wide registry every relay reports to unless
given another; :func:`lookup_client` asks it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from urllib.parse import unquote

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from .._relay._clients import IRelayedClients

__all__ = ["CLIENTS", "ClientRegistry", "lookup_client", "peer_key"]


def peer_key(address: IAddress) -> str | None:
    """Spell ``address`` the way grpcio's ``context.peer()`` spells a peer.

    ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:/path`` or
    ``unix-abstract:name``; None for addresses that name nobody in
    particular (an unbound unix socket).

    >>> from twisted.internet.address import IPv4Address
    >>> peer_key(IPv4Address("TCP", "127.0.0.1", 5000))
    'ipv4:127.0.0.1:5000'
    """
    if isinstance(address, IPv4Address):
        return f"ipv4:{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"ipv6:[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress) and address.name:
        text = os.fsdecode(address.name)
        if text.startswith("\0"):
            return "unix-abstract:" + text[1:]
        return "unix:" + text
    return None


def _nothing() -> None:
    """What forgetting a connection nobody could look up takes."""


@implementer(IRelayedClients)
class ClientRegistry:
    """Backend-connection local address -> the clients relayed from it.

    Normally one client per address; two live connections to different
    backends may share a local tcp port, and then nobody can say which
    client is behind it.  Written from the reactor thread, read from any
    thread (the values are tuples, replaced whole).
    """

    def __init__(self) -> None:
        self._clients: dict[str, tuple[IAddress, ...]] = {}

    def relayed(self, local: IAddress, client: IAddress) -> Callable[[], None]:
        """Note that the connection from ``local`` carries ``client``.

        Returns what to call once that connection has closed.
        """
        key = peer_key(local)
        if key is None:
            return _nothing
        self._clients[key] = (*self._clients.get(key, ()), client)
        return functools.partial(self._forget, key, client)

    def _forget(self, key: str, client: IAddress) -> None:
        remaining = tuple(
            known for known in self._clients.get(key, ()) if known is not client
        )
        if remaining:
            self._clients[key] = remaining
        else:
            self._clients.pop(key, None)

    def lookup(self, peer: str) -> IAddress | None:
        """The real client behind the backend connection known as ``peer``.

        ``peer`` is the backend's view of a relay connection's far end,
        spelled as grpcio spells it (``ipv4:127.0.0.1:41234``,
        ``ipv6:%5B::1%5D:41234``, ``unix:/run/txcmux/c1-2-ab``).  None when
        no live relayed connection has that local address, or (rarely) two
        connections to different tcp backends share it.  Safe to call from
        any thread.
        """
        found = self._clients.get(unquote(peer), ())
        return found[0] if len(found) == 1 else None


#: The process-wide registry: every relay reports to it unless given another.
CLIENTS = ClientRegistry()


def lookup_client(peer: str) -> IAddress | None:
    """The real client behind the backend connection known as ``peer``.

    ``peer`` is the backend's view of a relay connection's far end, spelled
    as grpcio spells it (``ipv4:127.0.0.1:41234``, ``ipv6:%5B::1%5D:41234``,
    ``unix:/run/txcmux/c1-2-ab``).  Returns the address of the client the
    relay carries on that connection, or None when no live relay connection
    of this process has that local address (or, rarely, two connections to
    different tcp backends share it).  Safe to call from any thread.
    """
    return CLIENTS.lookup(peer)
