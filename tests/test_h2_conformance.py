"""HTTP/2 conformance through txcmux, checked with h2 as a strict client.

The cases of h2spec (docs/h2spec.md) that need txcmux's own code, on real
loopback sockets: a client that waits for the ACK of its SETTINGS before it
sends a request, behind a ``grpc()`` route, is answered at once and sees
exactly one ACK per SETTINGS (h2c, through a tls route, and relayed to a
strict backend that sees exactly one ACK of its own SETTINGS too); PING
and a second SETTINGS while the detector sniffs; broken HPACK gets GOAWAY
COMPRESSION_ERROR and a closed connection (through TLS too); a frame over
the maximum size, FRAME_SIZE_ERROR; a flow-control window made negative
by SETTINGS is waited on.  Then, in memory, a property: whatever the
client sends before its first request and however it is split, the target
gets the bytes a direct connection would carry less the client's ACK of
the detector's SETTINGS, and the client gets the frames a direct server
would send, in order, plus the detector's SETTINGS alone.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.matchers import EMPTY_SETTINGS, PREFACE
from txcmux.matchers._http2 import SETTINGS_ACK
from txcmux.relay import RelayFactory
from txcmux.tls import TLSTerminationFactory
from txcmux.web import WebFactory

from .grpc_support.net import listen, wait_until
from .grpc_support.strict_h2 import StrictGrpcFactory
from .tls_support import pki

BODY = b"0123456789" * 10
_SETTINGS, _PING, _GOAWAY = 0x4, 0x6, 0x7
COMPRESSION_ERROR, FRAME_SIZE_ERROR = 0x9, 0x6


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One raw HTTP/2 frame."""
    header = len(payload).to_bytes(3, "big") + bytes([kind, flags])
    return header + stream.to_bytes(4, "big") + payload


def frames(data: bytes) -> list[bytes]:
    """The whole frames in a server's byte stream, raw."""
    found, at = [], 0
    while len(data) - at >= 9:
        end = at + 9 + int.from_bytes(data[at : at + 3], "big")
        if end > len(data):
            break
        found.append(data[at:end])
        at = end
    return found


def settings_acks(data: bytes) -> int:
    return sum(1 for f in frames(data) if f[3] == _SETTINGS and f[4] & 1)


def goaway_errors(data: bytes) -> list[int]:
    return [int.from_bytes(f[13:17], "big") for f in frames(data) if f[3] == _GOAWAY]


class StrictClient(protocol.Protocol):
    """An h2 client that sends nothing but SETTINGS until they are acknowledged.

    ``raw`` is every byte the server sent; ``events`` what h2 made of them.
    """

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.raw = b""
        self.events: list[h2.events.Event] = []
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[Any, defer.Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        if self.conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
            return  # after a GOAWAY h2 refuses more; the raw bytes still count
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.events += self.conn.receive_data(data)
        self.flush()
        self._check()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed.callback(None)
        for _, waiting in self._waiting:
            waiting.errback(AssertionError(f"closed; got {self.raw!r}"))
        self._waiting = []

    def count(self, kind: type) -> int:
        return sum(1 for e in self.events if isinstance(e, kind))

    def until(self, condition: Any) -> defer.Deferred[None]:
        """Fires once ``condition()`` holds (checked on every read)."""
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((condition, waiting))
        self._check()
        return waiting.addTimeout(5, reactor)

    def _check(self) -> None:
        for entry in list(self._waiting):
            if entry[0]():
                self._waiting.remove(entry)
                entry[1].callback(None)

    def acked(self, count: int) -> defer.Deferred[None]:
        return self.until(lambda: self.count(h2.events.SettingsAcknowledged) >= count)

    def get(self, path: bytes = b"/", end_stream: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream,
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", path),
                (b":authority", b"localhost"),
            ],
            end_stream=end_stream,
        )
        self.flush()
        return stream

    def body(self, stream: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream
        )

    def ended(self, stream: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == stream
            for e in self.events
        )


def site() -> Site:
    root = Resource()
    root.putChild(b"", Data(BODY, "text/plain"))
    return Site(root)


class Shapes:
    """A port whose routes are grpc, then web; and one with tls{grpc, web}."""

    def __init__(self) -> None:
        self.web = WebFactory(site())
        grpc = protocol.Factory.forProtocol(protocol.Protocol)  # never chosen here
        inner = [
            Route("grpc", matchers.grpc(), grpc),
            Route("web", [matchers.http1(), matchers.http2()], self.web),
        ]
        files = pki()
        self.tls = TLSTerminationFactory(
            files.server_certificate, files.server_key, inner
        )
        self.mux = ProtocolSwitchingFactory(
            [Route("tls", matchers.tls(), self.tls), *inner], sniff_timeout=60
        )


