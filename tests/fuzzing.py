"""What the fuzz tests share: hostile inputs, every matcher, the run length.

Hostile bytes come from three places: random bytes; mutations of real
client openings (the captures of :mod:`txcmux.testing` and a hand-written
opening for every protocol a matcher knows); and structure-aware generators
that build mostly valid TLS records and HTTP/2 frame streams, which random
bytes almost never are.

The run length: each test runs a few seconds by default (CI); with
``TXCMUX_FUZZ=long`` in the environment every example count is multiplied
by :data:`LONG_FACTOR` (see docs/testing.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import hpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address

from txcmux import matchers
from txcmux.testing import CAPTURES

#: ``TXCMUX_FUZZ=long`` runs every fuzz test this many times longer.
LONG_FACTOR = 50
LONG = os.environ.get("TXCMUX_FUZZ", "").lower() == "long"


def examples(count: int) -> int:
    """How many examples a test that runs ``count`` by default runs now."""
    return count * LONG_FACTOR if LONG else count


def fuzz_settings(count: int) -> settings:
    """Hypothesis settings for a fuzz test of ``count`` examples (by default)."""
    return settings(
        max_examples=examples(count),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# -- seeds: one real or hand-written opening per protocol ----------------------

_HAND_WRITTEN = {
    "websocket": b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
    "propfind": b"PROPFIND /dav HTTP/1.1\r\nHost: x\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "socks4": b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00",
    "socks4a": b"\x04\x01\x00\x50\x00\x00\x00\x01\x00example.com\x00",
    "socks5": b"\x05\x02\x00\x02",
    "mqtt": b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd",
    "mqtt5": b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x04abcd",
    "xmpp": b"<?xml version='1.0'?>\n<stream:stream to='x' xmlns='jabber:client'>",
    "xmpp-bom": b'\xef\xbb\xbf<stream:stream xmlns="jabber:client">',
    "openvpn": b"\x00\x0e\x38" + b"\x01" * 8 + b"\x00" + b"\x00\x00\x00\x00",
    "rdp-cookie": b"\x03\x00\x00\x20\x1b\xe0\x00\x00\x00\x00\x00Cookie: mstshash=a\r\n",
    "rdp-neg": b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x03"
    b"\x00\x00\x00",
    "amqp091": b"AMQP\x00\x00\x09\x01",
    "amqp10": b"AMQP\x03\x01\x00\x00",
    "redis": b"*1\r\n$4\r\nPING\r\n",
    "postgres-ssl": (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"),
    "postgres-startup": (16).to_bytes(4, "big")
    + (196608).to_bytes(4, "big")
    + b"user\x00x\x00\x00",
    "ssh": b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
    "ssh199": b"SSH-1.99-x\r\n",
    "echo": b"ECHO hello\n",
    "proxy-v1": b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 443\r\nGET / HTTP/1.1\r\n\r\n",
    "proxy-v1-unknown": b"PROXY UNKNOWN\r\n",
    "proxy-v2": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\xc6\x33\x64"
    b"\x01\x13\x88\x01\xbb",
    "garbage": b"\x00\x01garbage that nothing wants\r\n",
}

#: Every opening the mutations start from, by name.
SEEDS: dict[str, bytes] = {**CAPTURES, **_HAND_WRITTEN}


# -- mutations ----------------------------------------------------------------

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0D, 0x0A, 0x20, 0x16, 0x03)


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` changed once: a byte flipped or set, a run cut, inserted or
    repeated, the end cut off, or another seed spliced in."""
    size = len(data)
    kind = draw(st.integers(0, 7))
    at = draw(st.integers(0, size))
    if kind == 0 and size:  # flip a bit
        at = min(at, size - 1)
        bit = 1 << draw(st.integers(0, 7))
        return data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :]
    if kind == 1 and size:  # an interesting byte value
        at = min(at, size - 1)
        return data[:at] + bytes([draw(st.sampled_from(_INTERESTING))]) + data[at + 1 :]
    if kind == 2:  # cut a run
        return data[:at] + data[at + draw(st.integers(1, 64)) :]
    if kind == 3:  # insert random bytes
        return data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:]
    if kind == 4:  # repeat a run
        end = min(size, at + draw(st.integers(1, 64)))
        return data[:end] + data[at:end] * draw(st.integers(1, 8)) + data[end:]
    if kind == 5:  # truncate
        return data[:at]
    if kind == 6:  # splice another seed in
        other = draw(st.sampled_from(sorted(SEEDS.values())))
        return data[:at] + other[draw(st.integers(0, len(other))) :]
    # a 16- or 8-bit length field set to an extreme value
    value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x4000, 0x4001, 0xFFFF]))
    width = draw(st.sampled_from([1, 2]))
    return data[:at] + value.to_bytes(2, "big")[-width:] + data[at + width :]


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes] | None = None) -> bytes:
    """A seed (one of ``seeds``, by default :data:`SEEDS`) mutated 0 to 6 times."""
    pool = seeds if seeds is not None else SEEDS
    data = pool[draw(st.sampled_from(sorted(pool)))]
    for _ in range(draw(st.integers(0, 6))):
        data = draw(_mutation(data))
    return data


