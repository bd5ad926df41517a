"""A ProtocolSwitchingFactory driven over in-memory connections and a fake clock.

Give it routes (or just their matchers, by name, in priority order), feed it a
client's bytes whole or in pieces, advance its clock, and read what became
of the connection::

    >>> from txcmux import matchers
    >>> from txcmux.testing import CURL_H2C, SwitchHarness, every_split
    >>> harness = SwitchHarness({"web": [matchers.http1(), matchers.http2()]})
    >>> whole = harness.feed(CURL_H2C)
    >>> whole.decision, whole.replayed == CURL_H2C
    ('route web', True)
    >>> all(harness.feed(*pieces) == whole for pieces in every_split(CURL_H2C))
    True
    >>> harness.stats["routed.web"] == len(CURL_H2C)
    True

Step by step, a gRPC client that waits for the server's SETTINGS, and one
that never says anything::

    >>> from txcmux.testing import SETTINGS_ACK, capture
    >>> harness = SwitchHarness({"grpc": matchers.grpc()}, sniff_timeout=2.0)
    >>> client = harness.connect()
    >>> client.send(capture("grpcio-unary.before-settings.bin"))
    >>> client.report().written == matchers.EMPTY_SETTINGS + SETTINGS_ACK
    True
    >>> client.send(capture("grpcio-unary.after-settings.bin"))
    >>> report = client.report()
    >>> report.route, report.replayed.count(SETTINGS_ACK)
    ('grpc', 0)
    >>> silent = harness.connect()
    >>> harness.advance(2.0)
    >>> silent.report().decision, silent.report().closed
    ('rejected timeout', True)
    >>> harness.stats["closed.timeout"]
    1

Every route's factory is replaced by a
:class:`~txcmux.testing.RecordingFactory`, so the report can say which
route got the connection and what its protocol received.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from weakref import WeakSet

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from .. import ProtocolSwitchingFactory, Rejection, Route
from ..matchers import Matcher
from ._recording import Recorder, RecordingFactory


@dataclass(frozen=True)
class ConnectionReport:
    """What had become of one connection when it was looked at.

    ``route`` names the route that got the connection (None while
    undecided, or if it was rejected); ``rejected`` is the reason the
    detector closed it undecided (``no_match``, ``too_long``, ``timeout``,
    ``no_protocol``), and ``rejection`` the whole
    :class:`~txcmux.Rejection` that ``on_error`` was given.  ``replayed``
    is every byte the route's protocol received: the bytes the detector
    buffered, replayed at the switch, then any sent after it.  ``written``
    is what the server side wrote to the client (the SETTINGS frame a gRPC
    matcher asks for, for instance); ``closed`` says whether the connection
    is closed (by the detector, rejecting it, by the route's protocol, or by
    the client).

    Reports compare equal when all of this but ``rejection`` is the same
    (the bytes a rejection saw depend on where the reads were cut), which
    is how a test says that splitting the input changed nothing.
    """

    route: str | None
    rejected: str | None
    replayed: bytes
    written: bytes
    closed: bool
    rejection: Rejection | None = field(default=None, compare=False)

    @property
    def decision(self) -> str:
        """``route <name>``, ``rejected <reason>`` or ``waiting``."""
        if self.route is not None:
            return f"route {self.route}"
        if self.rejected is not None:
            return f"rejected {self.rejected}"
        return "waiting"


class _SocketLikeTransport(StringTransport):
    """A StringTransport that calls ``protocol``, as a TCP connection does."""

    protocol: IProtocol


class InMemoryConnection:
    """One client connection to a :class:`SwitchHarness`'s factory.

    Its transport is a ``StringTransport`` that, like a TCP connection,
    calls whatever protocol its ``protocol`` attribute holds, so the detector
    can hand the connection over as it does on a real socket.
    """

    def __init__(
        self,
        harness: SwitchHarness,
        peer: IAddress | None = None,
        host: IAddress | None = None,
    ) -> None:
        self._harness = harness
        self.transport = _SocketLikeTransport(  # type: ignore[no-untyped-call]
            hostAddress=host, peerAddress=peer
        )
        self._rejections_before = len(harness.rejections)
        self._lost = False
        address: IAddress = self.transport.getPeer()  # type: ignore[no-untyped-call]
        detector: IProtocol = harness.factory.buildProtocol(address)
        self.transport.protocol = detector
        detector.makeConnection(self.transport)
        self._settle()

    @property
    def protocol(self) -> IProtocol:
        """The protocol the transport calls now: the detector, or the target."""
        return self.transport.protocol

    def send(self, *pieces: bytes) -> None:
        """Deliver ``pieces`` from the client, one read each.

        Nothing is delivered once the connection is closed (a Twisted
        transport stops reading when the server side closes it).
        """
        for piece in pieces:
            if self._lost or self.transport.disconnecting:
                break
            self.protocol.dataReceived(piece)
            self._settle()

    def close_write(self) -> None:
        """The client shuts down its sending side (a TCP half-close)."""
        if self._lost or self.transport.disconnecting:
            return
        half_closeable = IHalfCloseableProtocol(self.protocol, None)
        if half_closeable is not None:
            half_closeable.readConnectionLost()
        else:  # what a TCP transport does for a protocol without half-close
            self.transport.loseConnection()
        self._settle()

    def disconnect(self) -> None:
        """The client closes the connection."""
        if not self._lost:
            self._lost = True
            self.protocol.connectionLost(connectionDone)

    def report(self) -> ConnectionReport:
        """What has become of the connection so far."""
        harness = self._harness
        target = self._target()
        new_rejections = harness.rejections[self._rejections_before :]
        rejection = new_rejections[0] if new_rejections else None
        return ConnectionReport(
            route=target.route if target is not None else None,
            rejected=str(rejection.reason) if rejection is not None else None,
            replayed=target.received if target is not None else b"",
            written=self.transport.value(),  # type: ignore[no-untyped-call]
            closed=self._lost or self.transport.disconnecting,
            rejection=rejection,
        )

    def _target(self) -> Recorder | None:
        """The protocol a route built for this connection, if one did."""
        if isinstance(self.protocol, Recorder):
            return self.protocol
        for factory in self._harness.targets.values():
            for built in reversed(factory.built):
                if built.connected_with is self.transport:
                    return built
        return None

    def _settle(self) -> None:
        """Once the server side has closed, tell the protocol, as a reactor would."""
        if self.transport.disconnecting and not self._lost:
            self._lost = True
            self.protocol.connectionLost(connectionDone)


class SwitchHarness:
    """A :class:`~txcmux.ProtocolSwitchingFactory` under test, on a fake clock.

    ``routes`` are :class:`~txcmux.Route` objects, or a mapping from route
    names to a matcher or a sequence of matchers (in priority order).
    ``sniff_timeout``, ``max_sniff_bytes`` and ``on_timeout`` go to the
    factory as they are; its ``clock`` is :attr:`clock` and its ``on_error``
    appends to :attr:`rejections`.  Each route's factory is replaced by a
    :class:`~txcmux.testing.RecordingFactory` (in :attr:`targets`, by route
    name).
    """

    def __init__(
        self,
        routes: Iterable[Route] | Mapping[str, Matcher | Sequence[Matcher]],
        *,
        sniff_timeout: float | None = 5.0,
        max_sniff_bytes: int = 16384,
        on_timeout: str | None = None,
    ) -> None:
        if isinstance(routes, Mapping):
            named = list(routes.items())
        else:
            named = [(route.name, route.matcher) for route in routes]
        #: The clock the factory's timeouts run on; advance it with :meth:`advance`.
        self.clock = Clock()
        #: Every :class:`~txcmux.Rejection` passed to ``on_error``, in order.
        self.rejections: list[Rejection] = []
        #: The recording factory standing in for each route's target.
        self.targets = {name: RecordingFactory(name) for name, _ in named}
        #: The factory under test.
        self.factory = ProtocolSwitchingFactory(
            [Route(name, matcher, self.targets[name]) for name, matcher in named],
            sniff_timeout=sniff_timeout,
            max_sniff_bytes=max_sniff_bytes,
            on_timeout=on_timeout,
            on_error=self.rejections.append,
            clock=self.clock,
        )
        self.factory.doStart()  # type: ignore[no-untyped-call]
        self._connections: WeakSet[InMemoryConnection] = WeakSet()

    @property
    def stats(self) -> Counter[str]:
        """The factory's counters (``accepted``, ``routed.<name>``, ...)."""
        return self.factory.stats

    def connect(
        self, peer: IAddress | None = None, host: IAddress | None = None
    ) -> InMemoryConnection:
        """A new client connection, to feed step by step.

        ``peer`` is the client's address and ``host`` the one it connected
        to, for matchers such as :func:`~txcmux.matchers.remote_ip`; by
        default ``StringTransport``'s, 192.168.1.1 port 54321 and 10.0.0.1
        port 12345.
        """
        connection = InMemoryConnection(self, peer, host)
        self._connections.add(connection)
        return connection

    def feed(
        self,
        *pieces: bytes,
        eof: bool = False,
        peer: IAddress | None = None,
        host: IAddress | None = None,
    ) -> ConnectionReport:
        """Open a connection, send ``pieces`` (one read each), report on it.

        With ``eof`` the client then shuts down its sending side; ``peer``
        and ``host`` are as for :meth:`connect`.
        """
        connection = self.connect(peer, host)
        connection.send(*pieces)
        if eof:
            connection.close_write()
        return connection.report()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the factory's clock (sniff timeouts fire)."""
        self.clock.advance(seconds)
        for connection in list(self._connections):
            connection._settle()


def split_at(data: bytes, *cuts: int) -> list[bytes]:
    """``data`` cut at each of the offsets ``cuts``, without empty pieces.

    >>> split_at(b"abcdef", 2, 4)
    [b'ab', b'cd', b'ef']
    """
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in pairwise(edges) if a < b]


def every_split(data: bytes) -> Iterator[list[bytes]]:
    """``data`` in two pieces, cut at every offset from 1 to ``len(data) - 1``.

    >>> list(every_split(b"abc"))
    [[b'a', b'bc'], [b'ab', b'c']]
    """
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
