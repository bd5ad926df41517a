"""The matchers beyond HTTP, TLS and SSH: tables of real and near-miss openings.

Each protocol matcher is checked on what its real client sent (the captures
in txcmux/testing/_captures, named in its README) and on openings built
from the protocol's specification where no client is packaged, then with
``assert_well_behaved`` (monotone, bounded, split-invariant).  The address
matchers and the combinators are checked through a detector, with the
addresses a connection came from and to.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.matchers import EMPTY_SETTINGS, PREFACE, Outcome
from txcmux.proxy import ProxyPrelude, build_v1, build_v2
from txcmux.testing import (
    SETTINGS_ACK,
    RecordingFactory,
    SwitchHarness,
    assert_well_behaved,
    capture,
)

M, N, W = Outcome.MATCH, Outcome.NO_MATCH, Outcome.NEED_MORE

# [MS-RDPBCGR] 4.1.1, "Client X.224 Connection Request PDU": TPKT, X.224
# CR with "Cookie: mstshash=eltons", then RDP_NEG_REQ (TLS + CredSSP off).
RDP_SPEC = bytes.fromhex(
    "0300002c27e00000000000436f6f6b69653a206d737473686173683d656c746f6e73"
    "0d0a0100080000000000"
)
# The same PDU with only RDP_NEG_REQ (as mstsc sends without a user name),
# and with neither (the shortest a client sends: 11 bytes).
RDP_NEGOTIATION = bytes.fromhex("030000130ee000000000000100080003000000")
RDP_BARE = bytes.fromhex("0300000b06e00000000000")
# ISO-on-TCP (RFC 1006) as Siemens S7 speaks it: TPKT and an X.224 CR too,
# but with TSAP parameters (0xC1, 0xC2) where RDP has its cookie.
S7_CONNECT = bytes.fromhex("0300001611e00000000100c1020100c2020102c0010a")

# AMQP 1.0 (OASIS, part 5 sections 5.2.1 and 5.3.1), SASL and TLS layers,
# and AMQP 0-10 (which txcmux does not claim).
AMQP10_SASL = b"AMQP\x03\x01\x00\x00"
AMQP10_TLS = b"AMQP\x02\x01\x00\x00"
AMQP010 = b"AMQP\x01\x01\x00\x0a"

# RFC 6120 9.1.1: an XML declaration before the stream header; a server
# talking to a server (jabber:server) is not a client.
XMPP_DECLARED = (
    b"<?xml version='1.0'?>\n<stream:stream from='juliet@im.example.com'"
    b" to='im.example.com' version='1.0' xml:lang='en' xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams'>"
)
XMPP_SERVER = capture("slixmpp-client.bin").replace(b"jabber:client", b"jabber:server")

WEBSOCKET = capture("websockets-client.bin")
HTTP1 = capture("curl-http1.1.bin")

TABLE = [
    # SOCKS 4 and 4A, from curl 7.88.
    (matchers.socks4(), capture("curl-socks4.bin"), M),
    (matchers.socks4(), capture("curl-socks4a.bin"), M),
    (matchers.socks4(), capture("curl-socks4.bin")[:8], W),  # user id not ended
    (matchers.socks4(), b"\x04\x03", N),  # no command 3 in SOCKS 4
    (matchers.socks4(), b"\x04\x01\x00\x00\x7f\x00\x00\x01\x00", N),  # port 0
    (matchers.socks4(), b"\x04\x01\x00\x50" + b"\x7f\x00\x00\x01" + b"u" * 300, N),
    (matchers.socks4(), capture("curl-socks5.bin"), N),
    # SOCKS 5, from curl 7.88 (RFC 1928 section 3).
    (matchers.socks5(), capture("curl-socks5.bin"), M),
    (matchers.socks5(), b"\x05\x02\x00", W),
    (matchers.socks5(), b"\x05\x00", N),  # no method offered
    (matchers.socks5(), b"\x05\x01\xff", N),  # "no acceptable method": a server's
    (matchers.socks5(), capture("curl-socks4.bin"), N),
    # MQTT 3.1.1 from curl and mosquitto_pub, 5.0 from mosquitto_pub.
    (matchers.mqtt(), capture("curl-mqtt.bin"), M),
    (matchers.mqtt(), capture("mosquitto-pub-mqtt311.bin"), M),
    (matchers.mqtt(), capture("mosquitto-pub-mqtt5.bin"), M),
    (matchers.mqtt(), capture("mosquitto-pub-mqtt5.bin")[:8], W),
    # MQTT 3.1 ("MQIsdp", level 3) is older than what mqtt() claims.
    (matchers.mqtt(), b"\x10\x1a\x00\x06MQIsdp\x03\x02\x00\x3c", N),
    (matchers.mqtt(), b"\x10\x0c\x00\x04MQTT\x06\x02", N),  # level 6
    (matchers.mqtt(), b"\x10\x0c\x00\x04MQTT\x04\x03", N),  # reserved flag set
    (matchers.mqtt(), b"\x30\x0c\x00\x04MQTT", N),  # PUBLISH before CONNECT
    (matchers.mqtt(), b"\x10\xff\xff\xff\xff\x01", N),  # five length bytes
    # XMPP from slixmpp 1.17, and from RFC 6120's example.
    (matchers.xmpp(), capture("slixmpp-client.bin"), M),
    (matchers.xmpp(), XMPP_DECLARED, M),
    (matchers.xmpp(), b"\xef\xbb\xbf" + capture("slixmpp-client.bin"), M),
    (matchers.xmpp(), capture("slixmpp-client.bin")[:60], W),
    (matchers.xmpp(), XMPP_SERVER, N),
    (matchers.xmpp(), b"<stream:streams>", N),
    (matchers.xmpp(), b"<html>", N),
    # OpenVPN 2.6 over TCP.
    (matchers.openvpn(), capture("openvpn-client.bin"), M),
    (matchers.openvpn(), b"\x00\x0e\x50", M),  # hard reset v3 (tls-crypt-v2)
    (matchers.openvpn(), b"\x00\x0e", W),
    (matchers.openvpn(), b"\x00\x0d\x38", N),  # shorter than any reset
    (matchers.openvpn(), b"\x00\x0e\x28", N),  # P_ACK_V1: not a client's first
    (matchers.openvpn(), b"\x00\x0e\x39", N),  # key id 1
    (matchers.openvpn(), HTTP1, N),
    # RDP, from [MS-RDPBCGR]; ISO-on-TCP is the near miss.
    (matchers.rdp(), RDP_SPEC, M),
    (matchers.rdp(), RDP_NEGOTIATION, M),
    (matchers.rdp(), RDP_BARE, M),
    (matchers.rdp(), RDP_SPEC[:15], W),
    (matchers.rdp(), S7_CONNECT, N),
    (matchers.rdp(), b"\x03\x00\x00\x2c\x26\xe0", N),  # length indicator off by one
    (matchers.rdp(), b"\x03\x00\x00\x2c\x27\xd0", N),  # a connection confirm
    # AMQP 0-9-1 from pika 1.4; 1.0 from the specification.
    (matchers.amqp(), capture("pika-amqp091.bin"), M),
    (matchers.amqp(), AMQP10_SASL, M),
    (matchers.amqp(), AMQP10_TLS, M),
    (matchers.amqp(), b"AMQP\x00", W),
    (matchers.amqp(), AMQP010, N),
    # WebSocket from the websockets 17 client (RFC 6455 4.1).
    (matchers.websocket(), WEBSOCKET, M),
    (matchers.websocket("/chat"), WEBSOCKET, M),
    (matchers.websocket("/other"), WEBSOCKET, N),
    (matchers.websocket(), WEBSOCKET[:30], W),
    (matchers.websocket(), HTTP1, N),  # a GET without Upgrade
    (matchers.websocket(), b"POST /chat HTTP/1.1\r\nUpgrade: websocket\r\n", N),
    (matchers.websocket(), b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n", N),
    (matchers.websocket(), b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", N),
    (matchers.websocket(), b"GET / HTTP/1.1\r\nupgrade: foo, WebSocket\r\n", M),
]


@pytest.mark.parametrize(("matcher", "data", "expected"), TABLE)
def test_openings(matcher: matchers.Matcher, data: bytes, expected: Outcome) -> None:
    assert matcher(data).outcome is expected


PROTOCOLS = {
    "socks4": matchers.socks4(),
    "socks5": matchers.socks5(),
    "mqtt": matchers.mqtt(),
    "xmpp": matchers.xmpp(),
    "openvpn": matchers.openvpn(),
    "rdp": matchers.rdp(),
    "amqp": matchers.amqp(),
    "websocket": matchers.websocket("/chat"),
}
# Every opening in the table, and the other protocols' real clients.
SAMPLES = sorted(
    {data for _, data, _ in TABLE} | {HTTP1, capture("openssh-client.bin")}
)


@pytest.mark.parametrize("name", PROTOCOLS)
def test_each_protocol_matcher_is_well_behaved(name: str) -> None:
    assert_well_behaved(PROTOCOLS[name], SAMPLES, exhaustive_bytes=512)


@pytest.mark.parametrize("name", PROTOCOLS)
def test_each_protocol_matcher_claims_only_its_own_clients(name: str) -> None:
    """No matcher takes another protocol's real opening."""
    claimed = {
        capture_name
        for capture_name in (
            "curl-socks4.bin",
            "curl-socks4a.bin",
            "curl-socks5.bin",
            "curl-mqtt.bin",
            "mosquitto-pub-mqtt5.bin",
            "slixmpp-client.bin",
            "openvpn-client.bin",
            "pika-amqp091.bin",
            "websockets-client.bin",
            "curl-http1.1.bin",
            "curl-tls-clienthello.bin",
            "openssh-client.bin",
        )
        if PROTOCOLS[name](capture(capture_name)).outcome is M
    }
    own = {
        "socks4": {"curl-socks4.bin", "curl-socks4a.bin"},
        "socks5": {"curl-socks5.bin"},
        "mqtt": {"curl-mqtt.bin", "mosquitto-pub-mqtt5.bin"},
        "xmpp": {"slixmpp-client.bin"},
        "openvpn": {"openvpn-client.bin"},
        "rdp": set(),
        "amqp": {"pika-amqp091.bin"},
        "websocket": {"websockets-client.bin"},
    }
    assert claimed == own[name]