# -- structure-aware generators -----------------------------------------------


def _vector(length_size: int, body: bytes) -> bytes:
    """``body`` after its length (cut to what the length field holds: a
    mutated body may be longer, and then its length is wrong, as fuzzing
    wants)."""
    length = min(len(body), (1 << 8 * length_size) - 1)
    return length.to_bytes(length_size, "big") + body


@st.composite
def _extension(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0, 16, 43, 10, 13, 51, 0xFFFF, 0x1234]))
    if kind == 0:
        name = draw(
            st.one_of(
                st.sampled_from([b"localhost", b"LOCALHOST.", b"a.example.com", b""]),
                st.binary(max_size=40),
            )
        )
        entry = bytes([draw(st.sampled_from([0, 0, 1, 255]))]) + _vector(2, name)
        body = _vector(2, entry * draw(st.integers(0, 3)))
    elif kind == 16:
        protocols = draw(
            st.lists(
                st.one_of(
                    st.sampled_from([b"h2", b"http/1.1", b"acme-tls/1"]),
                    st.binary(max_size=12),
                ),
                max_size=4,
            )
        )
        body = _vector(2, b"".join(_vector(1, p) for p in protocols))
    elif kind == 43:
        versions = draw(
            st.lists(
                st.sampled_from([0x0304, 0x0303, 0x0302, 0x0301, 0x7F1C, 0xFAFA]),
                max_size=5,
            )
        )
        body = _vector(1, b"".join(v.to_bytes(2, "big") for v in versions))
    else:
        body = draw(st.binary(max_size=64))
    if draw(st.integers(0, 9)) == 0:  # a wrong inner length now and then
        body = draw(_mutation(body))
    return kind.to_bytes(2, "big") + _vector(2, body)


@st.composite
def client_hellos(draw: st.DrawFn) -> bytes:
    """A TLS ClientHello in handshake records, mostly well formed.

    The body has random extensions (SNI, ALPN, supported_versions among
    them), and is cut into records of random sizes; now and then a length
    is wrong, a record type changes, or bytes follow.
    """
    body = (
        draw(st.sampled_from([0x0303, 0x0301, 0x0300, 0x0304])).to_bytes(2, "big")
        + draw(st.binary(min_size=32, max_size=32))
        + _vector(1, draw(st.binary(max_size=32)))
        + _vector(2, draw(st.binary(max_size=16)))
        + _vector(1, b"\x00")
    )
    extensions = draw(st.lists(_extension(), max_size=6))
    if extensions or draw(st.booleans()):
        body += _vector(2, b"".join(extensions))
    message = b"\x01" + _vector(3, body)
    if draw(st.integers(0, 9)) == 0:
        message = draw(_mutation(message))
    records = []
    position = 0
    while position < len(message):
        size = draw(st.sampled_from([1, 2, 5, 64, 300, 16384]))
        fragment = message[position : position + size]
        version = draw(st.sampled_from([b"\x03\x01", b"\x03\x01", b"\x03\x03"]))
        records.append(b"\x16" + version + _vector(2, fragment))
        position += size
        if len(records) > 64:
            break
    stream = b"".join(records)
    if draw(st.integers(0, 9)) == 0:
        stream = draw(_mutation(stream))
    return stream + draw(st.binary(max_size=8))


_REQUEST_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Service/Call"),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


@st.composite
def _header_block(draw: st.DrawFn) -> bytes:
    fields = draw(
        st.lists(
            st.one_of(
                st.sampled_from(_REQUEST_HEADERS),
                st.tuples(
                    st.sampled_from([b":path", b"content-type", b"x-a", b"Upper"]),
                    st.binary(max_size=20),
                ),
            ),
            max_size=8,
        )
    )
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=40))  # not HPACK at all
    return bytes(hpack.Encoder().encode(fields))


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 section 4.1)."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream.to_bytes(4, "big")
        + payload
    )


