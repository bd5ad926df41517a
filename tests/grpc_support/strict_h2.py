"""A strict HTTP/2 gRPC backend that counts the SETTINGS ACKs it receives.

Go's HTTP/2 server answers a SETTINGS ACK it never asked for with a GOAWAY
(PROTOCOL_ERROR).  This Twisted backend does the same, and counts: it sends
exactly one SETTINGS frame, so exactly one ACK may reach it.  It answers any
gRPC call with its request message echoed, which is enough for grpcio's
unary calls.

    factory = StrictGrpcFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    ...
    assert factory.acks == [1] and factory.protocol_errors == 0
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _ACK = 0x4, 0x1


class FrameCounter:
    """Counts SETTINGS ACK frames in a client's byte stream, fed in pieces."""

    def __init__(self) -> None:
        self._buffer = b""
        self._preface_done = False
        self.settings_acks = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if not self._preface_done:
            if len(self._buffer) < len(PREFACE):
                return
            self._buffer = self._buffer[len(PREFACE) :]
            self._preface_done = True
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            if kind == _SETTINGS and flags & _ACK:
                self.settings_acks += 1
            self._buffer = self._buffer[9 + length :]


class StrictGrpc(Protocol):
    """One connection of the strict backend."""

    def __init__(self, factory: StrictGrpcFactory) -> None:
        self.owner = factory
        self.counter = FrameCounter()
        self.conn = H2Connection(H2Configuration(client_side=False))
        self.bodies: dict[int, bytes] = {}
        self.failed = False

    def connectionMade(self) -> None:
        self.conn.initiate_connection()  # our one and only SETTINGS frame
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        if self.failed:
            return
        self.counter.feed(data)
        if self.counter.settings_acks > 1:
            self.failed = True
            self.owner.protocol_errors += 1
            self.conn.close_connection(ErrorCodes.PROTOCOL_ERROR)
            self._flush()
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.bodies[event.stream_id] = b""
            elif isinstance(event, DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, StreamEnded):
                self._answer(event.stream_id)
        self._flush()

    def _answer(self, stream_id: int) -> None:
        body = self.bodies.pop(stream_id)
        self.conn.send_headers(
            stream_id, [(":status", "200"), ("content-type", "application/grpc")]
        )
        self.conn.send_data(stream_id, body)
        self.conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.owner.acks.append(self.counter.settings_acks)


class StrictGrpcFactory(Factory):
    """Builds StrictGrpc connections; ``acks`` has one count per closed one."""

    noisy = False

    def __init__(self) -> None:
        self.acks: list[int] = []
        self.protocol_errors = 0

    def buildProtocol(self, addr: Any) -> StrictGrpc:
        return StrictGrpc(self)