@given(st.binary(max_size=64))
def test_protocol_matchers_never_raise_on_random_bytes(data: bytes) -> None:
    for matcher in PROTOCOLS.values():
        assert matcher(data).outcome in (M, N, W)
        assert not (len(data) >= matcher.max_bytes and matcher(data).outcome is W)


# -- regex ---------------------------------------------------------------------


def test_regex_waits_while_a_longer_input_could_match() -> None:
    stomp = matchers.regex(rb"(CONNECT|STOMP)\r?\n", max_bytes=16)
    assert [stomp(d).outcome for d in (b"", b"CON", b"CONNECT", b"CONNECT\r")] == [
        W,
        W,
        W,
        W,
    ]
    assert stomp(b"CONNECT\r\naccept-version:1.2").outcome is M
    assert stomp(b"STOMP\n").outcome is M
    assert stomp(b"CONNEC\n").outcome is N
    assert_well_behaved(stomp, [b"CONNECT\r\n", b"STOMP\n", b"CONNEC\n", HTTP1])


def test_regex_is_anchored_and_bounded() -> None:
    anywhere = matchers.regex(rb".*SSH-", max_bytes=32)
    assert anywhere(b"x" * 10 + b"SSH-").outcome is M
    assert anywhere(b"x" * 31).outcome is W
    assert anywhere(b"x" * 32).outcome is N  # still only a prefix at the bound
    assert matchers.regex(rb"SSH-", max_bytes=8)(b"xSSH-").outcome is N