@st.composite
def h2_frame(draw: st.DrawFn) -> bytes:
    """One HTTP/2 frame a client might send, with random type, flags and stream."""
    kind = draw(st.sampled_from([0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 0x0A, 0xFF]))
    flags = draw(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x24, 0x2D, 0xFF]))
    stream = draw(st.sampled_from([0, 1, 2, 3, 0x80000001]))
    if kind in (1, 9):
        payload = draw(_header_block())
        if kind == 1 and flags & 0x20:
            payload = b"\x00\x00\x00\x03\x10" + payload
        if kind == 1 and flags & 0x08:
            pad = draw(st.integers(0, 255))
            payload = bytes([pad]) + payload + b"\x00" * draw(st.integers(0, pad))
    elif kind == 4 and flags & 1:
        payload = draw(st.sampled_from([b"", b"", b"\x00"]))
    else:
        payload = draw(st.binary(max_size=48))
    return frame(kind, flags, stream, payload)


@st.composite
def h2_streams(draw: st.DrawFn) -> bytes:
    """An HTTP/2 client's stream: the preface (now and then damaged), frames."""
    preface = matchers.PREFACE
    if draw(st.integers(0, 19)) == 0:
        preface = draw(_mutation(preface))
    frames = draw(st.lists(h2_frame(), max_size=10))
    return preface + b"".join(frames)


#: Bytes from any of the sources above.
hostile_bytes = st.one_of(
    st.binary(max_size=300),
    mutated(),
    client_hellos(),
    h2_streams(),
)


# -- every matcher the registry knows -----------------------------------------

CLIENT = IPv4Address("TCP", "10.1.2.3", 50000)
LOCAL = IPv4Address("TCP", "10.0.0.1", 8443)
OUTSIDER = IPv6Address("TCP", "2001:db8::7", 50000)


def all_matchers() -> dict[str, matchers.Matcher]:
    """A matcher for every name the registry knows, several for some.

    Keyed by ``<registry name>`` or ``<registry name>:<variant>``.  Address
    matchers appear unbound (they answer ``NO_MATCH``) and bound, inside
    combinators, to :data:`CLIENT` and :data:`LOCAL`.
    """
    m = matchers
    internal = m.remote_ip("10.0.0.0/8")
    return {
        "any": m.any(),
        "prefix": m.prefix(b"ECHO ", b"PING"),
        "http1": m.http1(),
        "http1:short": m.http1(max_request_line=40),
        "http1_fast": m.http1_fast(),
        "http1_fast:propfind": m.http1_fast("PROPFIND", "MKCOL"),
        "http1_header": m.http1_header("upgrade", "websocket"),
        "http1_header:prefix": m.http1_header("host", "local", prefix=True),
        "http2": m.http2(),
        "http2_header": m.http2_header(":path", "/pkg", prefix=True),
        "http2_header:quiet": m.http2_header(
            "content-type", "application/grpc", send_settings=False
        ),
        "http2_header:small": m.http2_header(":path", "/x", max_bytes=200),
        "grpc": m.grpc(),
        "tls": m.tls(),
        "tls:sni": m.tls(sni=["localhost", "*.example.com"]),
        "tls:alpn": m.tls(alpn="h2"),
        "tls:versions": m.tls(versions=["1.2", "TLSv1.3"]),
        "tls:all": m.tls(versions="1.3", sni="localhost", alpn=["h2", "http/1.1"]),
        "tls:small": m.tls(sni="localhost", max_bytes=300),
        "ssh": m.ssh(),
        "regex": m.regex(rb"(CONNECT|STOMP)\r?\n", max_bytes=16),
        "regex:star": m.regex(rb"[A-Z]+ [^\r\n]*\r\n(?=.)", max_bytes=64),
        "websocket": m.websocket(),
        "websocket:path": m.websocket("/chat"),
        "socks4": m.socks4(),
        "socks5": m.socks5(),
        "mqtt": m.mqtt(),
        "xmpp": m.xmpp(),
        "openvpn": m.openvpn(),
        "rdp": m.rdp(),
        "amqp": m.amqp(),
        "redis": m.redis(),
        "postgres": m.postgres(),
        "remote_ip": internal,
        "local_ip": m.local_ip("10.0.0.0/24", "::1"),
        "local_port": m.local_port(8443, 443),
        "all_of": m.all_of(m.tls(sni="localhost"), m.remote_ip("10.0.0.0/8")),
        "all_of:bytes": m.all_of(m.http1(), m.http1_header("upgrade", "websocket")),
        "any_of": m.any_of(m.grpc(), m.ssh(), m.redis()),
        "any_of:address": m.any_of(m.local_port(1), m.http2()),
        "not": m.not_(m.ssh()),
        "not:grpc": m.not_(m.grpc()),
        "not:address": m.not_(m.remote_ip("192.0.2.0/24")),
    }


def bound(matcher: matchers.Matcher, client: object = CLIENT) -> matchers.Matcher:
    """``matcher`` bound to ``client`` and :data:`LOCAL`, if it depends on them."""
    bind: Callable[[object, object], matchers.Matcher] | None = getattr(
        matcher, "bind", None
    )
    return bind(client, LOCAL) if bind is not None else matcher
