"""ALPN for a TLS route: what to offer, and how to choose from the client's list.

What a TLS-terminating route offers comes from the routes behind it: each
matcher says which ALPN protocols the connections it matches speak (its
``alpn``), and a route whose matchers say nothing offers what its factory
announces through ``IProtocolNegotiationFactory``::

    >>> from twisted.internet.protocol import Factory
    >>> from txcmux import Route, matchers
    >>> protocols_for_routes([
    ...     Route("web", matchers.http1(), Factory()),
    ...     Route("grpc", matchers.grpc(), Factory()),
    ... ])
    ['h2', 'http/1.1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IProtocolNegotiationFactory

from .._route import Route

#: Where the usual protocols go in an offer; others follow in route order.
_PREFERENCE = {"h2": 0, "http/1.1": 1}


def _text(protocol: bytes | str) -> str:
    return protocol.decode("ascii") if isinstance(protocol, bytes) else str(protocol)


def protocols_of_factory(factory: object) -> list[str]:
    """The ALPN protocols ``factory`` announces (IProtocolNegotiationFactory)."""
    negotiation = IProtocolNegotiationFactory(factory, None)
    if negotiation is None:
        return []
    return [_text(protocol) for protocol in negotiation.acceptableProtocols()]


def protocols_for_routes(routes: Iterable[Route]) -> list[str]:
    """The ALPN protocols the routes can speak, as their matchers declare.

    Each matcher's ``alpn`` (``(b"h2",)`` for the HTTP/2 and gRPC matchers,
    ``(b"http/1.1",)`` for the HTTP/1 ones; a matcher without the attribute
    declares nothing); a route whose matchers declare nothing contributes
    what its factory announces through ``IProtocolNegotiationFactory`` (a
    twisted.web ``Site`` does).  ``h2`` comes first, then ``http/1.1``.
    """
    found: list[str] = []
    for route in routes:
        speaks = [
            _text(protocol)
            for matcher in route.matchers
            for protocol in getattr(matcher, "alpn", ())
        ]
        if not speaks:
            speaks = protocols_of_factory(route.factory)
        found.extend(p for p in speaks if p not in found)
    return sorted(found, key=lambda p: _PREFERENCE.get(p, len(_PREFERENCE)))


def alpn_selector(
    protocols: Sequence[bytes],
) -> Callable[[SSL.Connection, list[bytes]], Any]:
    """An ALPN callback: our first protocol the client offers, else none.

    Twisted's own callback answers an empty protocol when nothing overlaps,
    which OpenSSL turns into an internal-error alert; going on without ALPN
    lets the inner detector decide from the bytes instead.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> object:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select