def test_regex_takes_a_string_as_latin1() -> None:
    matcher = matchers.regex("\u00ff\u0001[a-z]+:", max_bytes=8)
    assert matcher(b"\xff\x01abc:").outcome is M


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (rb"PING$", "uses $"),
        (rb"PING\Z", "uses \\Z"),
        (rb"PING\b", "uses \\b"),
        (rb"(?:A|B\B)", "uses \\B"),
        (rb"PING(?!S)", "negative lookahead"),
        (rb"PING(", "does not compile"),
    ],
)
def test_regex_refuses_what_could_break_monotony(pattern: bytes, expected: str) -> None:
    with pytest.raises(ValueError, match="regex") as raised:
        matchers.regex(pattern, max_bytes=16)
    assert expected in str(raised.value)


def test_regex_keeps_lookahead_that_cannot_flip() -> None:
    # A positive lookahead waits for its bytes like the rest of the pattern.
    matcher = matchers.regex(rb"GET (?=/api/)", max_bytes=16)
    assert matcher(b"GET /ap").outcome is W
    assert matcher(b"GET /api/x").outcome is M
    assert matcher(b"GET /apx").outcome is N


@pytest.mark.parametrize("bound", [0, -1, True, "16"])
def test_regex_needs_a_positive_bound(bound: object) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        matchers.regex(b"A", max_bytes=bound)  # type: ignore[arg-type]


# -- addresses -----------------------------------------------------------------