class StrictClientTests(unittest.TestCase):
    """A strict client behind a grpc() route, on real sockets."""

    timeout = 20

    async def connect(self, tls: bool = False) -> StrictClient:
        shapes = self.shapes = Shapes()
        port = await listen(self, shapes.mux)
        number = port.getHost().port
        endpoint: Any = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", number)
        if tls:
            trust = ssl.Certificate.loadPEM(pki().ca.read_bytes())
            options = ssl.optionsForClientTLS(
                "localhost", trust, acceptableProtocols=[b"h2"]
            )
            endpoint = endpoints.wrapClientTLS(options, endpoint)
        client = StrictClient()
        await endpoints.connectProtocol(endpoint, client)
        self.addCleanup(self.close, client)
        return client

    async def close(self, client: StrictClient) -> None:
        if not client.closed.called and client.transport is not None:
            client.transport.loseConnection()
        await client.closed

    async def _served_at_once(self, tls: bool) -> None:
        client = await self.connect(tls)
        await client.acked(1)  # long before the 60 s sniff timeout
        stream = client.get()
        await client.until(lambda: client.ended(stream))
        self.assertEqual(client.body(stream), BODY)
        # Exactly one ACK of the one SETTINGS sent: the detector's; the
        # Site's, for the same SETTINGS replayed to it, was kept back.
        self.assertEqual(settings_acks(client.raw), 1)
        self.assertEqual(client.count(h2.events.SettingsAcknowledged), 1)
        # The client acknowledged both servers' SETTINGS: the Site saw one.
        self.assertEqual(client.count(h2.events.RemoteSettingsChanged), 2)
        self.assertEqual(self.shapes.web.stats["h2" if tls else "h2c"], 1)

    async def test_a_strict_client_is_answered_at_once_over_h2c(self) -> None:
        await self._served_at_once(tls=False)

    async def test_a_strict_client_is_answered_at_once_through_tls(self) -> None:
        await self._served_at_once(tls=True)

    async def test_ping_and_more_settings_while_sniffing(self) -> None:
        client = await self.connect()
        await client.acked(1)
        client.conn.ping(b"sniffing")
        client.conn.update_settings(
            {h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 9000}
        )
        client.flush()
        await client.acked(2)
        await client.until(lambda: client.count(h2.events.PingAckReceived) == 1)
        stream = client.get()
        await client.until(lambda: client.ended(stream))
        client.conn.ping(b"afterall")  # the Site's own answer, not filtered
        client.flush()
        await client.until(lambda: client.count(h2.events.PingAckReceived) == 2)
        pings = [
            e.ping_data
            for e in client.events
            if isinstance(e, h2.events.PingAckReceived)
        ]
        self.assertEqual(pings, [b"sniffing", b"afterall"])
        self.assertEqual(settings_acks(client.raw), 2)

    async def _broken_hpack(self, tls: bool) -> None:
        client = await self.connect(tls)
        await client.acked(1)
        assert client.transport is not None
        # A header block whose one field is "indexed, index 0": no such entry.
        client.transport.write(frame(0x1, 0x5, 1, b"\x80"))
        await client.closed
        self.assertEqual(goaway_errors(client.raw), [COMPRESSION_ERROR])
        self.assertEqual(self.shapes.web.stats["closed.compression_error"], 1)

    async def test_broken_hpack_is_a_compression_error_over_h2c(self) -> None:
        await self._broken_hpack(tls=False)

    async def test_broken_hpack_is_a_compression_error_through_tls(self) -> None:
        # Twisted's TLS transport waited for its producer before closing.
        await self._broken_hpack(tls=True)

    async def test_a_frame_over_the_maximum_size_is_refused_on_its_header(self) -> None:
        client = await self.connect()
        await client.acked(1)
        assert client.transport is not None
        client.transport.write((16385).to_bytes(3, "big") + b"\x04\x00\x00\x00\x00\x00")
        await client.closed
        self.assertEqual(goaway_errors(client.raw), [FRAME_SIZE_ERROR])
        self.assertEqual(self.shapes.web.stats["closed.frame_too_large"], 1)

    async def test_a_window_made_negative_is_waited_on(self) -> None:
        window = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
        client = await self.connect()
        await client.acked(1)
        client.conn.update_settings({window: 5})
        client.flush()
        await client.acked(2)
        stream = client.get()
        await client.until(lambda: len(client.body(stream)) == 5)
        client.conn.update_settings({window: 3})  # the stream's window: -2
        client.flush()
        await client.acked(3)
        client.conn.increment_flow_control_window(3, stream)  # now 1
        client.flush()
        await client.until(lambda: len(client.body(stream)) == 6)
        client.conn.increment_flow_control_window(1000, stream)
        client.flush()
        await client.until(lambda: client.ended(stream))
        self.assertEqual(client.body(stream), BODY)
        self.assertEqual(settings_acks(client.raw), 3)


