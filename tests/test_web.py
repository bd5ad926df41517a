"""Tests for txcmux.web: one Site over HTTP/1.1, h2c and h2 (ALPN) behind txcmux.

In-memory tests drive WebFactory (alone and behind the detector) with an h2
client connection from the ``h2`` library over a StringTransport that, like
a TCP connection, calls ``transport.protocol`` on every read.  Real-socket
tests put one Site behind a ProtocolSwitchingFactory on 127.0.0.1 and talk to
it with curl, h2load and a Twisted TCP client.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import http
from twisted.web._http2 import H2Connection
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import directlyProvides

from txcmux import ConfigurationError, ProtocolSwitchingFactory, Route, matchers
from txcmux._web._channel import _ChannelChooser, _unwrapped
from txcmux.matchers import EMPTY_SETTINGS, PREFACE
from txcmux.matchers._http2 import SETTINGS_ACK
from txcmux.web import WebFactory, http1_channel

from .logs import captured_logs

PEER = IPv4Address("TCP", "10.0.0.7", 51234)
_SETTINGS, _ACK = 0x4, 0x1


# -- a small site ------------------------------------------------------------


class Info(Resource):
    """GET: who asked, and how; POST: the size and SHA-256 of the body."""

    isLeaf = True

    def __init__(self, name: str = "site") -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Request) -> bytes:
        address = request.getClientAddress()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "site": self.name,
                "host": getattr(address, "host", None),
                "port": getattr(address, "port", None),
                "secure": request.isSecure(),
                "protocol": request.clientproto.decode(),
                "request_class": type(request).__name__,
            }
        ).encode()

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        ).encode()


class TaggedRequest(Request):
    """A request class a Site may bring; served over both protocols."""


# -- in-memory plumbing ------------------------------------------------------


class Transport(StringTransport):
    """A StringTransport that calls ``protocol`` on each read, as TCP does."""

    def __init__(
        self,
        negotiated: bytes | None = None,
        secure: bool = False,
    ) -> None:
        super().__init__(peerAddress=PEER)
        self.protocol: Any = None
        if negotiated is not None:
            self.negotiatedProtocol = negotiated
        if secure:
            directlyProvides(self, ISSLTransport)

    def setTcpNoDelay(self, enabled: bool) -> None:
        """ISSLTransport extends ITCPTransport; HTTP/2 asks for no delay."""

    def connect(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def receive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        data = self.value()
        self.clear()
        return data


class H2Client:
    """An HTTP/2 client connection from the h2 library, with its responses."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.settings_received = 0

    def preface(self) -> bytes:
        self.conn.initiate_connection()
        return bytes(self.conn.data_to_send())

    def get(self, path: bytes, authority: bytes = b"example") -> tuple[int, bytes]:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream,
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", authority),
                (b":path", path),
            ],
            end_stream=True,
        )
        return stream, bytes(self.conn.data_to_send())

    def receive(self, data: bytes) -> bytes:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.headers[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] = (
                    self.bodies.get(event.stream_id, b"") + event.data
                )
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_received += 1
        return bytes(self.conn.data_to_send())

    def json(self, stream: int) -> dict[str, Any]:
        assert stream in self.ended, f"stream {stream} did not end"
        assert self.headers[stream][b":status"] == b"200"
        result: dict[str, Any] = json.loads(self.bodies[stream])
        return result


def frames(data: bytes) -> list[tuple[int, int, int]]:
    """(type, flags, length) of each frame in a client stream after the preface."""
    assert data.startswith(PREFACE)
    found = []
    position = len(PREFACE)
    while position + 9 <= len(data):
        length = int.from_bytes(data[position : position + 3], "big")
        found.append((data[position + 3], data[position + 4], length))
        position += 9 + length
    assert position == len(data), "the stream ends inside a frame"
    return found


def settings_acks(data: bytes) -> int:
    return sum(
        1 for kind, flags, _ in frames(data) if kind == _SETTINGS and flags & _ACK
    )


def flush(transport: Transport, clock: Clock, client: H2Client) -> None:
    """Move bytes both ways until neither side has anything to say."""
    for _ in range(50):
        clock.advance(0)
        reply = client.receive(transport.take())
        if not reply:
            return
        transport.receive(reply)
    raise AssertionError("the connection did not settle")