def v4(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def v6(host: str, port: int = 40000) -> IPv6Address:
    return IPv6Address("TCP", host, port)


LOCAL = v4("127.0.0.1", 8443)


@pytest.mark.parametrize(
    ("peer", "routed"),
    [
        (v4("10.1.2.3"), "admin"),
        (v4("10.255.255.255"), "admin"),
        (v4("11.0.0.1"), "web"),
        (v6("fd00::5"), "admin"),
        (v6("fe80::1%eth0"), "web"),
        (v6("::ffff:10.9.9.9"), "admin"),  # IPv4 seen on a dual-stack socket
        (UNIXAddress(b"/run/cmux.sock"), "web"),
    ],
)
def test_remote_ip_decides_by_the_client(peer: object, routed: str) -> None:
    harness = SwitchHarness(
        {
            "admin": matchers.remote_ip("10.0.0.0/8", "fd00::/8"),
            "web": matchers.http1(),
        }
    )
    report = harness.feed(HTTP1, peer=peer, host=LOCAL)  # type: ignore[arg-type]
    assert report.route == routed
    assert report.replayed == HTTP1


def test_an_address_route_decides_before_any_byte() -> None:
    harness = SwitchHarness({"inside": matchers.remote_ip("10.0.0.0/8")})
    connection = harness.connect(peer=v4("10.0.0.1"), host=LOCAL)
    assert connection.report().route == "inside"
    outside = harness.connect(peer=v4("192.0.2.1"), host=LOCAL)
    # No route can take it, whatever it sends: closed at once, as no match.
    assert outside.report().rejected == "no_match"


def test_local_port_and_local_ip_decide_by_where_the_client_came_in() -> None:
    harness = SwitchHarness(
        {
            "alt": matchers.local_port(8443, 9443),
            "lan": matchers.all_of(matchers.http1(), matchers.local_ip("127.0.0.2")),
            "web": matchers.http1(),
        }
    )
    peer = v4("192.0.2.7")
    assert harness.feed(HTTP1, peer=peer, host=v4("127.0.0.1", 9443)).route == "alt"
    assert harness.feed(HTTP1, peer=peer, host=v4("127.0.0.2", 80)).route == "lan"
    assert harness.feed(HTTP1, peer=peer, host=v4("127.0.0.1", 80)).route == "web"


@pytest.mark.parametrize(
    ("make", "args"),
    [
        (matchers.remote_ip, ()),
        (matchers.remote_ip, ("10.0.0.0/33",)),
        (matchers.remote_ip, ("example.com",)),
        (matchers.local_ip, (10,)),
        (matchers.local_port, ()),
        (matchers.local_port, (0,)),
        (matchers.local_port, (65536,)),
        (matchers.local_port, (True,)),
    ],
)
def test_address_matchers_refuse_bad_arguments(make: object, args: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        make(*args)  # type: ignore[operator]


def test_an_address_matcher_asked_without_a_connection_does_not_match() -> None:
    assert matchers.remote_ip("0.0.0.0/0")(b"").outcome is N


# -- combinators ---------------------------------------------------------------


ADMIN_TLS = matchers.all_of(
    matchers.tls(sni="admin.example.com"), matchers.remote_ip("10.0.0.0/8")
)


def test_all_of_tls_sni_and_network() -> None:
    hello = capture("curl-tls-clienthello.bin")  # SNI localhost
    localhost = matchers.all_of(
        matchers.tls(sni="localhost"), matchers.remote_ip("10.0.0.0/8")
    )
    harness = SwitchHarness({"admin": localhost, "tls": matchers.tls()})
    assert harness.feed(hello, peer=v4("10.0.0.9"), host=LOCAL).route == "admin"
    assert harness.feed(hello, peer=v4("8.8.8.8"), host=LOCAL).route == "tls"
    # The same on every split of the ClientHello.
    for cut in range(1, len(hello), 37):
        report = harness.feed(hello[:cut], hello[cut:], peer=v4("10.0.0.9"), host=LOCAL)
        assert report.route == "admin"
        assert report.replayed == hello


def test_binding_simplifies_to_what_is_left_to_ask() -> None:
    inside, outside = v4("10.0.0.1"), v4("198.51.100.7")
    assert ADMIN_TLS.bind(outside, None).name == "never"  # type: ignore[attr-defined]
    assert ADMIN_TLS.bind(inside, None).name == "tls(sni=['admin.example.com'])"  # type: ignore[attr-defined]
    not_inside = matchers.not_(matchers.remote_ip("10.0.0.0/8"))
    assert not_inside.bind(inside, None).name == "never"  # type: ignore[attr-defined]
    assert not_inside.bind(outside, None).name == "always"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "all_of", "any_of"),
    [
        (b"", W, W),
        (b"SSH-", W, W),
        (b"SSH-2.0-x\r\n", N, M),  # ssh matches, prefix "SSH-1" does not
        (b"SSH-1.99-x\r\n", M, M),
        (b"GET", N, N),
    ],
)
def test_all_of_and_any_of_truth_tables(
    data: bytes, all_of: Outcome, any_of: Outcome
) -> None:
    parts = (matchers.ssh(), matchers.prefix(b"SSH-1"))
    assert matchers.all_of(*parts)(data).outcome is all_of
    assert matchers.any_of(*parts)(data).outcome is any_of