class StrictBackendTests(unittest.TestCase):
    """Strict on both sides: a relay to a backend that counts ACKs."""

    timeout = 20

    async def test_each_side_sees_one_ack_per_settings_it_sent(self) -> None:
        strict = StrictGrpcFactory()
        backend = await listen(self, strict)
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={backend.getHost().port}")
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay)])
        port = await listen(self, mux)
        client = StrictClient()
        await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            client,
        )
        await client.acked(1)
        stream = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/x.Y/Z"),
                (b":authority", b"localhost"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        message = b"\x00\x00\x00\x00\x05hello"
        client.conn.send_data(stream, message, end_stream=True)
        client.flush()
        await client.until(lambda: client.ended(stream))
        self.assertEqual(client.body(stream), message)
        client.conn.ping(b"relayed!")  # the backend answers it itself
        client.flush()
        await client.until(lambda: client.count(h2.events.PingAckReceived) == 1)
        self.assertEqual(settings_acks(client.raw), 1)
        assert client.transport is not None
        client.transport.loseConnection()
        await client.closed
        await wait_until(lambda: strict.acks, what="the backend to see the close")
        self.assertEqual(strict.acks, [1])
        self.assertEqual(strict.protocol_errors, 0)


# -- the byte streams, in memory --------------------------------------------------


class H2Server(protocol.Protocol):
    """An h2 server as a target: answers SETTINGS and PINGs, records its input."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False)
        )
        self.received = b""

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.conn.receive_data(data)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())


def direct(client_bytes: bytes) -> bytes:
    """What an h2 server on a connection of its own writes for ``client_bytes``."""
    server = H2Server()
    transport = StringTransport()
    server.makeConnection(transport)
    server.dataReceived(client_bytes)
    return transport.value()


def grpc_headers(grpc: bool) -> bytes:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/x.Y/Z"),
        (":authority", "localhost"),
        ("content-type", "application/grpc" if grpc else "text/plain"),
    ]
    return frame(0x1, 0x4, 1, hpack.Encoder().encode(fields))


before_request = st.lists(
    st.one_of(
        st.builds(
            lambda v: frame(_SETTINGS, 0, 0, b"\x00\x03" + v.to_bytes(4, "big")),
            st.integers(0, 1000),
        ),
        st.binary(min_size=8, max_size=8).map(lambda p: frame(_PING, 0, 0, p)),
        st.integers(1, 1 << 20).map(lambda n: frame(0x8, 0, 0, n.to_bytes(4, "big"))),
        st.binary(max_size=12).map(lambda p: frame(0x20, 0, 0, p)),  # extension
    ),
    max_size=6,
)


class Routes:
    """grpc then web, each target an H2Server, on an in-memory transport."""

    def __init__(self) -> None:
        self.servers: list[H2Server] = []

        def build() -> H2Server:
            server = H2Server()
            self.servers.append(server)
            return server

        target = protocol.Factory.forProtocol(build)  # type: ignore[arg-type]
        self.mux = ProtocolSwitchingFactory(
            [
                Route("grpc", matchers.grpc(), target),
                Route("web", matchers.http2(), target),
            ]
        )
        self.transport = StringTransport()
        detector = self.mux.buildProtocol(None)
        self.transport.protocol = detector  # type: ignore[attr-defined]
        detector.makeConnection(self.transport)

    def feed(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None)
@given(
    opening=before_request,
    ack_at=st.integers(0, 7),
    grpc=st.booleans(),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_both_sides_carry_what_a_direct_connection_would(
    opening: list[bytes], ack_at: int, grpc: bool, cuts: list[int]
) -> None:
    client = PREFACE + b"".join(opening) + grpc_headers(grpc)
    routes = Routes()

    def probed() -> bool:  # the detector wrote its SETTINGS
        return routes.transport.value().startswith(EMPTY_SETTINGS)

    # The client's ACK of the detector's SETTINGS comes once the detector
    # has sent them (after read ``ack_at`` at the earliest), between frames.
    ends = sorted({cut for cut in cuts if 0 < cut < len(client)} | {len(client)})
    boundaries = frame_ends(client)
    fed, acked = 0, False
    for index, end in enumerate(ends):
        if not acked and index > ack_at and probed():
            at = min(b for b in boundaries if b >= fed)
            if at < end:
                if at > fed:
                    routes.feed(client[fed:at])
                    fed = at
                routes.feed(SETTINGS_ACK)
                acked = True
        routes.feed(client[fed:end])
        fed = end
    if not acked and probed():
        routes.feed(SETTINGS_ACK)
    [server] = routes.servers
    if not probed():
        # Decided on the first read: the detector sent nothing, owns nothing.
        assert server.received == client
        assert routes.transport.value() == direct(client)
        return
    # The target: the client's bytes, less the ACK of the detector's SETTINGS.
    assert server.received == client
    # The client: the detector's SETTINGS, then what a direct server sends,
    # each frame once and in its order (some of them sent by the detector).
    seen = frames(routes.transport.value())
    assert seen[0] == EMPTY_SETTINGS
    expected = frames(direct(client))
    assert [f for f in seen[1:] if not is_reply(f)] == [
        f for f in expected if not is_reply(f)
    ]
    assert [f for f in seen[1:] if is_reply(f)] == [f for f in expected if is_reply(f)]


def frame_ends(client: bytes) -> list[int]:
    """Where the client's preface and each of its frames end."""
    ends, at = [len(PREFACE)], len(PREFACE)
    for raw in frames(client[at:]):
        at += len(raw)
        ends.append(at)
    return ends


def is_reply(raw: bytes) -> bool:
    """Whether a server's frame answers one of the client's (SETTINGS or PING ACK)."""
    return raw[3] in (_SETTINGS, _PING) and bool(raw[4] & 1)
