"""The PROXY protocol parser and builder: tables, splits, garbage, round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from txcmux._proxy._crc32c import crc32c
from txcmux.matchers import NEED_MORE
from txcmux.proxy import (
    ProxyError,
    ProxyHeader,
    build_v1,
    build_v2,
    parse,
    signature,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT4 = IPv4Address("TCP", "192.0.2.7", 5000)
SERVER4 = IPv4Address("TCP", "198.51.100.1", 443)
CLIENT6 = IPv6Address("TCP", "2001:db8::7", 5000)
SERVER6 = IPv6Address("TCP", "2001:db8::1", 443)


def v2(command: int, family: int, body: bytes) -> bytes:
    return SIG + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


V4_BLOCK = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 5000, 443)

VALID = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 443\r\n", "PROXY", CLIENT4, SERVER4),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 5000 443\r\n", "PROXY", CLIENT6, SERVER6),
    (b"PROXY UNKNOWN\r\n", "PROXY", None, None),
    (
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        "PROXY",
        None,
        None,
    ),
    (v2(1, 0x11, V4_BLOCK), "PROXY", CLIENT4, SERVER4),
    (v2(1, 0x11, V4_BLOCK + b"\x04\x00\x02xx"), "PROXY", CLIENT4, SERVER4),  # NOOP
    (v2(0, 0x00, b""), "LOCAL", None, None),
    (v2(0, 0x11, V4_BLOCK), "LOCAL", None, None),  # LOCAL ignores addresses
    (v2(1, 0x00, b""), "PROXY", None, None),  # unspecified family
    (
        v2(
            1, 0x31, b"/run/client".ljust(108, b"\0") + b"/run/server".ljust(108, b"\0")
        ),
        "PROXY",
        UNIXAddress(b"/run/client"),
        UNIXAddress(b"/run/server"),
    ),
]


@pytest.mark.parametrize(("header", "command", "source", "destination"), VALID)
def test_valid_headers_whole_with_bytes_after_and_at_every_split(
    header: bytes, command: str, source: object, destination: object
) -> None:
    parsed = parse(header + b"GET / HTTP/1.1\r\n")
    assert isinstance(parsed, ProxyHeader), parsed
    assert (parsed.command, parsed.source, parsed.destination) == (
        command,
        source,
        destination,
    )
    assert parsed.length == len(header)
    for cut in range(len(header)):
        assert parse(header[:cut]) is NEED_MORE, cut


INVALID = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 443\n", "does not end in CRLF"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 5000\r\n", "expected 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 192.0.2.7  198.51.100.1 5000 443\r\n", "expected 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::7 198.51.100.1 5000 443\r\n", "not an IPv4 address"),
    (b"PROXY TCP6 192.0.2.7 2001:db8::1 5000 443\r\n", "not an IPv6 address"),
    (b"PROXY TCP4 192.0.2.07 198.51.100.1 5000 443\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 +500 443\r\n", "port +500 is not a port"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 0500 443\r\n", "port 0500 is not a port"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 65536\r\n", "port 65536 is not a port"),
    (b"PROXY UDP4 192.0.2.7 198.51.100.1 5000 443\r\n", "unknown protocol family"),
    (b"PROXY TCP4 " + b"1" * 120, "no CRLF within 107 bytes"),
    (b"PROXY \x00", "does not end in CRLF"),
    (SIG + b"\x11\x11\x00\x00", "version 1, expected 2"),
    (SIG + b"\x22\x11\x00\x00", "unknown command 0x2"),
    (SIG + b"\x21\x41\x00\x00", "unknown family/protocol 0x41"),
    (v2(1, 0x12, V4_BLOCK), "a datagram (DGRAM) header"),
    (v2(1, 0x11, V4_BLOCK[:8]), "8 bytes of addresses and TLVs, less than the 12"),
    (v2(1, 0x11, V4_BLOCK + b"\x05\x00"), "a TLV cut short"),
    (v2(1, 0x11, V4_BLOCK + b"\x05\x00\x09abc"), "TLV 0x05 says 9 bytes, 3 follow"),
    (v2(1, 0x11, V4_BLOCK + b"\x03\x00\x04\xde\xad\xbe\xef"), "CRC32C checksum"),
    (v2(1, 0x11, V4_BLOCK + b"\x03\x00\x02\x00\x00"), "CRC32C TLV whose value"),
    (v2(1, 0x11, V4_BLOCK + b"\x05\x00\x81" + b"u" * 129), "129-byte UNIQUE_ID"),
    (v2(1, 0x11, V4_BLOCK + b"\x20\x00\x02\x01\x00"), "SSL TLV shorter"),
    (SIG + b"\x21\x11\x10\x00", "a 4112-byte header, more than the 4096 allowed"),
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol signature"),
]


@pytest.mark.parametrize(("data", "reason"), INVALID)
def test_malformed_headers_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    parsed = parse(data)
    assert isinstance(parsed, ProxyError), parsed
    assert reason in parsed.detail
    # More bytes never turn a refusal into a header.
    assert isinstance(parse(data + b"\r\n" + bytes(64)), ProxyError)


def test_the_v2_bound_is_configurable_and_checked_on_the_fixed_part() -> None:
    big = v2(1, 0x11, V4_BLOCK + b"\x04\x00\x40" + bytes(64))
    assert isinstance(parse(big), ProxyHeader)
    refused = parse(big[:16], max_v2_bytes=64)  # known to be too long at once
    assert isinstance(refused, ProxyError)
    assert "more than the 64 allowed" in refused.detail


def test_tlvs_are_read_alpn_authority_unique_id_netns_and_ssl() -> None:
    ssl = b"\x07" + b"\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x05alice"
    header = build_v2(
        CLIENT4,
        SERVER4,
        [
            (0x01, b"h2"),
            (0x02, b"example.com"),
            (0x05, b"id-1"),
            (0x30, b"blue"),
            (0x20, ssl),
        ],
        checksum=True,
    )
    parsed = parse(header)
    assert isinstance(parsed, ProxyHeader)
    assert (parsed.alpn, parsed.authority, parsed.unique_id, parsed.netns) == (
        b"h2",
        "example.com",
        b"id-1",
        "blue",
    )
    assert parsed.ssl is not None
    assert (parsed.ssl.version, parsed.ssl.common_name, parsed.ssl.verified) == (
        "TLSv1.3",
        "alice",
        True,
    )
    assert parsed.tlv(0x03) is not None  # the checksum, verified
    # One flipped bit anywhere after the signature fails the checksum (or the
    # syntax), but in the checksum TLV's own type byte: that makes it another TLV.
    crc_type = len(header) - 7
    for position in range(12, len(header)):
        flipped = bytearray(header)
        flipped[position] ^= 0x01
        result = parse(bytes(flipped))
        assert isinstance(result, ProxyHeader) == (position == crc_type), position


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 appendix B.4


def test_signature_decides_on_the_first_bytes() -> None:
    assert [signature(b""), signature(b"PROX"), signature(b"\r\n\r")] == [None] * 3
    assert signature(b"PROXY ") and signature(SIG)
    assert signature(b"PROPFIND") is False
    assert signature(b"\r\n\r\n GET") is False


# -- properties -----------------------------------------------------------------

hosts4 = st.ip_addresses(v=4).map(str)
hosts6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
tlv_lists = st.lists(
    st.tuples(
        st.sampled_from([0x01, 0x02, 0x04, 0x05, 0x30, 0xE0]), st.binary(max_size=40)
    ),
    max_size=5,
)


@st.composite
def address_pairs(draw: st.DrawFn) -> tuple[object, object]:
    if draw(st.booleans()):
        return (
            IPv4Address("TCP", draw(hosts4), draw(ports)),
            IPv4Address("TCP", draw(hosts4), draw(ports)),
        )
    return (
        IPv6Address("TCP", draw(hosts6), draw(ports)),
        IPv6Address("TCP", draw(hosts6), draw(ports)),
    )


@given(address_pairs(), tlv_lists, st.booleans(), st.binary(max_size=20))
def test_built_v2_headers_parse_back_to_what_was_built(
    pair: tuple[IPv4Address, IPv4Address],
    tlvs: list[tuple[int, bytes]],
    checksum: bool,
    after: bytes,
) -> None:
    tlvs = [(k, v[:128]) for k, v in tlvs]
    header = build_v2(*pair, tlvs, checksum=checksum)
    parsed = parse(header + after)
    assert isinstance(parsed, ProxyHeader), parsed
    assert (parsed.source, parsed.destination, parsed.length) == (*pair, len(header))
    assert [t for t in parsed.tlvs if t[0] != 0x03] == tlvs


@given(address_pairs(), st.binary(max_size=20))
def test_built_v1_headers_parse_back(
    pair: tuple[IPv4Address, IPv4Address], after: bytes
) -> None:
    header = build_v1(*pair)
    parsed = parse(header + after)
    assert isinstance(parsed, ProxyHeader), (header, parsed)
    assert (parsed.source, parsed.destination) == pair


@given(
    st.sampled_from([b"PROXY ", SIG, b""]),
    st.binary(max_size=300),
    st.integers(16, 600),
)
def test_no_input_raises_and_every_prefix_agrees(
    start: bytes, rest: bytes, bound: int
) -> None:
    data = start + rest
    whole = parse(data, bound)
    assert whole is NEED_MORE or isinstance(whole, ProxyHeader | ProxyError)
    for cut in range(len(data)):
        early = parse(data[:cut], bound)
        if early is NEED_MORE:
            continue
        # A decision made on a prefix stands for every extension of it.
        assert type(early) is type(whole), (cut, early, whole)
        if isinstance(early, ProxyHeader):
            assert early == whole