def test_not_of_need_more_is_need_more() -> None:
    not_ssh = matchers.not_(matchers.ssh())
    assert not_ssh(b"SSH-2").outcome is W
    assert not_ssh(capture("openssh-client.bin")).outcome is N
    assert not_ssh(HTTP1).outcome is M
    # A part still waiting at its own bound counts as no match: not_ matches.
    short = matchers.regex(rb"A+B", max_bytes=4)
    assert matchers.not_(short)(b"AAAA").outcome is M
    assert_well_behaved(not_ssh, [HTTP1, capture("openssh-client.bin"), b"SSH-2"])


def test_a_waiting_part_still_gets_its_probe_sent() -> None:
    """all_of(grpc(), ...) sends SETTINGS, as grpc() alone does."""
    grpc_inside = matchers.all_of(matchers.grpc(), matchers.remote_ip("127.0.0.0/8"))
    harness = SwitchHarness({"grpc": grpc_inside, "web": matchers.http2()})
    connection = harness.connect(peer=v4("127.0.0.1"), host=LOCAL)
    connection.send(PREFACE + EMPTY_SETTINGS)
    assert connection.report().written == EMPTY_SETTINGS + SETTINGS_ACK


def test_combinators_keep_the_parts_alpn() -> None:
    web = matchers.any_of(matchers.http1(), matchers.http2())
    assert set(web.alpn) == {b"http/1.1", b"h2"}  # type: ignore[attr-defined]
    both = matchers.all_of(matchers.http2(), matchers.remote_ip("10.0.0.0/8"))
    assert both.bind(v4("10.0.0.1"), None).alpn == (b"h2",)  # type: ignore[attr-defined]
    assert matchers.not_(matchers.http1()).alpn == ()  # type: ignore[attr-defined]


def test_combinators_are_well_behaved() -> None:
    samples = [HTTP1, capture("openssh-client.bin"), WEBSOCKET, b"SSH-1.5-x\r\n"]
    assert_well_behaved(
        matchers.all_of(matchers.http1(), matchers.websocket()), samples
    )
    assert_well_behaved(matchers.any_of(matchers.ssh(), matchers.websocket()), samples)
    assert_well_behaved(matchers.not_(matchers.websocket()), samples)


def test_combinators_refuse_what_is_not_a_matcher() -> None:
    with pytest.raises(ValueError, match="needs at least one matcher"):
        matchers.all_of()
    with pytest.raises(ValueError, match="is not a matcher"):
        matchers.any_of("ssh")  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_after_a_proxy_header_the_addresses_are_the_ones_it_named(
    version: str,
) -> None:
    build = build_v1 if version == "v1" else build_v2
    balancer = v4("10.0.0.5")  # inside 10.0.0.0/8 itself: the header must win
    targets = {name: RecordingFactory(name) for name in ("admin", "alt", "web")}
    switch = ProtocolSwitchingFactory(
        [
            Route("admin", matchers.remote_ip("10.0.0.0/8"), targets["admin"]),
            Route("alt", matchers.local_port(9443), targets["alt"]),
            Route("web", matchers.http1(), targets["web"]),
        ],
        prelude=ProxyPrelude("required", ["10.0.0.0/8"]),
        clock=Clock(),
    )

    def connect(client: IPv4Address, front: IPv4Address) -> str:
        transport = StringTransport(peerAddress=balancer, hostAddress=LOCAL)
        detector = switch.buildProtocol(balancer)
        transport.protocol = detector
        detector.makeConnection(transport)
        stream = build(client, front) + HTTP1
        for start in range(len(stream)):  # one byte per read
            detector.dataReceived(stream[start : start + 1])
        [name] = [n for n, f in targets.items() if f.built]
        targets[name].built.clear()
        return name

    assert connect(v4("10.9.9.9"), v4("198.51.100.1", 443)) == "admin"
    assert connect(v4("192.0.2.7"), v4("198.51.100.1", 9443)) == "alt"
    assert connect(v4("192.0.2.7"), v4("198.51.100.1", 443)) == "web"
