"""The live connections of a listener, and the limits on how many there may be.

A :class:`~txcmux.ProtocolSwitchingFactory` keeps one :class:`Connections`:
every connection it accepts is counted from ``connectionMade`` until it is
closed, whether the detector closed it undecided or the route's protocol
had it for the rest of its life.  The counts are what the limits check
(the ones sslh and HAProxy learned to need on a public port) and what the
metrics and the status page show; the sets of live connections are what a
drain walks::

    >>> limits = Limits(max_connections=2)
    >>> limits.describe()
    'max_connections 2'
    >>> Limits().describe()
    'no limits'

Past a limit a new connection is closed at once: no queue, no waiting
(HAProxy's ``maxconn`` queues in the kernel instead; here the kernel's
backlog is what queues, while accepting pauses only when the process runs
out of file descriptors, see :func:`txcmux._compat.pause_on_accept_errors`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.python.failure import Failure

from ._log import log

if TYPE_CHECKING:
    from ._route import Route


@dataclass(frozen=True)
class Limits:
    """How many connections a listener takes (None: no limit).

    ``max_connections``: open at once, decided or not; ``max_sniffing``:
    still undecided (past it the connection undecided longest is closed to
    make room for the new one, so that a flood of silent clients cannot
    keep new ones out);
    ``max_connections_per_ip``: open at once from one client address (the
    address a PROXY header names, on a listener that reads one).
    """

    max_connections: int | None = None
    max_sniffing: int | None = None
    max_connections_per_ip: int | None = None

    def describe(self) -> str:
        """The limits that are set, for the start-up log."""
        shown = [
            f"{name} {value}" for name, value in vars(self).items() if value is not None
        ]
        return ", ".join(shown) or "no limits"


#: The limit names, as :meth:`Connections.admit` reports them.
MAX_CONNECTIONS = "max_connections"
MAX_SNIFFING = "max_sniffing"
MAX_PER_IP = "max_connections_per_ip"
ROUTE_MAX_CONNECTIONS = "route_max_connections"
#: What :meth:`Connections.admit` says once the listener drains.
DRAINING = "draining"


class RouteLoad:
    """How many connections a route holds now (shared by every listener)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


class Warnings:
    """At most one warning per ``interval`` seconds for each kind of refusal.

    The rest are counted, and the next warning says how many there were: a
    flood gets a few log lines, not one per connection.
    """

    def __init__(self, clock: IReactorTime, interval: float = 10.0) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def warn(self, kind: str, message: str, **fields: Any) -> None:
        """Log ``message`` (a twisted.logger format) unless ``kind`` was just logged."""
        now = self._clock.seconds()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._quiet[kind] += 1
            return
        self._last[kind] = now
        held_back = self._quiet.pop(kind, 0)
        log.warn(
            message + "{also}",
            also=(
                f" ({held_back} more since the last warning like this)"
                if held_back
                else ""
            ),
            limit=kind,
            **fields,
        )