def http1_request(path: bytes = b"/info", extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: example\r\n" + extra + b"\r\n"


def http1_json(response: bytes) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    result: dict[str, Any] = json.loads(body)
    return result


def temp_path(case: unittest.TestCase, name: str) -> str:
    """A path in a fresh directory outside the checkout, removed after the test."""
    directory = tempfile.mkdtemp(prefix="txcmux-web-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, name)


class PerConnectionSite(Site):
    """A Site whose buildProtocol changes each channel (a 3 s idle timeout)."""

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.timeOut = 3
        return channel


def make_site(clock: Clock, name: str = "site", **kwargs: Any) -> Site:
    return Site(Info(name), reactor=clock, **kwargs)


# -- WebFactory alone ---------------------------------------------------------


class WebFactoryTests(unittest.TestCase):
    """WebFactory on an in-memory transport, without the detector."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = make_site(self.clock)
        self.web = WebFactory(self.site)
        self.addCleanup(self.assert_no_timers)

    def connect(self, transport: Transport | None = None) -> Transport:
        transport = transport or Transport()
        protocol = self.web.buildProtocol(PEER)
        assert protocol is not None
        transport.connect(protocol)
        self.addCleanup(
            lambda: transport.protocol.connectionLost(Failure(ConnectionError()))
        )
        return transport

    def assert_no_timers(self) -> None:
        """Closed connections leave no timer behind (once the loop has run)."""
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_http11_becomes_the_sites_channel(self) -> None:
        """HTTP/1.1 gets the Site's own HTTPChannel, called by the transport."""
        transport = self.connect()
        transport.receive(http1_request())
        self.assertIsInstance(transport.protocol, http.HTTPChannel)
        self.assertIs(transport.producer, transport.protocol)
        self.assertIs(transport.protocol.site, self.site)
        body = http1_json(transport.take())
        self.assertEqual(body["protocol"], "HTTP/1.1")
        self.assertEqual((body["host"], body["port"]), ("10.0.0.7", 51234))
        self.assertFalse(body["secure"])
        self.assertEqual(self.web.stats["http/1.1"], 1)

    def test_h2c_becomes_h2connection(self) -> None:
        """The preface gets Twisted's H2Connection, set up as Twisted does."""
        transport = self.connect()
        client = H2Client()
        stream, request = client.get(b"/info")
        transport.receive(client.preface() + request)
        connection = transport.protocol
        self.assertIsInstance(connection, H2Connection)
        self.assertIs(transport.producer, connection)
        self.assertTrue(transport.streaming)
        self.assertIs(connection.site, self.site)
        self.assertIs(connection.factory, self.site)
        self.assertIs(connection.requestFactory, self.site.requestFactory)
        self.assertEqual(connection.timeOut, self.site.timeOut)
        self.assertEqual(connection.callLater, self.clock.callLater)
        flush(transport, self.clock, client)
        body = client.json(stream)
        self.assertEqual(body["protocol"], "HTTP/2")
        self.assertEqual((body["host"], body["port"]), ("10.0.0.7", 51234))
        self.assertFalse(body["secure"])
        self.assertEqual(self.web.stats["h2c"], 1)

    def test_h2c_byte_by_byte(self) -> None:
        """A preface split at every byte still makes an HTTP/2 connection."""
        transport = self.connect()
        client = H2Client()
        stream, request = client.get(b"/info")
        for byte in client.preface() + request:
            transport.receive(bytes([byte]))
        flush(transport, self.clock, client)
        self.assertEqual(client.json(stream)["protocol"], "HTTP/2")

    def test_p_of_post_is_not_the_preface(self) -> None:
        """A lone "P" waits; "PO" is HTTP/1.1."""
        transport = self.connect()
        transport.receive(b"P")
        self.assertIsInstance(transport.protocol, _ChannelChooser)
        transport.receive(
            b"OST /info HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        )
        self.assertIsInstance(transport.protocol, http.HTTPChannel)
        self.assertEqual(http1_json(transport.take())["size"], 3)

    def test_alpn_h2_chooses_http2_and_is_secure(self) -> None:
        """negotiatedProtocol == b"h2" picks HTTP/2; requests are secure."""
        transport = self.connect(Transport(negotiated=b"h2", secure=True))
        client = H2Client()
        preface = client.preface()
        transport.receive(preface[:5])  # too short to tell by the bytes
        self.assertIsInstance(transport.protocol, H2Connection)
        stream, request = client.get(b"/info")
        transport.receive(preface[5:] + request)
        flush(transport, self.clock, client)
        body = client.json(stream)
        self.assertTrue(body["secure"])
        self.assertEqual(body["protocol"], "HTTP/2")
        self.assertEqual(self.web.stats["h2"], 1)

    def test_alpn_h2_ignores_the_bytes(self) -> None:
        """After ALPN h2, bytes that are not HTTP/2 end the connection."""
        transport = self.connect(Transport(negotiated=b"h2", secure=True))
        transport.receive(http1_request())
        self.assertIsInstance(transport.protocol, H2Connection)
        self.assertTrue(transport.disconnecting)

    def test_alpn_http11_is_secure(self) -> None:
        """ALPN http/1.1 over TLS: the HTTP/1.1 channel, secure requests."""
        transport = self.connect(Transport(negotiated=b"http/1.1", secure=True))
        transport.receive(http1_request())
        body = http1_json(transport.take())
        self.assertTrue(body["secure"])
        self.assertEqual(body["protocol"], "HTTP/1.1")

    def test_site_request_factory_serves_both_protocols(self) -> None:
        """The Site's requestFactory builds the requests of both protocols."""
        site = make_site(self.clock, requestFactory=TaggedRequest)
        self.web = WebFactory(site)
        one = self.connect()
        one.receive(http1_request())
        self.assertEqual(http1_json(one.take())["request_class"], "TaggedRequest")
        two = self.connect()
        client = H2Client()
        stream, request = client.get(b"/info")
        two.receive(client.preface() + request)
        flush(two, self.clock, client)
        self.assertEqual(client.json(stream)["request_class"], "TaggedRequest")

    def test_channel_settings_come_from_the_sites_channel(self) -> None:
        """What Site.buildProtocol set on its channel is what HTTP/2 gets."""

        self.web = WebFactory(PerConnectionSite(Info(), reactor=self.clock))
        transport = self.connect()
        transport.receive(H2Client().preface())
        self.assertEqual(transport.protocol.timeOut, 3)
        self.clock.advance(3)
        self.assertTrue(transport.disconnecting)

    def test_site_timeout_closes_idle_h2c(self) -> None:
        """The Site's timeOut and reactor time out an idle h2c connection."""
        self.web = WebFactory(make_site(self.clock, timeout=7))
        transport = self.connect()
        client = H2Client()
        transport.receive(client.preface())
        self.clock.advance(6.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        client.receive(transport.take())
        self.assertEqual(client.conn.state_machine.state.name, "CLOSED")

    def test_undecided_connection_times_out(self) -> None:
        """Bytes that might still be the preface wait at most timeOut seconds."""
        self.web = WebFactory(make_site(self.clock, timeout=5))
        transport = self.connect()
        transport.receive(b"PRI * HTTP")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        with captured_logs() as lines:
            self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.web.stats["closed.timeout"], 1)
        [line] = lines
        self.assertIn("10.0.0.7", line)
        self.assertIn("no request within the Site's timeOut", line)
        self.assertIn("10 bytes seen", line)
        transport.receive(b"/2.0\r\n")  # late bytes are dropped, not parsed
        self.assertEqual(transport.value(), b"")

    def test_header_timeout_answers_408_to_a_trickled_header_block(self) -> None:
        """A header block trickled a byte at a time, each byte well inside
        the Site's timeOut, still has header_timeout from its first byte:
        then 408, a close, a count and one log line."""
        self.web = WebFactory(make_site(self.clock, timeout=60), header_timeout=10)
        transport = self.connect()
        request = http1_request()
        with captured_logs() as lines:
            trickled = request[:-3]  # all but the blank line's end
            for byte in trickled:
                transport.receive(bytes([byte]))
                self.clock.advance(9.9 / len(trickled))
            self.assertFalse(transport.disconnecting)
            self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout"))
        self.assertIn(b"Connection: close", transport.value())
        self.assertEqual(self.web.stats["closed.header_timeout"], 1)
        [line] = [line for line in lines if "408" in line]
        self.assertIn("10.0.0.7", line)
        self.assertIn("within 10 s", line)

    def test_header_timeout_runs_per_request_not_per_connection(self) -> None:
        """Keep-alive requests, each sent quickly, are served however long
        the connection lives; the time between requests is the Site's."""
        self.web = WebFactory(make_site(self.clock, timeout=60), header_timeout=5)
        transport = self.connect()
        for _ in range(4):
            transport.receive(http1_request()[:10])
            self.clock.advance(4)
            transport.receive(http1_request()[10:])
            self.assertEqual(http1_json(transport.take())["protocol"], "HTTP/1.1")
            self.clock.advance(30)  # idle between requests: not this timer
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.web.stats["closed.header_timeout"], 0)
        # Pipelined: the second request waits in the buffer, then is served.
        transport.receive(http1_request() + http1_request())
        self.clock.advance(0)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 2)
        self.clock.advance(50)
        self.assertFalse(transport.disconnecting)

    def test_header_timeout_off_leaves_twisted_alone(self) -> None:
        for off in (0, None):
            self.web = WebFactory(make_site(self.clock, timeout=60), header_timeout=off)
            transport = self.connect()
            transport.receive(b"GET /info HT")
            self.clock.advance(59)
            self.assertFalse(transport.disconnecting)
            transport.protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(WebFactory(self.site).header_timeout, 60)
        for wrong in (-1, "60", True, float("inf")):
            with self.assertRaises(ConfigurationError) as raised:
                WebFactory(self.site, header_timeout=wrong)  # type: ignore[arg-type]
            self.assertIn("header_timeout", str(raised.exception))

    def test_header_timeout_holds_for_a_sites_own_channel(self) -> None:
        """A Site with a protocol of its own (Twisted's ALPN-choosing proxy
        as built by a subclass) gets the same deadline."""

        class OwnSite(Site):
            def buildProtocol(self, addr: Any) -> Any:
                return super().buildProtocol(addr)

        self.web = WebFactory(
            OwnSite(Info("own"), reactor=self.clock), header_timeout=3
        )
        transport = self.connect()
        transport.receive(b"GET /info HTTP/1.1\r\n")
        self.clock.advance(3.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.web.stats["closed.header_timeout"], 1)

    def test_http2_false_serves_http11_and_closes_h2c(self) -> None:
        """http2=False: HTTP/1.1 works; the preface is logged and closed."""
        self.web = WebFactory(self.site, http2=False)
        one = self.connect()
        one.receive(http1_request())
        self.assertEqual(http1_json(one.take())["protocol"], "HTTP/1.1")
        two = self.connect()
        with captured_logs() as lines:
            two.receive(H2Client().preface())
        self.assertTrue(two.disconnecting)
        [line] = lines
        self.assertIn("10.0.0.7", line)
        self.assertIn("h2c but http2=False", line)
        self.assertEqual(two.value(), b"")
        self.assertEqual(self.web.stats["closed.http2_disabled"], 1)

    def test_forwarding_transport(self) -> None:
        """A transport that cannot be re-pointed still gets a working channel."""
        transport = StringTransport(peerAddress=PEER)
        protocol = self.web.buildProtocol(PEER)
        assert protocol is not None
        protocol.makeConnection(transport)
        protocol.dataReceived(http1_request())
        self.assertEqual(http1_json(transport.value())["protocol"], "HTTP/1.1")
        protocol.connectionLost(Failure(ConnectionError("over")))


class ConstructionTests(unittest.TestCase):
    """What WebFactory accepts, and how it fails."""

    def test_resource_gets_a_site(self) -> None:
        clock = Clock()
        resource = Info()
        web = WebFactory(resource, reactor=clock)
        self.assertIsInstance(web.site, Site)
        self.assertIs(web.site.resource, resource)
        self.assertIs(web.site.reactor, clock)

    def test_site_with_another_reactor(self) -> None:
        site = make_site(Clock())
        self.assertIs(WebFactory(site, reactor=site.reactor).site, site)
        with self.assertRaises(ConfigurationError):
            WebFactory(site, reactor=Clock())

    def test_not_a_site(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            WebFactory(object())  # type: ignore[arg-type]
        self.assertIn("Site or an IResource", str(caught.exception))

    def test_http2_unavailable(self) -> None:
        """Without Twisted's HTTP/2, a ConfigurationError says what to do."""
        self.patch(http, "H2_ENABLED", False)
        with self.assertRaises(ConfigurationError) as caught:
            WebFactory(make_site(Clock()))
        self.assertIn("H2_ENABLED", str(caught.exception))
        self.assertIn("twisted[http2]", str(caught.exception))
        self.assertIsInstance(WebFactory(make_site(Clock()), http2=False), WebFactory)

    def test_h2connection_changed(self) -> None:
        """A Twisted whose private H2Connection changed shape is refused early."""
        import twisted.web._http2

        class Changed(Protocol):
            def __init__(self) -> None:
                pass

        self.patch(twisted.web._http2, "H2Connection", Changed)
        with self.assertRaises(ConfigurationError) as caught:
            WebFactory(make_site(Clock()))
        message = str(caught.exception)
        for missing in ("site", "timeOut", "IPushProducer", "__init__(reactor)"):
            self.assertIn(missing, message)

    def test_start_and_stop_reach_the_site(self) -> None:
        """doStart/doStop through ProtocolSwitchingFactory open and close the log."""
        clock = Clock()
        site = make_site(clock)
        site.logPath = temp_path(self, "access.log")
        web = WebFactory(site)
        mux = ProtocolSwitchingFactory(
            [Route("web", [matchers.http1(), matchers.http2()], web)], clock=clock
        )
        mux.doStart()
        self.assertEqual(site.numPorts, 1)
        self.assertIsNotNone(site._logFile)
        mux.doStop()
        self.assertEqual(site.numPorts, 0)
        self.assertIsNone(site._logFile)
        self.assertEqual(clock.getDelayedCalls(), [])


# -- behind the detector -----------------------------------------------------


class DetectorTests(unittest.TestCase):
    """WebFactory behind ProtocolSwitchingFactory, on in-memory transports."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = make_site(self.clock)
        self.web = WebFactory(self.site)
        self.received: dict[int, bytes] = {}
        original = H2Connection.dataReceived

        def recording(connection: H2Connection, data: bytes) -> None:
            key = id(connection)
            self.received[key] = self.received.get(key, b"") + data
            original(connection, data)

        self.patch(H2Connection, "dataReceived", recording)

    def acks_received(self) -> list[int]:
        """How many SETTINGS ACKs each H2Connection received."""
        return [settings_acks(data) for data in self.received.values()]

    def mux(self, *routes: Route) -> ProtocolSwitchingFactory:
        grpc = Route("grpc", matchers.grpc(), Factory.forProtocol(Protocol))
        web = Route("web", [matchers.http1(), matchers.http2()], self.web)
        return ProtocolSwitchingFactory(routes or (grpc, web), clock=self.clock)

    def connect(
        self, mux: ProtocolSwitchingFactory, transport: Transport | None = None
    ) -> Transport:
        transport = transport or Transport()
        transport.connect(mux.buildProtocol(PEER))
        self.addCleanup(
            lambda: transport.protocol.connectionLost(Failure(ConnectionError()))
        )
        return transport

    def test_ack_of_detector_settings_never_reaches_h2connection(self) -> None:
        """grpc route first: SETTINGS while sniffing, ACK before HEADERS (grpcio)."""
        mux = self.mux()
        transport = self.connect(mux)
        client = H2Client()
        transport.receive(client.preface())
        self.assertEqual(transport.take(), EMPTY_SETTINGS + SETTINGS_ACK)
        ack = client.receive(EMPTY_SETTINGS)
        stream, request = client.get(b"/info")
        transport.receive(ack + request)
        self.assertEqual(mux.stats["routed.web"], 1)
        flush(transport, self.clock, client)
        self.assertEqual(client.json(stream)["protocol"], "HTTP/2")
        second, request = client.get(b"/info?again")
        transport.receive(request)
        flush(transport, self.clock, client)
        self.assertEqual(client.json(second)["protocol"], "HTTP/2")
        self.assertEqual(client.settings_received, 2)  # the detector's, Twisted's
        self.assertEqual(self.acks_received(), [1])
        self.assertIsInstance(transport.protocol, H2Connection)
        self.assertIs(transport.producer, transport.protocol)

    def test_ack_after_handoff(self) -> None:
        """HEADERS before the ACK (curl): the ACK is dropped after the handoff.

        Until it has gone by, the detector forwards to the chooser; then the
        transport is pointed at the chooser, and on its next read at the
        H2Connection.
        """
        mux = self.mux()
        transport = self.connect(mux)
        client = H2Client()
        transport.receive(client.preface())
        sent_while_sniffing = transport.take()
        self.assertEqual(sent_while_sniffing, EMPTY_SETTINGS + SETTINGS_ACK)
        stream, request = client.get(b"/info")
        transport.receive(request)  # HEADERS: no gRPC, the web route takes it
        self.assertNotIsInstance(transport.protocol, (H2Connection, _ChannelChooser))
        self.clock.advance(0)
        reply = client.receive(sent_while_sniffing + transport.take())
        self.assertEqual(settings_acks(PREFACE + reply), 2)
        ours, rest = reply[:9], reply[9:]
        self.assertEqual(ours, b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        for byte in ours:  # the detector's ACK, split at every byte
            transport.receive(bytes([byte]))
        self.assertIsInstance(transport.protocol, _ChannelChooser)
        transport.receive(rest)
        self.assertIsInstance(transport.protocol, H2Connection)
        flush(transport, self.clock, client)
        self.assertEqual(client.json(stream)["protocol"], "HTTP/2")
        second, request = client.get(b"/info?again")
        transport.receive(request)
        self.assertIsInstance(transport.protocol, H2Connection)
        flush(transport, self.clock, client)
        self.assertEqual(client.json(second)["protocol"], "HTTP/2")
        self.assertEqual(self.acks_received(), [1])

    def count_choosers(self) -> list[_ChannelChooser]:
        """Every _ChannelChooser built from now on."""
        built: list[_ChannelChooser] = []
        original = _ChannelChooser.__init__

        def counting(chooser: _ChannelChooser, *args: Any) -> None:
            built.append(chooser)
            original(chooser, *args)

        self.patch(_ChannelChooser, "__init__", counting)
        return built

    def test_http11_goes_straight_to_the_sites_channel(self) -> None:
        """The detector's bytes say HTTP/1.1: no second look, no second timer."""
        choosers = self.count_choosers()
        built = []
        self.site.buildProtocol = built.append  # type: ignore[method-assign]
        transport = self.connect(self.mux())
        transport.receive(http1_request())
        self.assertEqual(built, [])  # no ALPN-switching proxy built and dropped
        self.assertIs(type(transport.protocol), http.HTTPChannel)
        self.assertIs(transport.producer, transport.protocol)
        self.assertEqual(http1_json(transport.take())["protocol"], "HTTP/1.1")
        self.assertEqual(choosers, [])
        self.assertEqual(self.web.stats["http/1.1"], 1)
        # Left on the clock: the channel's own idle timeout, and the header
        # deadline's look (which will find no request being read, and stop).
        calls = {c.func.__name__: c.getTime() for c in self.clock.getDelayedCalls()}
        self.assertEqual(
            calls,
            {
                "__timedOut": self.site.timeOut,
                "_look": self.web.header_timeout,
            },
        )

    def count_timers(self) -> list[_ChannelChooser]:
        """Every _ChannelChooser that starts its timer from now on."""
        started: list[_ChannelChooser] = []
        original = _ChannelChooser._start_timer

        def counting(chooser: _ChannelChooser) -> None:
            started.append(chooser)
            original(chooser)

        self.patch(_ChannelChooser, "_start_timer", counting)
        return started

    def test_header_timeout_holds_behind_the_detector(self) -> None:
        """The channel the detector hands the connection to directly gets the
        deadline too: the request line decides, the headers never end."""
        self.web = WebFactory(self.site, header_timeout=4)
        transport = self.connect(self.mux())
        transport.receive(b"GET /info HTTP/1.1\r\n")
        self.assertIsInstance(transport.protocol, http.HTTPChannel)
        for _ in range(3):
            self.clock.advance(1)
            transport.receive(b"X")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertEqual(self.web.stats["closed.header_timeout"], 1)
        # A whole request in time is served, and leaves no timer behind.
        transport = self.connect(self.mux())
        transport.receive(http1_request())
        self.assertEqual(http1_json(transport.take())["protocol"], "HTTP/1.1")
        transport.protocol.connectionLost(Failure(ConnectionError()))
        self.clock.advance(0)
        self.assertEqual(
            [c for c in self.clock.getDelayedCalls() if c.getTime() < 60], []
        )

    def test_h2c_behind_the_detector_is_chosen_as_on_its_own_port(self) -> None:
        """The preface goes through the chooser, which needs no timer."""
        choosers = self.count_choosers()
        timers = self.count_timers()
        transport = self.connect(self.mux())
        client = H2Client()
        stream, request = client.get(b"/info")
        transport.receive(client.preface() + request)
        flush(transport, self.clock, client)
        self.assertEqual(client.json(stream)["protocol"], "HTTP/2")
        self.assertEqual(len(choosers), 1)
        self.assertEqual(timers, [])
        self.assertEqual(self.web.stats["h2c"], 1)

    def test_alpn_h2_behind_the_detector_wins_over_the_bytes(self) -> None:
        """ALPN said h2 but HTTP/1.1 arrives: HTTP/2 it is (and it fails)."""
        transport = self.connect(self.mux(), Transport(negotiated=b"h2", secure=True))
        transport.receive(http1_request())
        self.assertIsInstance(transport.protocol, H2Connection)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.web.stats["h2"], 1)

    def test_alpn_http11_behind_the_detector_is_secure(self) -> None:
        transport = self.connect(
            self.mux(), Transport(negotiated=b"http/1.1", secure=True)
        )
        transport.receive(http1_request())
        self.assertIs(type(transport.protocol), http.HTTPChannel)
        body = http1_json(transport.take())
        self.assertTrue(body["secure"])
        self.assertEqual(body["protocol"], "HTTP/1.1")

    def test_a_site_with_its_own_build_protocol_keeps_it(self) -> None:
        """A Site subclass's buildProtocol still makes the HTTP/1.1 channel."""

        self.web = WebFactory(PerConnectionSite(Info(), reactor=self.clock))
        transport = self.connect(self.mux())
        transport.receive(http1_request())
        self.assertIs(type(transport.protocol), http.HTTPChannel)
        self.assertEqual(transport.protocol.timeOut, 3)
        self.assertEqual(http1_json(transport.take())["protocol"], "HTTP/1.1")

    def test_bytes_that_may_still_be_the_preface_wait_for_the_site_timeout(
        self,
    ) -> None:
        """A route matched part of the preface: WebFactory waits, then closes."""
        self.web = WebFactory(make_site(self.clock, timeout=5))
        mux = self.mux(Route("web", matchers.prefix(b"PRI"), self.web))
        timers = self.count_timers()
        transport = self.connect(mux)
        transport.receive(b"PRI * HTTP")
        self.assertIsInstance(transport.protocol, _ChannelChooser)
        self.assertEqual(len(timers), 1)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.web.stats["closed.timeout"], 1)

    def test_http1_channel_is_the_channel_site_build_protocol_makes(self) -> None:
        """The same attributes, with the same values, as Twisted's own."""
        site = make_site(self.clock, requestFactory=TaggedRequest, timeout=7)
        ours = vars(http1_channel(site))
        twisteds = vars(_unwrapped(site.buildProtocol(PEER)))
        self.assertIs(ours["site"], site)
        self.assertEqual(ours["timeOut"], 7)
        self.assertEqual(ours, twisteds)

    def test_http2_header_routes_by_authority(self) -> None:
        """http2_header(":authority", ...) picks between two Sites."""
        other = WebFactory(make_site(self.clock, "other"))
        mux = self.mux(
            Route("other", matchers.http2_header(":authority", "other.example"), other),
            Route("web", [matchers.http1(), matchers.http2()], self.web),
        )
        for authority, expected in ((b"other.example", "other"), (b"x", "site")):
            transport = self.connect(mux)
            client = H2Client()
            stream, request = client.get(b"/info", authority=authority)
            transport.receive(client.preface() + request)
            flush(transport, self.clock, client)
            self.assertEqual(client.json(stream)["site"], expected)
        self.assertEqual(self.acks_received(), [1, 1])

    def test_http1_header_routes_websocket_elsewhere(self) -> None:
        """http1_header("upgrade", "websocket") takes upgrades; the rest is web."""
        mux = self.mux(
            Route(
                "websocket",
                matchers.http1_header("upgrade", "websocket"),
                Factory.forProtocol(WebSocketStandIn),
            ),
            Route("web", [matchers.http1(), matchers.http2()], self.web),
        )
        one = self.connect(mux)
        one.receive(
            http1_request(extra=b"Upgrade: WebSocket\r\nConnection: upgrade\r\n")
        )
        self.assertIn(b"websocket route", one.value())
        two = self.connect(mux)
        two.receive(http1_request(extra=b"Upgrade: h2c\r\n"))
        self.assertEqual(http1_json(two.value())["protocol"], "HTTP/1.1")
        self.assertEqual(mux.stats["routed.websocket"], 1)
        self.assertEqual(mux.stats["routed.web"], 1)


