"""The relay's splice(2) path: used between plain sockets, exact, half-close kept."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import pytest
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial import unittest
from zope.interface import implementer

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux._relay import _relay
from txcmux.matchers import EMPTY_SETTINGS, PREFACE
from txcmux.relay import NamedUNIXClientEndpoint, RelayFactory
from txcmux.testing import SETTINGS_ACK

from .grpc_support.net import listen, wait_until

if not sys.platform.startswith("linux") or not hasattr(os, "splice"):
    pytest.skip("splice(2) is a Linux system call", allow_module_level=True)


@implementer(IHalfCloseableProtocol)
class HashSink(protocol.Protocol):
    """Hashes everything until the client half-closes, then answers the digest."""

    def connectionMade(self) -> None:
        self.digest = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(self.digest.hexdigest().encode())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class Sender(protocol.Protocol):
    """Sends its payload, half-closes, and collects the answer."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.answer = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()  # both directions are done now

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.answer)


def send(port: int, payload: bytes) -> defer.Deferred[bytes]:
    """Send ``payload`` to 127.0.0.1:``port``, half-close; fires with the answer."""
    sender = Sender(payload)
    connected = endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), sender
    )
    return connected.addCallback(lambda _: sender.done)


class SpliceTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_bulk_bytes_are_spliced_exactly_and_half_close_is_kept(self):  # type: ignore[no-untyped-def]
        started: list[bool] = []
        transports: list[object] = []
        real_start = _relay._start_pumps

        def recording_start(*arguments):  # type: ignore[no-untyped-def]
            pumps, wrote = real_start(*arguments)
            started.append(pumps is not None)
            transports.extend(end.transport for end in arguments[:2])
            return pumps, wrote

        self.patch(_relay, "_start_pumps", recording_start)
        sink = yield defer.ensureDeferred(
            listen(self, protocol.Factory.forProtocol(HashSink))
        )
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={sink.getHost().port}")
        mux = ProtocolSwitchingFactory(
            [Route("bulk", matchers.prefix(b"BULK "), relay)]
        )
        port = yield defer.ensureDeferred(listen(self, mux))

        payload = b"BULK " + os.urandom(8 * 1024 * 1024)
        answer = yield send(port.getHost().port, payload)
        self.assertEqual(answer, hashlib.sha256(payload).hexdigest().encode())
        self.assertEqual(started, [True])  # this connection went through splice
        self.assertEqual(relay.stats["bytes_up"], len(payload))
        self.assertEqual(relay.stats["bytes_down"], 64)
        # Once both sides are gone the transports have their own methods back.
        yield defer.ensureDeferred(wait_until(lambda: relay.active == 0))
        for transport in transports:
            self.assertNotIn("doRead", vars(transport))
            self.assertNotIn("doWrite", vars(transport))

    @defer.inlineCallbacks
    def test_replay_goes_first_when_the_backend_connects_at_once(self):  # type: ignore[no-untyped-def]
        # A named unix socket connects inside the relay's connectionMade,
        # before the detector replays what it read: the replay must still be
        # the first thing the spliced backend gets.
        firsts: list[bytes] = []
        real_start = _relay._start_pumps

        def recording_start(one, other, first=b""):  # type: ignore[no-untyped-def]
            firsts.append(first)
            return real_start(one, other, first)

        self.patch(_relay, "_start_pumps", recording_start)
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "sink.sock")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        yield defer.ensureDeferred(
            listen(self, protocol.Factory.forProtocol(HashSink), f"unix:{path}")
        )
        relay = RelayFactory(NamedUNIXClientEndpoint(reactor, path, name_dir=directory))
        mux = ProtocolSwitchingFactory(
            [Route("bulk", matchers.prefix(b"BULK "), relay)]
        )
        port = yield defer.ensureDeferred(listen(self, mux))

        payload = b"BULK " + os.urandom(1024 * 1024)
        answer = yield send(port.getHost().port, payload)
        self.assertEqual(answer, hashlib.sha256(payload).hexdigest().encode())
        self.assertEqual(len(firsts), 1)
        self.assertTrue(firsts[0].startswith(b"BULK "), firsts)


class EchoAfterSettings(protocol.Protocol):
    """An HTTP/2 server as far as the start goes: its SETTINGS and the ACK of
    the client's, then every byte it gets echoed back."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if not getattr(self, "greeted", False):
            self.greeted = True
            self.transport.write(EMPTY_SETTINGS + SETTINGS_ACK)
        self.transport.write(data)


class StrictOpener(protocol.Protocol):
    """Sends the preface and SETTINGS, waits for the server's, then a gRPC
    request's HEADERS and ``payload``; collects everything that comes back."""

    def __init__(self, payload: bytes, expected: int) -> None:
        self.payload, self.expected = payload, expected
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(PREFACE + EMPTY_SETTINGS)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        first = not self.received
        self.received += data
        if first:  # the detector's SETTINGS (and its ACK of ours): go on
            self.transport.write(SETTINGS_ACK + GRPC_HEADERS + self.payload)
        if len(self.received) >= self.expected:
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


def _grpc_headers() -> bytes:
    import hpack

    block = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/x.Y/Z"),
         (":authority", "localhost"), ("content-type", "application/grpc")]
    )  # fmt: skip
    return len(block).to_bytes(3, "big") + b"\x01\x04\x00\x00\x00\x01" + block


GRPC_HEADERS = _grpc_headers()


class SpliceAfterTheReplyFilterTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_grpc_route_splices_once_the_reply_filter_is_done(self):  # type: ignore[no-untyped-def]
        # Behind grpc() the detector answered the client's SETTINGS; the
        # backend's own ACK is removed by the reply filter, so the relay
        # cannot splice at first.  Once the filter is done it must.
        started: list[bool] = []
        real_start = _relay._start_pumps

        def recording_start(*arguments):  # type: ignore[no-untyped-def]
            pumps, wrote = real_start(*arguments)
            started.append(pumps is not None)
            return pumps, wrote

        self.patch(_relay, "_start_pumps", recording_start)
        backend = yield defer.ensureDeferred(
            listen(self, protocol.Factory.forProtocol(EchoAfterSettings))
        )
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={backend.getHost().port}")
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay)])
        port = yield defer.ensureDeferred(listen(self, mux))

        payload = os.urandom(4 * 1024 * 1024)
        replayed = PREFACE + EMPTY_SETTINGS + GRPC_HEADERS  # less the client's ACK
        # The detector's SETTINGS and ACK, the backend's SETTINGS (its ACK
        # kept back), then the echo of all the backend got.
        expected = EMPTY_SETTINGS + SETTINGS_ACK + EMPTY_SETTINGS + replayed + payload
        client = StrictOpener(payload, len(expected))
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            client,
        )
        received = yield client.done
        self.assertEqual(
            hashlib.sha256(received).digest(), hashlib.sha256(expected).digest()
        )
        self.assertEqual(started, [False, True])
        yield defer.ensureDeferred(wait_until(lambda: relay.active == 0))