class Connections:
    """A listener's live connections: counts, the limits, and who they are.

    The detector calls :meth:`admit` when a connection is made,
    :meth:`decided` when it hands it to a route, and :meth:`released`
    when it closes it undecided; a handed-over connection is released when
    its protocol's ``connectionLost`` runs (see :meth:`decided`).
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        #: Connections open now, decided or not.
        self.active = 0
        #: Per client address, the connections open now (only with
        #: ``max_connections_per_ip``).
        self.per_ip: Counter[str] = Counter()
        #: The detectors of the connections still undecided.
        self.undecided: dict[Any, None] = {}
        #: The protocols that have the decided connections, and their routes.
        self.decided_protocols: dict[IProtocol, Route] = {}
        #: Set when the service drains: new connections are refused.
        self.draining = False

    @property
    def sniffing(self) -> int:
        """Connections still undecided."""
        return len(self.undecided)

    def admit(self, detector: object, ip: str | None) -> str | None:
        """Count a new connection in; or the name of the limit that refuses it."""
        if self.draining:
            return DRAINING
        limits = self.limits
        if limits.max_connections is not None and self.active >= limits.max_connections:
            return MAX_CONNECTIONS
        most = limits.max_sniffing
        if most is not None and len(self.undecided) >= most:
            # The one that has waited longest makes room: under a flood of
            # silent clients that is a flooder, and a new honest client
            # still gets its few milliseconds to decide.
            next(iter(self.undecided)).shed(MAX_SNIFFING)
        if ip is not None and not self.admit_ip(ip):
            return MAX_PER_IP
        self.active += 1
        self.undecided[detector] = None
        return None

    def admit_ip(self, ip: str) -> bool:
        """Count one more connection from ``ip``, unless it holds its limit."""
        limit = self.limits.max_connections_per_ip
        if limit is None:
            return True
        per_ip = self.per_ip
        if per_ip[ip] >= limit:
            if not per_ip[ip]:
                del per_ip[ip]
            return False
        per_ip[ip] += 1
        return True

    def release_ip(self, ip: str | None) -> None:
        """One connection from ``ip`` fewer."""
        if ip is None or self.limits.max_connections_per_ip is None:
            return
        left = self.per_ip[ip] - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)

    def released(self, detector: object, ip: str | None) -> None:
        """An undecided connection closed (or refused after :meth:`admit`)."""
        if detector in self.undecided:
            del self.undecided[detector]
            self.active -= 1
            self.release_ip(ip)

    def decided(
        self, detector: object, ip: str | None, route: Route, protocol: IProtocol
    ) -> None:
        """``detector``'s connection goes to ``route``'s ``protocol``.

        The protocol's ``connectionLost`` releases the connection when it
        closes: it is replaced, on that one instance, by a :class:`_Release`
        that then calls it, so that nothing stays between the transport and
        the protocol for the rest of the connection's life.
        """
        self.undecided.pop(detector, None)
        try:
            _Release(self, route, ip, protocol)
        except AttributeError:  # a protocol with __slots__: it cannot be followed
            self.active -= 1
            self.release_ip(ip)
            log.warn(
                "txcmux: route {route}: cannot count the connections of {protocol}"
                " (its class has __slots__ and no __dict__)",
                route=route.name,
                protocol=type(protocol).__qualname__,
            )
            return
        route.load.active += 1

    def __iter__(self) -> Iterator[IProtocol]:
        """The protocols of the decided connections open now."""
        return iter(list(self.decided_protocols))


class _Release:
    """What a decided connection's protocol calls as its ``connectionLost``.

    It releases the connection in its :class:`Connections`, then calls the
    protocol's own ``connectionLost``.  When the protocol hands the
    transport on to another (a Site's HTTP/2 chooser to its H2Connection),
    :func:`follow` moves it along, so it is always the protocol the
    transport calls that releases the connection.
    """

    __slots__ = ("connections", "ip", "original", "protocol", "route")

    def __init__(
        self, connections: Connections, route: Route, ip: str | None, protocol: Any
    ) -> None:
        self.connections, self.route, self.ip = connections, route, ip
        self._attach(protocol)
        connections.decided_protocols[protocol] = route

    def _attach(self, protocol: Any) -> None:
        # The original is kept as found: a protocol that proxies attribute
        # access (Twisted's HTTP channel proxy) gets and sets elsewhere.
        original = protocol.connectionLost
        protocol.connectionLost = self
        self.protocol, self.original = protocol, original

    def _detach(self) -> None:
        # Deleting it breaks the cycle protocol -> self -> protocol, so the
        # protocol is freed without the cyclic garbage collector.
        # (contextlib.suppress would cost more than the rest of this.)
        try:  # noqa: SIM105
            del self.protocol.connectionLost
        except AttributeError:
            pass

    def __call__(self, reason: Failure, *args: Any, **options: Any) -> None:
        protocol = self.protocol
        self._detach()
        connections = self.connections
        if connections.decided_protocols.pop(protocol, None) is not None:
            self.route.load.active -= 1
            connections.active -= 1
            connections.release_ip(self.ip)
        self.original(reason, *args, **options)

    def move_to(self, new: Any) -> None:
        """The transport calls ``new`` now: release the connection from there."""
        old = self.protocol
        self._detach()
        route = self.connections.decided_protocols.pop(old, None)
        try:
            self._attach(new)
        except AttributeError:  # __slots__: release from the old one, as before
            self._attach(old)
            new = old
        if route is not None:
            self.connections.decided_protocols[new] = route


def follow(current: object, new: object) -> None:
    """The transport calls ``new`` where it called ``current``: if
    ``current``'s connection is counted, count it as ``new``'s."""
    release = getattr(current, "connectionLost", None)
    if type(release) is _Release:
        release.move_to(new)