# -- other routes for the real-socket tests ----------------------------------


class WebSocketStandIn(Protocol):
    """Answers any request with a fixed response naming its route, then closes."""

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and self.transport is not None:
            body = b"websocket route"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.loseConnection()


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class EchoClient(Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected and not self.done.called:
            self.done.callback(self.data)


class PrefaceAlone(ProtocolWrapper):
    """Hands the HTTP/2 preface on in a read of its own, as a slow network may.

    So the grpc route's matcher is still waiting when the preface is in,
    the detector sends its SETTINGS, and the client's ACK of them arrives
    after the handoff.  Records what the server writes.
    """

    def __init__(self, factory: WrappingFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.held: bytes | None = b""
        self.written: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.held is not None:
            self.held += data
            if len(self.held) < len(PREFACE) and PREFACE.startswith(self.held):
                return
            data, self.held = self.held, None
            if data.startswith(PREFACE):
                super().dataReceived(PREFACE)
                data = data[len(PREFACE) :]
        if data:
            super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self.written.append(data)
        super().write(data)


class TrackingMux(ProtocolSwitchingFactory):
    """Remembers each connection's detector, so a test can close what is left."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.detectors: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        detector = super().buildProtocol(addr)
        self.detectors.append(detector)
        return detector


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise unittest.SkipTest(f"{name} is not installed")
    return path


async def run(*argv: str, limit: int = 30) -> tuple[str, str]:
    """Run a client under ``timeout``; return its stdout and stderr."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out, err, code = await getProcessOutputAndValue(
        tool("timeout"), [str(limit), *argv], env=env
    )
    if code != 0:
        raise AssertionError(f"{argv[0]} exited {code}: {err.decode(errors='replace')}")
    return out.decode(), err.decode()


async def curl(url: str, *options: str) -> tuple[dict[str, Any], int, str]:
    """GET or POST with curl; the JSON body, curl's local port, HTTP version."""
    out, _ = await run(
        tool("curl"),
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "20",
        "-w",
        "\n%{local_port} %{http_version}",
        *options,
        url,
    )
    body, _, tail = out.rpartition("\n")
    port, version = tail.split()
    result: dict[str, Any] = json.loads(body) if body.startswith("{") else {"raw": body}
    return result, int(port), version


async def h2load(url: str, requests: int = 200) -> dict[str, int]:
    out, _ = await run(
        tool("h2load"), "-n", str(requests), "-c", "4", "-m", "10", "-T", "10", url
    )
    found = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded,"
        r" (\d+) failed",
        out,
    )
    assert found, out
    total, _, done, succeeded, failed = (int(x) for x in found.groups())
    status = re.search(r"status codes: (\d+) 2xx", out)
    assert status, out
    return {
        "total": total,
        "done": done,
        "succeeded": succeeded,
        "failed": failed,
        "2xx": int(status.group(1)),
    }


