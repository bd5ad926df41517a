"""ProtocolSwitchingFactory: many protocols on one listening port.

::

    from twisted.internet import endpoints, reactor
    from txcmux import ProtocolSwitchingFactory, Route, matchers

    mux = ProtocolSwitchingFactory(
        [
            Route("echo", matchers.prefix(b"ECHO "), echo_factory),
            Route("web", [matchers.http1(), matchers.http2()], web_factory),
            Route("ssh", matchers.ssh(), ssh_factory),
        ],
        sniff_timeout=5.0,
        max_sniff_bytes=16384,
        on_timeout="ssh",
    )
    endpoints.serverFromString(reactor, "tcp:8080").listen(mux)
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory

from ._connections import Connections, Limits, Warnings
from ._deadlines import Deadlines
from ._decision import Decider
from ._detector import Detector, Rejection
from ._errors import ConfigurationError, seconds_argument
from ._histogram import DECISION_BYTES, DECISION_SECONDS, Histogram
from ._log import log
from ._prelude import Prelude
from ._route import Route

#: How many rejections a factory keeps for the status page.
RECENT_REJECTIONS = 20


class ProtocolSwitchingFactory(Factory):
    """A server factory that picks each connection's protocol by its first bytes.

    ``routes`` are tried in order (strict priority: while an earlier route
    needs more bytes, no later route wins).  ``sniff_timeout`` is how many
    seconds a client has to make the decision possible (None: no limit);
    ``max_sniff_bytes`` caps the bytes buffered while deciding; ``on_timeout``
    names the route that gets clients still undecided at the timeout (for
    protocols where the server speaks first), else they are closed;
    ``on_error`` is called with a :class:`Rejection` for every connection
    closed undecided.  ``prelude`` reads a header every connection starts
    with before the routes are asked (see ``txcmux._prelude``).  With
    ``log_decisions`` every decided connection gets one debug line: peer,
    route, bytes seen and time to decide (off by default: a log event costs
    about 4 us, as much as the decision itself).  ``clock`` defaults to the
    global reactor.

    ``limits`` (:class:`~txcmux.Limits`) bound the connections open at
    once; past one a new connection is closed at once, counted, and a
    warning is logged at most every ten seconds per limit.

    ``stats`` counts connections: ``accepted``, ``routed.<route>``,
    ``timeout_fallback``, ``closed.<reason>`` for each
    :class:`~txcmux.Reason`, ``closed.peer`` for clients that left while
    undecided, ``closed.listener`` for connections a wrapping transport
    closed then (:class:`~txcmux.Stat` names the fixed keys), and
    ``limited.<limit>`` for each limit that refused connections.
    ``connections`` are the connections open now (:class:`Connections`),
    ``recent`` the last rejections, newest last.
    """

    def __init__(
        self,
        routes: Iterable[Route],
        sniff_timeout: float | None = 5.0,
        max_sniff_bytes: int = 16384,
        on_timeout: str | None = None,
        on_error: Callable[[Rejection], object] | None = None,
        clock: IReactorTime | None = None,
        prelude: Prelude | None = None,
        log_decisions: bool = False,
        limits: Limits | None = None,
    ) -> None:
        self.routes = tuple(routes)
        if not self.routes:
            raise ConfigurationError(
                "ProtocolSwitchingFactory needs at least one route"
            )
        self._by_name: dict[str, Route] = {}
        for route in self.routes:
            if not isinstance(route, Route):
                raise ConfigurationError(f"expected a txcmux.Route, got {route!r}")
            if route.name in self._by_name:
                raise ConfigurationError(f"two routes are named {route.name!r}")
            self._by_name[route.name] = route
        sniff_timeout = seconds_argument(
            "ProtocolSwitchingFactory", "sniff_timeout", sniff_timeout, off="None"
        )
        if max_sniff_bytes < 1:
            raise ConfigurationError(
                f"max_sniff_bytes must be at least 1, not {max_sniff_bytes!r}"
            )
        if on_timeout is not None and on_timeout not in self._by_name:
            raise ConfigurationError(
                f"on_timeout names route {on_timeout!r}, but the routes are"
                f" {', '.join(repr(n) for n in self._by_name)}"
            )
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.sniff_timeout = sniff_timeout
        self.max_sniff_bytes = max_sniff_bytes
        self.on_timeout = on_timeout
        self.on_error = on_error
        self.prelude = prelude
        self.log_decisions = log_decisions
        self.clock: IReactorTime = clock
        #: The decision step over these routes (``txcmux._decision``).
        self.decider = Decider(
            self.routes,
            max_sniff_bytes,
            None if on_timeout is None else self._by_name[on_timeout],
        )
        #: The sniff timeouts of the connections still undecided (None: no limit).
        self.deadlines = (
            Deadlines(clock, sniff_timeout) if sniff_timeout is not None else None
        )
        self.stats: Counter[str] = Counter()
        #: With :meth:`measure`: how long decisions took, and how many bytes.
        self.decision_seconds: Histogram | None = None
        self.decision_bytes = Histogram(DECISION_BYTES)
        #: Whether each connection's time to decide is taken (for the log or
        #: the histograms).
        self.timing = log_decisions
        #: The connections open now, and the limits on them.
        self.connections = Connections(limits)
        #: Rate-limited warnings for connections refused past a limit.
        self.warnings = Warnings(clock)
        #: The last rejections (at most :data:`RECENT_REJECTIONS`), newest last.
        self.recent: deque[Rejection] = deque(maxlen=RECENT_REJECTIONS)

    def route(self, name: str) -> Route:
        """The route called ``name``."""
        return self._by_name[name]

    def buildProtocol(self, addr: IAddress | None) -> Detector:
        """A detector for one new connection."""
        return Detector(self, addr)  # type: ignore[arg-type]

    def _target_factories(self) -> list[IProtocolFactory]:
        unique: dict[int, IProtocolFactory] = {}
        for route in self.routes:
            unique.setdefault(id(route.factory), route.factory)
        return list(unique.values())

    def startFactory(self) -> None:
        """Start every route's factory (a Site opens its log here)."""
        for factory in self._target_factories():
            factory.doStart()

    def stopFactory(self) -> None:
        """Stop every route's factory."""
        for factory in self._target_factories():
            factory.doStop()

    def measure(self) -> None:
        """Keep histograms of the time and bytes each decision took.

        Taking the time costs about 1 us per connection, so it is off
        until asked for (the admin's metrics ask).
        """
        if self.decision_seconds is None:
            self.decision_seconds = Histogram(DECISION_SECONDS)
        self.timing = True

    def drain(self) -> int:
        """Refuse new connections and close the undecided ones; return how many."""
        connections = self.connections
        connections.draining = True
        undecided = list(connections.undecided)
        for detector in undecided:
            detector.drain()
        return len(undecided)

    def report(self, rejection: Rejection) -> None:
        """Keep a rejection in ``recent``; pass it to ``on_error`` (a hook that
        raises is logged)."""
        self.recent.append(rejection)
        if self.on_error is None:
            return
        try:
            self.on_error(rejection)
        except Exception:
            log.failure("txcmux: the on_error hook raised")

    def __repr__(self) -> str:
        return f"<ProtocolSwitchingFactory routes={[r.name for r in self.routes]}>"
