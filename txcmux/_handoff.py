"""Handing a live transport from one protocol to another.

Twisted transports call their protocol through one attribute: a tcp or unix
connection (and iosim's fake transport) reads ``transport.protocol`` on every
read; TLSMemoryBIOProtocol and every ``ProtocolWrapper`` (the PROXY-protocol
wrapper too) read ``transport.wrappedProtocol``.  :func:`install` points that
attribute at the new protocol, so the transport calls it directly from then
on.  Producer registrations belong to the transport and survive the swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IAddress
from zope.interface import Attribute, Interface

from .matchers._http2 import EMPTY_SETTINGS


@dataclass(frozen=True, slots=True)
class Handoff:
    """What the detector learned about a connection before handing it over.

    ``buffered`` is every byte the client sent while the detector decided
    (the protocol receives them, less the SETTINGS ACK if ``sent`` held
    SETTINGS); ``sent`` is what the detector wrote to the client meanwhile.
    """

    route: str
    peer: IAddress | None
    buffered: bytes
    sent: bytes

    @property
    def settings_sent(self) -> bool:
        """Whether the detector sent an HTTP/2 SETTINGS frame to the client."""
        return EMPTY_SETTINGS in self.sent


class IHandoffReceiver(Interface):
    """A protocol that wants to know how the detector chose it.

    The detector calls :meth:`handoff_received` before ``makeConnection``.
    """

    handoff = Attribute("The Handoff, once received.")

    def handoff_received(handoff: Handoff) -> None:
        """Take note of the detector's findings for this connection."""


def install(transport: Any, current: object, new: object) -> bool:
    """Make ``transport`` call ``new`` where it called ``current``.

    Returns False when the transport has no known attribute pointing at
    ``current``; the caller must then forward events itself.
    """
    for attribute in ("wrappedProtocol", "protocol"):
        if getattr(transport, attribute, None) is current:
            setattr(transport, attribute, new)
            return True
    return False