class RealSocketTests(unittest.TestCase):
    """One Site behind four routes on 127.0.0.1, with real clients."""

    def setUp(self) -> None:
        self.log_path = temp_path(self, "access.log")
        self.site = Site(Info(), logPath=self.log_path)
        self.web = WebFactory(self.site)
        self.mux = TrackingMux(
            [
                Route("grpc", matchers.grpc(), Factory.forProtocol(Protocol)),
                Route("echo", matchers.prefix(b"ECHO "), Factory.forProtocol(Echo)),
                Route(
                    "websocket",
                    matchers.http1_header("upgrade", "websocket"),
                    Factory.forProtocol(WebSocketStandIn),
                ),
                Route("web", [matchers.http1(), matchers.http2()], self.web),
            ]
        )
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.split = WrappingFactory(self.mux)
        self.split.protocol = PrefaceAlone  # type: ignore[assignment]
        split_port = reactor.listenTCP(0, self.split, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(split_port.stopListening)
        self.split_url = f"http://127.0.0.1:{split_port.getHost().port}"
        self.addCleanup(lambda: defer.ensureDeferred(self.close_connections()))

    async def close_connections(self) -> None:
        """Abort what the clients left open, and wait for it to be gone."""

        def socket(detector: Any) -> Any:
            transport = detector.transport
            while isinstance(transport, ProtocolWrapper):
                transport = transport.transport
            return transport

        sockets = [socket(d) for d in self.mux.detectors]
        for each in sockets:
            if not each.disconnected:
                each.abortConnection()
        for _ in range(200):
            if all(each.disconnected for each in sockets):
                return
            await deferLater(reactor, 0, lambda: None)
        raise AssertionError("server connections did not close")

    def count_reads(self) -> dict[str, int]:
        """Count reads reaching the chooser and the H2Connections."""
        counts = {"chooser": 0, "h2": 0}

        def counting(cls: type, key: str) -> None:
            original: Callable[[Any, bytes], None] = cls.dataReceived  # type: ignore[attr-defined]

            def counted(self: Any, data: bytes) -> None:
                counts[key] += 1
                original(self, data)

            self.patch(cls, "dataReceived", counted)

        counting(_ChannelChooser, "chooser")
        counting(H2Connection, "h2")
        return counts

    @defer.inlineCallbacks
    def test_curl_http11_and_h2c(self) -> Any:
        """curl over HTTP/1.1 and h2c: the client address and protocol are right."""
        for option, protocol, version in (
            ("--http1.1", "HTTP/1.1", "1.1"),
            ("--http2-prior-knowledge", "HTTP/2", "2"),
            ("--http2", "HTTP/1.1", "1.1"),  # asks for Upgrade: h2c; not done
        ):
            body, local_port, seen_version = yield defer.ensureDeferred(
                curl(self.url + "/info?" + option.lstrip("-"), option)
            )
            self.assertEqual(seen_version, version)
            self.assertEqual(body["protocol"], protocol)
            self.assertEqual(body["host"], "127.0.0.1")
            self.assertEqual(body["port"], local_port)
            self.assertFalse(body["secure"])
        self.assertEqual(self.web.stats["http/1.1"], 2)
        self.assertEqual(self.web.stats["h2c"], 1)
        with open(self.log_path) as log:
            lines = log.read().splitlines()
        for query, version in (
            ("http1.1", "HTTP/1.1"),
            ("http2-prior-knowledge", "HTTP/2"),
            ("http2", "HTTP/1.1"),
        ):
            wanted = f'"GET /info?{query} {version}" 200 '
            matching = [line for line in lines if wanted in line]
            self.assertEqual(len(matching), 1, lines)
            self.assertTrue(matching[0].startswith('"127.0.0.1" - - ['), matching)
            self.assertIn('"curl/', matching[0])

    @defer.inlineCallbacks
    def test_h2load_h2c(self) -> Any:
        """h2load over h2c: every request succeeds; later reads bypass txcmux."""
        counts = self.count_reads()
        result = yield defer.ensureDeferred(h2load(self.url + "/info"))
        self.assertEqual(result["succeeded"], 200, result)
        self.assertEqual(result["2xx"], 200, result)
        self.assertEqual(self.web.stats["h2c"], 4)
        self.assertEqual(self.mux.stats["routed.web"], 4)
        # Reads reach the chooser only until the connection is re-pointed.
        # Measured: 4 chooser reads (one replay per connection), ~170 H2 reads.
        self.assertLessEqual(counts["chooser"], 2 * 4, counts)
        self.assertGreater(counts["h2"], 2 * counts["chooser"], counts)
        with open(self.log_path) as log:
            logged = [line for line in log if '"GET /info HTTP/2" 200 ' in line]
        self.assertEqual(len(logged), 200)

    @defer.inlineCallbacks
    def test_grpc_route_first_settings_then_h2c(self) -> Any:
        """grpc route first: the detector sends SETTINGS; curl and h2load still work.

        PrefaceAlone makes the grpc matcher wait after the preface, so each
        connection gets the detector's SETTINGS, and the client's ACK of them
        arrives after the handoff to WebFactory.
        """
        counts = self.count_reads()
        body, _, version = yield defer.ensureDeferred(
            curl(self.split_url + "/info?split", "--http2-prior-knowledge")
        )
        self.assertEqual((body["protocol"], version), ("HTTP/2", "2"))
        result = yield defer.ensureDeferred(h2load(self.split_url + "/info", 100))
        self.assertEqual(result["succeeded"], 100, result)
        self.assertEqual(self.web.stats["h2c"], 5)
        # Each connection: the replay, then one read of the ACK forwarded by
        # the detector, after which the transport calls the H2Connection.
        self.assertLessEqual(counts["chooser"], 3 * 5, counts)
        self.assertLess(counts["chooser"], counts["h2"], counts)

    @defer.inlineCallbacks
    def test_detector_sent_settings_first(self) -> Any:
        """With PrefaceAlone, the server's first bytes are the detector's SETTINGS."""
        written: list[list[bytes]] = []
        original = PrefaceAlone.connectionLost

        def keep(wrapper: PrefaceAlone, reason: Failure) -> None:
            written.append(wrapper.written)
            original(wrapper, reason)

        self.patch(PrefaceAlone, "connectionLost", keep)
        body, _, _ = yield defer.ensureDeferred(
            curl(self.split_url + "/info", "--http2-prior-knowledge")
        )
        self.assertEqual(body["protocol"], "HTTP/2")
        yield defer.ensureDeferred(self.close_connections())
        self.assertEqual(len(written), 1)
        self.assertEqual(written[0][0], EMPTY_SETTINGS)

    @defer.inlineCallbacks
    def test_websocket_upgrade_goes_to_its_route(self) -> Any:
        """Upgrade: websocket is routed by http1_header, not to the Site."""
        body, _, _ = yield defer.ensureDeferred(
            curl(
                self.url + "/chat",
                "--http1.1",
                "-H",
                "Upgrade: websocket",
                "-H",
                "Connection: Upgrade",
            )
        )
        self.assertEqual(body, {"raw": "websocket route"})
        self.assertEqual(self.mux.stats["routed.websocket"], 1)
        self.assertEqual(self.web.stats.total(), 0)

    @defer.inlineCallbacks
    def test_echo_route(self) -> Any:
        """A prefix route on the same port answers its own protocol."""
        message = b"ECHO hello over the shared port\r\n"
        client = EchoClient(len(message))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.mux_port())
        yield connectProtocol(endpoint, client)
        assert client.transport is not None
        client.transport.write(message)
        echoed = yield client.done
        client.transport.loseConnection()
        self.assertEqual(echoed, message)
        self.assertEqual(self.mux.stats["routed.echo"], 1)

    def mux_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @defer.inlineCallbacks
    def test_large_post_bodies(self) -> Any:
        """POST bodies of 4 MiB arrive whole over HTTP/1.1 and h2c."""
        payload = os.urandom(4 * 1024 * 1024)
        path = temp_path(self, "upload.bin")
        with open(path, "wb") as f:
            f.write(payload)
        digest = hashlib.sha256(payload).hexdigest()
        for option in ("--http1.1", "--http2-prior-knowledge"):
            body, _, _ = yield defer.ensureDeferred(
                curl(
                    self.url + "/upload",
                    option,
                    "--data-binary",
                    "@" + path,
                    "-H",
                    "Content-Type: application/octet-stream",
                )
            )
            self.assertEqual(body, {"size": len(payload), "sha256": digest})
