"""Test doubles that record what the detector hands over."""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


class Recorder(Protocol):
    """Records every event a target protocol receives."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.chunks: list[bytes] = []
        self.connected_with: ITransport | None = None
        self.lost: Failure | None = None
        self.events: list[str] = []

    def makeConnection(self, transport: ITransport) -> None:  # type: ignore[override]
        self.events.append("makeConnection")
        self.connected_with = transport
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.events.append("dataReceived")
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.events.append("connectionLost")
        self.lost = reason

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)


class RecordingFactory(Factory):
    """Builds Recorders and remembers them."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.built: list[Recorder] = []
        self.starts = 0
        self.stops = 0

    def buildProtocol(self, addr: object) -> Recorder:  # type: ignore[override]
        protocol = Recorder(self.route)
        protocol.factory = self
        self.built.append(protocol)
        return protocol

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    """A Recorder that also takes half-close events."""

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


class HalfCloseRecordingFactory(RecordingFactory):
    """Builds HalfCloseRecorders."""

    def buildProtocol(self, addr: object) -> Recorder:  # type: ignore[override]
        protocol = HalfCloseRecorder(self.route)
        protocol.factory = self
        self.built.append(protocol)
        return protocol
