"""The decision: which route a connection's first bytes select, as a pure step.

No transport, no clock, no logging: the routes, the bytes seen so far, whether
the client has closed its side, and which routes are already ruled out go
in; a decision comes out.  The detector (``_detector.py``) is the I/O glue
around it::

    >>> from twisted.internet.protocol import Factory, Protocol
    >>> from txcmux import Route, matchers
    >>> factory = Factory.forProtocol(Protocol)
    >>> decider = Decider(
    ...     [
    ...         Route("ssh", matchers.ssh(), factory),
    ...         Route("web", matchers.http1(), factory),
    ...     ],
    ...     max_bytes=16384,
    ... )
    >>> decider.decide(b"SSH-2.0-OpenSSH_9.2\\r\\n")
    <Route ssh: ssh>
    >>> decider.decide(b"GET / HT")
    Wait(ruled_out=frozenset(), probes=())
    >>> decider.decide(b"\\x00").reason
    <Reason.NO_MATCH: 'no_match'>

A decision is one of three things: the :class:`~txcmux.Route` to hand the
connection to, :class:`Wait` (for more bytes, with what to send the client
meanwhile), or :class:`Reject` (with the :class:`Reason`).  Routes keep strict
priority: while an earlier route may still match, no later route wins.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple

from twisted.internet.interfaces import IAddress

from ._route import Bound, Matching, Route
from .matchers._verdict import NEED_MORE, Outcome, Verdict

# Enum members read once: a class attribute lookup on an Enum is slow.
_MATCH = Outcome.MATCH
_NEED_MORE = Outcome.NEED_MORE


class Reason(enum.StrEnum):
    """Why a connection was closed without being handed to any route.

    Each is also the suffix of the factory's ``closed.<reason>`` counter.
    """

    #: Every route ruled the bytes out (or the client closed its side first).
    NO_MATCH = "no_match"
    #: ``max_sniff_bytes`` arrived and a route still needed more.
    TOO_LONG = "too_long"
    #: ``sniff_timeout`` passed undecided, and no ``on_timeout`` route is set.
    TIMEOUT = "timeout"
    #: The chosen route's factory returned None instead of a protocol.
    NO_PROTOCOL = "no_protocol"
    #: A malformed PROXY protocol header.
    PROXY_INVALID = "proxy_invalid"
    #: A PROXY header from a peer outside ``trusted_proxies``.
    PROXY_UNTRUSTED = "proxy_untrusted"
    #: No PROXY header where one is required.
    PROXY_MISSING = "proxy_missing"
    #: A connection limit was reached (``max_connections``, ``max_sniffing``,
    #: ``max_connections_per_ip``, or a route's ``max_connections``).
    LIMIT = "limit"
    #: The service is draining: connections still undecided are closed.
    DRAINING = "draining"


class Stat(enum.StrEnum):
    """The keys of :attr:`ProtocolSwitchingFactory.stats` that are not per route.

    Per route there is ``routed.<route name>``; per :class:`Reason`,
    ``closed.<reason>`` (see :func:`routed` and :func:`closed`).
    """

    #: Connections the factory accepted.
    ACCEPTED = "accepted"
    #: Connections handed to the ``on_timeout`` route.
    TIMEOUT_FALLBACK = "timeout_fallback"
    #: Clients that closed the connection while undecided.
    CLOSED_BY_PEER = "closed.peer"
    #: Connections a wrapping transport closed while undecided (for
    #: instance Twisted's ``haproxy:`` endpoint refusing a missing header).
    CLOSED_BY_LISTENER = "closed.listener"


def routed(route: str) -> str:
    """The ``stats`` key counting connections handed to ``route``.

    >>> routed("web")
    'routed.web'
    """
    return "routed." + route


def closed(reason: Reason) -> str:
    """The ``stats`` key counting connections rejected for ``reason``.

    >>> closed(Reason.TOO_LONG)
    'closed.too_long'
    """
    return "closed." + reason.value


class Wait(NamedTuple):
    """No decision yet: wait for more bytes.

    ``ruled_out`` holds the priority index of every route that can no longer
    match (pass it to the next :meth:`Decider.decide`); ``probes`` are the
    verdicts of routes that want bytes written to the client meanwhile (see
    :class:`~txcmux.matchers.Verdict`).
    """

    ruled_out: frozenset[int]
    probes: tuple[Verdict, ...]


class Reject(NamedTuple):
    """No route will take the connection: close it."""

    reason: Reason
    detail: str


Decision = Route | Wait | Reject

# A route in a decider: its priority index, the route, what asks its matchers.
_Entry = tuple[int, Route, Matching]


class Decider:
    """The priority rule over a fixed list of routes, as a pure function.

    ``max_bytes`` is how many bytes the matchers see at most (the factory's
    ``max_sniff_bytes``); ``on_timeout`` names the route for connections
    still undecided at the sniff timeout, if any.
    """

    __slots__ = (
        "all_routes",
        "binds",
        "candidates",
        "decides_on_connect",
        "max_bytes",
        "on_timeout",
    )

    def __init__(
        self,
        routes: Sequence[Route],
        max_bytes: int,
        on_timeout: Route | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.on_timeout = on_timeout
        #: Every route with its priority index, and what asks its matchers
        #: (the route itself, or bound to a connection by :meth:`bind`).
        self.all_routes: tuple[_Entry, ...] = tuple(
            (i, r, r) for i, r in enumerate(routes)
        )
        #: Whether a route's matchers decide on the connection's addresses:
        #: then each connection is decided by the decider :meth:`bind` makes.
        self.binds = any(r.depends_on_connection for r in routes)
        # Matchers are pure functions of the bytes, so what the routes make of
        # no bytes at all is the same for every connection: ask once, here.
        # Unless a route decides (any()) or wants to send on connect, the
        # detector need not ask before the first bytes arrive.
        #: Whether a decision can come before the client sends anything.
        # (A route deciding on addresses is left out: for each connection,
        # :meth:`bind` asks it bound.)
        self.decides_on_connect = any(
            r.verdict(b"") != NEED_MORE for r in routes if not r.depends_on_connection
        )
        # For the same reason, a route that rules out a connection's first
        # byte rules out the connection: for each of the 256 first bytes, the
        # routes still worth asking.  A request starting with "G" skips the
        # gRPC, TLS and SSH matchers entirely.
        #: For each first byte, the routes (with their index) that may match.
        self.candidates: tuple[tuple[_Entry, ...], ...] = tuple(
            tuple(e for e in self.all_routes if e[1].may_start_with(bytes((first,))))
            for first in range(256)
        )

    def bind(self, client: IAddress | None, local: IAddress | None) -> Decider:
        """The decider for one connection from ``client`` to ``local``.

        Itself unless :attr:`binds`.  Else one whose routes' matchers are
        bound to these addresses (see :meth:`Route.bind`): a route none of
        whose matchers can match them is ruled out before any byte, and
        the first-byte table is not used (it was made before any address
        was known), so every remaining route is asked.
        """
        if not self.binds:
            return self
        bound = Decider.__new__(Decider)
        bound.max_bytes = self.max_bytes
        bound.on_timeout = self.on_timeout
        bound.binds = False
        on_connect = self.decides_on_connect  # what the other routes make of b""
        entries: list[_Entry] = []
        for entry in self.all_routes:
            route = entry[1]
            if not route.depends_on_connection:
                entries.append(entry)
                continue
            matching = route.bind(client, local)
            if isinstance(matching, Bound) and matching.never:
                continue
            entries.append((entry[0], route, matching))
            on_connect = on_connect or matching.verdict(b"") != NEED_MORE
        bound.all_routes = found = tuple(entries)
        # With no route left, and none for silent clients, close at once.
        bound.decides_on_connect = on_connect or (not found and self.on_timeout is None)
        bound.candidates = (found,) * 256
        return bound

    def decide(
        self,
        data: bytes,
        eof: bool = False,
        ruled_out: frozenset[int] = frozenset(),
    ) -> Decision:
        """What to do with a connection whose client has sent ``data``.

        ``eof`` says the client has closed its side (no more bytes will
        come); ``ruled_out`` is the previous :class:`Wait`'s.  Only the first
        ``max_bytes`` of ``data`` are looked at.
        """
        limit = self.max_bytes
        full = len(data) >= limit
        if full:
            data = data[:limit]
        final = eof or full
        pending = False
        undecided_at_limit = False
        probes: list[Verdict] = []
        died: list[int] = []
        for index, route, matching in (
            self.candidates[data[0]] if data else self.all_routes
        ):
            if index in ruled_out:
                continue
            verdict = matching.verdict(data)
            outcome = verdict.outcome
            if outcome is _MATCH:
                if not pending:
                    return route
                break  # an earlier route may still match; none later can win
            if outcome is _NEED_MORE and not final:
                pending = True
                if verdict.send:
                    probes.append(verdict)
            else:
                undecided_at_limit |= outcome is _NEED_MORE
                died.append(index)
        if not pending:
            if undecided_at_limit and full:
                return Reject(Reason.TOO_LONG, f"still undecided after {limit} bytes")
            if eof:
                return Reject(
                    Reason.NO_MATCH,
                    "the client closed its side before any route matched",
                )
            return Reject(Reason.NO_MATCH, "no route matched")
        return Wait(ruled_out.union(died) if died else ruled_out, tuple(probes))

    def timed_out(self, timeout: float | None) -> Route | Reject:
        """What to do with a connection still undecided after ``timeout`` s."""
        if self.on_timeout is not None:
            return self.on_timeout
        return Reject(Reason.TIMEOUT, f"undecided after {timeout} seconds")
