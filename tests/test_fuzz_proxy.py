"""Fuzzing the PROXY protocol parser (v1, v2) and the detector's PROXY stage.

On random bytes, mutated headers and generated v2 headers with random
addresses and TLVs (CRC32C right and wrong, SSL with sub-TLVs, oversized
UNIQUE_ID), :func:`txcmux._proxy._parser.parse` answers a header, a
:class:`ProxyError` or ``NEED_MORE``, never raises, and never asks for more
than its bound; its answer for a prefix is the answer for the whole once
decided.  A detector with a PROXY prelude, fed the same bytes cut anywhere,
decides the same and never buffers past the bound undecided.
"""

from __future__ import annotations

import struct

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux._proxy._build import v1, v2
from txcmux._proxy._crc32c import crc32c
from txcmux._proxy._parser import (
    PP2_TYPE_CRC32C,
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    parse,
)
from txcmux._proxy._stage import ProxyPrelude
from txcmux.matchers import NEED_MORE
from txcmux.testing import SwitchHarness, split_at

from .fuzzing import CLIENT, LOCAL, OUTSIDER, fuzz_settings, mutated
from .test_fuzz_matchers import failures_logged

# -- generated headers ----------------------------------------------------------

ipv4 = st.builds(
    lambda raw, port: IPv4Address("TCP", ".".join(map(str, raw)), port),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 65535),
)
ipv6 = st.builds(
    lambda raw, port: IPv6Address(
        "TCP", ":".join(raw[i : i + 2].hex() for i in range(0, 16, 2)), port
    ),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 65535),
)
unix = st.builds(UNIXAddress, st.binary(min_size=1, max_size=120))
pairs = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), st.tuples(unix, unix))


@st.composite
def ssl_tlv(draw: st.DrawFn) -> bytes:
    """A PP2_TYPE_SSL value: client bits, verify, sub-TLVs (sometimes cut)."""
    subs = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0x21, 0x22, 0x23, 0x24, 0x25, 0x99]),
                st.binary(max_size=20),
            ),
            max_size=4,
        )
    )
    value = bytes([draw(st.integers(0, 7))]) + draw(st.binary(min_size=4, max_size=4))
    value += b"".join(struct.pack("!BH", k, len(v)) + v for k, v in subs)
    return value[: draw(st.integers(0, len(value)))] if draw(st.booleans()) else value


tlvs = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from([0x01, 0x02, 0x04, 0x30, 0xE0, 0xEE]),
            st.binary(max_size=40),
        ),
        st.tuples(st.just(0x05), st.binary(max_size=140)),
        st.tuples(st.just(0x20), ssl_tlv()),
        st.tuples(st.just(PP2_TYPE_CRC32C), st.binary(max_size=6)),
    ),
    max_size=5,
)


@st.composite
def v2_headers(draw: st.DrawFn) -> bytes:
    """A v2 header: valid addresses and TLVs, then now and then one field off."""
    local = draw(st.integers(0, 9)) == 0
    source, destination = draw(pairs)
    header = v2(
        None if local else source,
        destination,
        draw(tlvs),
        checksum=draw(st.booleans()),
    )
    fields = draw(st.integers(0, 3))
    if fields == 1:  # the version/command or family/protocol byte
        at = draw(st.sampled_from([12, 13]))
        header = header[:at] + bytes([draw(st.integers(0, 255))]) + header[at + 1 :]
    elif fields == 2:  # the length
        size = draw(st.integers(0, 0xFFFF))
        header = header[:14] + size.to_bytes(2, "big") + header[16:]
    elif fields == 3 and len(header) > 20:  # a recomputed checksum over damage
        header = draw(mutated({"h": header}))
        if header.startswith(V2_SIGNATURE):
            at = header.find(bytes([PP2_TYPE_CRC32C, 0, 4]))
            if at > 16 and at + 7 <= len(header):
                zeroed = header[: at + 3] + b"\0" * 4 + header[at + 7 :]
                header = (
                    zeroed[: at + 3] + crc32c(zeroed).to_bytes(4) + header[at + 7 :]
                )
    return header + draw(st.binary(max_size=16))


@st.composite
def v1_headers(draw: st.DrawFn) -> bytes:
    """A v1 line from real addresses, now and then mutated."""
    source, destination = draw(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)))
    line = v1(source, destination)
    if draw(st.booleans()):
        line = draw(mutated({"line": line, "unknown": b"PROXY UNKNOWN\r\n"}))
    return line + draw(st.binary(max_size=16))


#: A v1 line's words from the bytes that matter to its grammar.
v1_words = st.builds(
    lambda start, tail: start + bytes(tail),
    st.sampled_from(
        [b"PROXY UNKNOWN ", b"PROXY UNKNOWN", b"PROXY TCP4 ", b"PROXY TCP6 "]
    ),
    st.lists(st.sampled_from(b" \r\n\x00.:019aUNKTCP"), max_size=50),
)

headers = st.one_of(
    v1_headers(),
    v1_words,
    v2_headers(),
    st.binary(max_size=200).map(lambda tail: V2_SIGNATURE + tail),
    st.binary(max_size=120).map(lambda tail: b"PROXY " + tail),
    mutated(),
    st.binary(max_size=64),
)

