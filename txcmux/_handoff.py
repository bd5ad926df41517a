"""Handing a live transport from one protocol to another.

Twisted transports call their protocol through one attribute: a tcp or unix
connection (and iosim's fake transport) reads ``transport.protocol`` on every
read; TLSMemoryBIOProtocol and every ``ProtocolWrapper`` (the PROXY-protocol
wrapper too) read ``transport.wrappedProtocol``.  :func:`install` points that
attribute at the new protocol, so the transport calls it directly from then
on.  Producer registrations belong to the transport and survive the swap.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from zope.interface import Attribute, Interface

from ._compat import h2_stream_connection
from ._connections import follow


class Handoff(NamedTuple):
    """What the detector learned about a connection before handing it over.

    ``peer`` is the client (the one the listener's prelude named, if it
    named one); ``buffered`` is every byte the client sent while the
    detector decided (the protocol receives them, less the client's answer
    to what the detector sent, if a matcher asked to filter it); ``sent`` is
    what the detector wrote to the client meanwhile; ``negotiated`` is the
    protocol TLS ALPN chose, on connections a TLS-terminating route decrypts
    (None elsewhere); ``prelude`` is what the listener's prelude header
    carried besides the client (None without one).

    (A named tuple rather than a frozen dataclass: one is made for most
    connections, and it is built in a third of the time.)
    """

    route: str
    peer: IAddress | None
    buffered: bytes
    sent: bytes
    negotiated: bytes | None = None
    prelude: object = None


class IHandoffReceiver(Interface):
    """A protocol that wants to know how the detector chose it.

    The detector calls :meth:`handoff_received` before ``makeConnection``.
    """

    handoff = Attribute("The Handoff, once received.")

    def handoff_received(handoff: Handoff) -> None:
        """Take note of the detector's findings for this connection."""


class IHandoffFactory(IProtocolFactory):
    """A protocol factory that builds its protocol from the detector's findings.

    For a route whose factory provides this (checked when the
    :class:`~txcmux.Route` is made), the detector calls
    :meth:`protocol_for_handoff` instead of ``buildProtocol``.  A factory
    serving several protocols can then pick one from the bytes that decided
    the route, instead of sniffing them again
    (:class:`txcmux.web.WebFactory` does).  The protocol it returns is
    connected and given the bytes like any other; returning None closes the
    connection, as ``buildProtocol`` returning None does.
    """

    def protocol_for_handoff(handoff: Handoff) -> IProtocol | None:
        """The protocol for a connection the detector is handing over."""


def install(transport: Any, current: object, new: object) -> bool:
    """Make ``transport`` call ``new`` where it called ``current``.

    Returns False when the transport has no known attribute pointing at
    ``current``; the caller must then forward events itself.
    """
    for attribute in ("protocol", "wrappedProtocol"):
        if getattr(transport, attribute, None) is current:
            setattr(transport, attribute, new)
            follow(current, new)
            return True
    return False


#: What each connection's prelude header carried, by transport (see
#: :func:`prelude_of`); entries go with their transports.
_preludes: weakref.WeakKeyDictionary[Any, object] = weakref.WeakKeyDictionary()


def present_client(
    transport: Any,
    client: IAddress | None,
    destination: IAddress | None,
    info: object,
) -> None:
    """Make ``transport`` speak for the client a prelude header named.

    From then on its ``getPeer()`` answers ``client`` and its ``getHost()``
    ``destination`` (where given), for every protocol that asks: the Site's
    log and ``request.getClientAddress()``, a TLS layer above it, the
    relay.  ``info`` is kept for :func:`prelude_of`.
    """
    if client is not None:
        transport.getPeer = lambda: client
    if destination is not None:
        transport.getHost = lambda: destination
    if info is not None:
        _preludes[transport] = info


def prelude_of(thing: object) -> object:
    """What the prelude header of ``thing``'s connection carried, or None.

    ``thing`` is a transport, or anything reaching one through ``transport``
    or ``channel`` attributes (a protocol, a twisted.web request, a TLS
    layer over the socket) or, for an HTTP/2 request, through its stream's
    connection.
    """
    seen = 0
    while thing is not None and seen < 8:
        try:
            found = _preludes.get(thing)
        except TypeError:  # not weakly referenceable: not a transport of ours
            found = None
        if found is not None:
            return found
        thing = (
            getattr(thing, "transport", None)
            or getattr(thing, "channel", None)
            or h2_stream_connection(thing)
        )
        seen += 1
    return None
