"""Route targets that record what the detector hands them.

Give a :class:`RecordingFactory` to a route and look at what its protocols
received::

    >>> from twisted.internet.task import Clock
    >>> from twisted.internet.testing import StringTransport
    >>> from txcmux import ProtocolSwitchingFactory, Route, matchers
    >>> from txcmux.testing import RecordingFactory
    >>> echo = RecordingFactory("echo")
    >>> mux = ProtocolSwitchingFactory(
    ...     [Route("echo", matchers.prefix(b"ECHO "), echo)], clock=Clock()
    ... )
    >>> detector = mux.buildProtocol(None)
    >>> detector.makeConnection(StringTransport())
    >>> detector.dataReceived(b"ECHO hi")
    >>> [(p.route, p.received, p.events) for p in echo.built]
    [('echo', b'ECHO hi', ['makeConnection', 'dataReceived'])]
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer


class Recorder(Protocol):
    """A target protocol that records every event and byte it receives.

    ``events`` names the calls in order (``makeConnection``,
    ``dataReceived``, ``connectionLost``, and for
    :class:`HalfCloseRecorder` the half-close events); ``chunks`` holds each
    ``dataReceived`` argument, ``received`` their concatenation;
    ``connected_with`` is the transport it was given and ``lost`` the reason
    passed to ``connectionLost``.
    """

    def __init__(self, route: str) -> None:
        self.route = route
        self.chunks: list[bytes] = []
        self.connected_with: ITransport | None = None
        self.lost: Failure | None = None
        self.events: list[str] = []

    def makeConnection(self, transport: ITransport) -> None:
        self.events.append("makeConnection")
        self.connected_with = transport
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        self.events.append("dataReceived")
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.events.append("connectionLost")
        self.lost = reason

    @property
    def received(self) -> bytes:
        """Every byte received so far."""
        return b"".join(self.chunks)


class RecordingFactory(Factory):
    """Builds :class:`Recorder` protocols for the route named ``route``.

    ``built`` lists them in the order they were built; ``starts`` and
    ``stops`` count ``startFactory`` and ``stopFactory`` calls (a
    ProtocolSwitchingFactory passes its own on to its routes' factories).
    """

    def __init__(self, route: str) -> None:
        self.route = route
        self.built: list[Recorder] = []
        self.starts = 0
        self.stops = 0

    def _make(self) -> Recorder:
        return Recorder(self.route)

    def buildProtocol(self, addr: IAddress | None) -> Recorder:
        protocol = self._make()
        protocol.factory = self
        self.built.append(protocol)
        return protocol

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    """A :class:`Recorder` that also takes half-close events.

    The detector passes a client's half-close on to a target only if it
    provides ``IHalfCloseableProtocol``; this one records
    ``readConnectionLost`` and ``writeConnectionLost``.
    """

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


class HalfCloseRecordingFactory(RecordingFactory):
    """Builds :class:`HalfCloseRecorder` protocols."""

    def _make(self) -> Recorder:
        return HalfCloseRecorder(self.route)