bounds = st.sampled_from([16, 28, 52, 232, 4096])


def _kind(result: object) -> str:
    if isinstance(result, ProxyHeader):
        return "header"
    if isinstance(result, ProxyError):
        return "error"
    assert result is NEED_MORE, result
    return "need more"


@fuzz_settings(600)
@given(data=headers, bound=bounds, cuts=st.lists(st.integers(0, 300), max_size=10))
def test_the_parser_answers_within_its_bound_and_never_changes_its_mind(
    data: bytes, bound: int, cuts: list[int]
) -> None:
    whole = parse(data, bound)
    kind = _kind(whole)
    is_v2 = data.startswith(V2_SIGNATURE)
    limit = bound if is_v2 else V1_MAX_BYTES
    if kind == "need more":
        assert len(data) < limit
    if isinstance(whole, ProxyHeader):
        assert whole.length <= len(data)
        assert whole.length <= limit
        assert whole.version == (2 if is_v2 else 1)
        assert parse(data[: whole.length], bound) == whole
    decided_at = None
    for end in sorted({*range(min(len(data), 40) + 1), *cuts, len(data)}):
        if end > len(data):
            continue
        found = parse(data[:end], bound)
        if decided_at is not None:
            assert _kind(found) == kind, (data[:end], found, whole)
            if kind == "header":
                assert found == whole
        elif _kind(found) != "need more":
            decided_at = end
            assert _kind(found) == kind, (data[:end], found, whole)


@fuzz_settings(200)
@given(data=v2_headers())
def test_valid_v2_headers_read_back(data: bytes) -> None:
    found = parse(data)
    assume(isinstance(found, ProxyHeader))
    assert isinstance(found, ProxyHeader)
    # Every TLV the parser returns lies inside the header it measured.
    assert sum(3 + len(v) for _, v in found.tlvs) <= found.length - 16


def _harness(prelude: ProxyPrelude) -> SwitchHarness:
    """A harness whose factory reads ``prelude`` before two routes."""
    harness = SwitchHarness({"web": matchers.http1(), "ssh": matchers.ssh()})
    harness.factory = ProtocolSwitchingFactory(
        [
            Route(name, m, harness.targets[name])
            for name, m in (("web", matchers.http1()), ("ssh", matchers.ssh()))
        ],
        on_error=harness.rejections.append,
        clock=harness.clock,
        prelude=prelude,
    )
    harness.factory.doStart()  # type: ignore[no-untyped-call]
    return harness


_REASONS = {
    None,
    "proxy_invalid",
    "proxy_untrusted",
    "proxy_missing",
    "too_long",
    "no_match",
}


@fuzz_settings(300)
@given(
    header=headers,
    request=st.sampled_from([b"GET / HTTP/1.1\r\n\r\n", b"SSH-2.0-x\r\n", b""]),
    mode=st.sampled_from(["required", "optional"]),
    bound=bounds,
    cuts=st.lists(st.integers(0, 300), max_size=10),
    eof=st.booleans(),
    peer=st.sampled_from([CLIENT, OUTSIDER]),
)
def test_the_proxy_stage_decides_the_same_whatever_the_split(
    header: bytes,
    request: bytes,
    mode: str,
    bound: int,
    cuts: list[int],
    eof: bool,
    peer: IPv4Address | IPv6Address,
) -> None:
    data = header + request
    with failures_logged() as failures:
        harness = _harness(ProxyPrelude(mode, ["10.0.0.0/8"], max_v2_bytes=bound))
        whole = harness.feed(data, eof=eof, peer=peer, host=LOCAL)
        split = harness.feed(*split_at(data, *cuts), eof=eof, peer=peer, host=LOCAL)
        assert (split.route, split.rejected) == (whole.route, whole.rejected)
        assert whole.rejected in _REASONS
        assert split.replayed == whole.replayed
        if whole.decision == "waiting":
            # Undecided only while the header may still be shorter than the bound.
            assert len(data) < max(bound, V1_MAX_BYTES)
        if whole.rejected == "too_long":
            assert len(data) >= min(bound, V1_MAX_BYTES)
    assert not failures


def test_a_v1_line_with_a_bare_lf_or_nul_is_refused_however_it_arrives() -> None:
    # "PROXY UNKNOWN \0\r\n" was refused read byte by byte (no CRLF yet, a
    # NUL seen) but accepted in one read (UNKNOWN ignores the rest).
    for line in (b"PROXY UNKNOWN \x00\r\n", b"PROXY UNKNOWN \n x\r\n"):
        for end in range(len("PROXY UNKNOWN ") + 1, len(line) + 1):
            assert isinstance(parse(line[:end]), ProxyError), line[:end]
    harness = _harness(ProxyPrelude("required"))
    line = b"PROXY UNKNOWN \x00\r\nGET / HTTP/1.1\r\n\r\n"
    assert harness.feed(line).rejected == "proxy_invalid"
    assert harness.feed(*split_at(line, 15)).rejected == "proxy_invalid"
