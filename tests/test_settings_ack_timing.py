"""The ACK of the detector's SETTINGS never reaches a relayed backend.

The hardest case for the detector: the client's request arrives (so the
connection is handed to the relay) before its ACK of the detector's SETTINGS,
and the ACK only comes once the relay's backend connection is up and the
backend has sent SETTINGS of its own.  The detector must still be on the
client's data path then, whatever the relay does to move bytes.
"""

from __future__ import annotations

import hpack
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.matchers import EMPTY_SETTINGS, PREFACE
from txcmux.relay import RelayFactory

from .captures import SETTINGS_ACK
from .grpc_support.net import listen, wait_until
from .grpc_support.strict_h2 import StrictGrpcFactory

ECHO = b"\x00\x00\x00\x00\x0bhello, echo"  # one gRPC message


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes([kind, flags])
    return header + stream.to_bytes(4, "big") + payload


def settings_frames(data: bytes) -> int:
    """How many SETTINGS frames without ACK a server's byte stream holds."""
    count, position = 0, 0
    while len(data) - position >= 9:
        length = int.from_bytes(data[position : position + 3], "big")
        if data[position + 3] == 0x4 and not data[position + 4] & 0x1:
            count += 1
        position += 9 + length
    return count


def settings_acks(data: bytes) -> int:
    """How many SETTINGS ACK frames a server's byte stream holds."""
    count, position = 0, 0
    while len(data) - position >= 9:
        length = int.from_bytes(data[position : position + 3], "big")
        if data[position + 3] == 0x4 and data[position + 4] & 0x1:
            count += 1
        position += 9 + length
    return count


class SlowAcker(protocol.Protocol):
    """An HTTP/2 client that acknowledges SETTINGS only when told to."""

    def __init__(self) -> None:
        self.received = b""
        self.waiting: list[tuple[int, defer.Deferred[None]]] = []
        self.answered: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def settings_seen(self, count: int) -> defer.Deferred[None]:
        """Fires once the server has sent ``count`` SETTINGS frames."""
        seen: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((count, seen))
        self.dataReceived(b"")
        return seen

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if ECHO in self.received and not self.answered.called:
            self.answered.callback(None)
        have = settings_frames(self.received)
        for count, seen in list(self.waiting):
            if have >= count:
                self.waiting.remove((count, seen))
                seen.callback(None)

    def connectionLost(self, reason: object = None) -> None:
        if not self.answered.called:
            self.answered.callback(None)
        self.closed.callback(None)


class LateAckTests(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_an_ack_after_the_backend_connected_is_still_removed(self):  # type: ignore[no-untyped-def]
        strict = StrictGrpcFactory()
        backend = yield defer.ensureDeferred(listen(self, strict))
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={backend.getHost().port}")
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay)])
        port = yield defer.ensureDeferred(listen(self, mux))

        client = SlowAcker()
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            client,
        )
        client.transport.write(PREFACE + frame(0x4, 0, 0, b""))
        yield client.settings_seen(1)  # the detector's SETTINGS, and its ACK
        self.assertEqual(client.received, EMPTY_SETTINGS + SETTINGS_ACK)
        block = hpack.Encoder().encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/x.Y/Z"),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        client.transport.write(frame(0x1, 0x4, 1, block))  # HEADERS, no ACK yet
        yield client.settings_seen(2)  # the backend's: the relay is up
        self.assertEqual(mux.stats["routed.grpc"], 1)
        # Now both ACKs: the first answers the detector's SETTINGS.
        client.transport.write(SETTINGS_ACK + SETTINGS_ACK)
        client.transport.write(frame(0x0, 0x1, 1, ECHO))  # DATA, END_STREAM
        yield client.answered  # the backend echoed the message (or hung up)
        self.assertIn(ECHO, client.received)
        # The backend's ACK of the replayed SETTINGS was kept from the client.
        self.assertEqual(settings_acks(client.received), 1)
        client.transport.loseConnection()
        yield client.closed
        yield defer.ensureDeferred(
            wait_until(lambda: strict.acks, what="the backend to see the close")
        )
        self.assertEqual(strict.acks, [1])
        self.assertEqual(strict.protocol_errors, 0)
