"""The PROXY prelude in front of the routes: trust, modes, and what targets see."""

from __future__ import annotations

from itertools import pairwise

import pytest
from twisted.internet import endpoints, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource, server

from txcmux import ConfigurationError, ProtocolSwitchingFactory, Reason, Route, matchers
from txcmux.proxy import ProxyHeader, ProxyPrelude, build_v1, build_v2, proxy_header
from txcmux.web import WebFactory

from .grpc_support.net import RawClient, listen
from .logs import captured_logs
from .recording import RecordingFactory
from .test_detector import handoff_recording_factory

BALANCER = IPv4Address("TCP", "10.0.0.5", 40000)
STRANGER = IPv4Address("TCP", "203.0.113.9", 40000)
CLIENT = IPv4Address("TCP", "192.0.2.7", 5000)
FRONT = IPv4Address("TCP", "198.51.100.1", 443)
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HEADERS = {
    "v1": build_v1(CLIENT, FRONT),
    "v2": build_v2(CLIENT, FRONT, [(0x05, b"u1")]),
}


class Harness:
    def __init__(
        self, prelude: ProxyPrelude, peer: IPv4Address = BALANCER, **options: object
    ) -> None:
        self.web = RecordingFactory("web")
        self.rejections: list[object] = []
        self.clock = Clock()
        self.switch = ProtocolSwitchingFactory(
            [Route("web", matchers.http1(), self.web)],
            prelude=prelude,
            on_error=self.rejections.append,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )
        self.transport = StringTransport(peerAddress=peer)
        self.detector = self.switch.buildProtocol(peer)
        self.transport.protocol = self.detector
        self.detector.makeConnection(self.transport)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.detector.dataReceived(chunk)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_trusted_balancers_header_names_the_client_to_every_target(
    version: str,
) -> None:
    harness = Harness(ProxyPrelude("required", ["10.0.0.0/8"]))
    stream = HEADERS[version] + REQUEST
    for start, end in pairwise(range(len(stream) + 1)):  # one byte per read
        harness.feed(stream[start:end])
    [web] = harness.web.built
    assert web.received == REQUEST
    assert harness.transport.getPeer() == CLIENT
    assert harness.transport.getHost() == FRONT
    header = proxy_header(harness.transport)
    assert isinstance(header, ProxyHeader)
    assert header.version == int(version[1])
    assert proxy_header(web) is header  # through the protocol's transport too


def test_the_handoff_carries_the_header() -> None:
    aware, received = handoff_recording_factory()
    switch = ProtocolSwitchingFactory(
        [Route("web", matchers.http1(), aware)],
        prelude=ProxyPrelude("required"),
        clock=Clock(),
    )
    detector = switch.buildProtocol(BALANCER)
    detector.makeConnection(StringTransport(peerAddress=BALANCER))
    detector.dataReceived(HEADERS["v2"] + REQUEST)
    [handoff] = received
    assert handoff.peer == CLIENT
    assert isinstance(handoff.prelude, ProxyHeader)
    assert handoff.prelude.unique_id == b"u1"


def test_a_header_from_outside_trusted_proxies_is_refused() -> None:
    harness = Harness(ProxyPrelude("optional", ["10.0.0.0/8"]), peer=STRANGER)
    with captured_logs() as logs:
        harness.feed(HEADERS["v1"] + REQUEST)
    assert harness.transport.disconnecting
    assert harness.web.built == []
    assert harness.switch.stats["closed.proxy_untrusted"] == 1
    [line] = [line for line in logs if "closing connection" in line]
    # Logged as the peer it really is, not as the client it claimed to be.
    assert "closing connection from 203.0.113.9:40000: a PROXY header" in line
    assert "not in trusted_proxies" in line


def test_optional_lets_direct_clients_through_with_their_own_address() -> None:
    harness = Harness(ProxyPrelude("optional", ["10.0.0.0/8"]), peer=STRANGER)
    harness.feed(REQUEST)
    [web] = harness.web.built
    assert web.received == REQUEST
    assert harness.transport.getPeer() == STRANGER
    assert proxy_header(harness.transport) is None


@pytest.mark.parametrize(
    ("peer", "reason"),
    [(BALANCER, Reason.PROXY_MISSING), (STRANGER, Reason.PROXY_UNTRUSTED)],
)
def test_required_refuses_connections_without_a_header(
    peer: IPv4Address, reason: Reason
) -> None:
    harness = Harness(ProxyPrelude("required", ["10.0.0.0/8"]), peer=peer)
    harness.feed(REQUEST)
    assert harness.transport.disconnecting
    assert harness.switch.stats[f"closed.{reason.value}"] == 1


def test_a_malformed_header_is_refused_with_its_reason() -> None:
    harness = Harness(ProxyPrelude("required"))
    harness.feed(b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 99999\r\n" + REQUEST)
    [rejection] = harness.rejections
    assert rejection.reason is Reason.PROXY_INVALID  # type: ignore[attr-defined]
    assert "99999 is not a port number" in rejection.detail  # type: ignore[attr-defined]


def test_local_health_checks_keep_the_real_peer() -> None:
    harness = Harness(ProxyPrelude("required"))
    harness.feed(build_v2(None, None) + REQUEST)
    [web] = harness.web.built
    assert web.received == REQUEST
    assert harness.transport.getPeer() == BALANCER
    header = proxy_header(harness.transport)
    assert header is not None and header.command == "LOCAL"


def test_a_header_dribbled_slower_than_the_sniff_timeout_is_cut() -> None:
    harness = Harness(ProxyPrelude("required"), sniff_timeout=2.0)
    for byte in HEADERS["v1"][:10]:
        harness.feed(bytes([byte]))
        harness.clock.advance(0.25)
    assert harness.transport.disconnecting
    assert harness.switch.stats["closed.timeout"] == 1


def test_trust_by_network_ipv6_mapped_and_unix() -> None:
    prelude = ProxyPrelude("required", ["10.0.0.0/8", "2001:db8::/32", "unix"])
    assert prelude.trusts(BALANCER)
    assert prelude.trusts(IPv6Address("TCP", "::ffff:10.1.1.1", 1))
    assert prelude.trusts(IPv6Address("TCP", "2001:db8::9", 1))
    assert prelude.trusts(UNIXAddress(b"/run/x"))
    assert not prelude.trusts(STRANGER)
    assert not ProxyPrelude("required", ["10.0.0.0/8"]).trusts(UNIXAddress(None))
    assert ProxyPrelude("required").trusts(STRANGER)  # no list: every peer


@pytest.mark.parametrize(
    ("mode", "trusted", "message"),
    [
        ("optional", [], "needs trusted_proxies"),
        ("sometimes", [], "expected one of 'off', 'optional', 'required'"),
        ("required", ["10.0.0.0/33"], "'10.0.0.0/33' is not an address or CIDR"),
    ],
)
def test_bad_settings_are_refused(mode: str, trusted: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ProxyPrelude(mode, trusted)


class ClientAddress(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        header = proxy_header(request)
        address = request.getClientAddress()
        return f"{address.host} {header.destination.host if header else None}".encode()  # type: ignore[attr-defined,union-attr]


class SiteBehindTheHeader(unittest.TestCase):
    timeout = 20

    async def test_the_site_sees_the_client_and_the_destination(self) -> None:
        site = server.Site(ClientAddress())
        mux = ProtocolSwitchingFactory(
            [Route("web", [matchers.http1(), matchers.http2()], WebFactory(site))],
            prelude=ProxyPrelude("required", ["127.0.0.0/8"]),
        )
        port = await listen(self, mux)
        client = RawClient(
            HEADERS["v2"] + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        await endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port
        ).connect(_factory(client))
        await client.done
        assert client.received.endswith(b"\r\n\r\n192.0.2.7 198.51.100.1")


def _factory(client: RawClient):  # type: ignore[no-untyped-def]
    from twisted.internet.protocol import Factory

    factory = Factory()
    factory.buildProtocol = lambda addr: client  # type: ignore[method-assign]
    return factory
