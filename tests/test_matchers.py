"""Table tests for every matcher, on truncated and extended input."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txcmux import matchers
from txcmux.matchers import EMPTY_SETTINGS, PREFACE, Outcome

from .captures import SETTINGS_ACK, capture, http2_opening

M, N, W = Outcome.MATCH, Outcome.NO_MATCH, Outcome.NEED_MORE


def outcome(matcher: matchers.Matcher, data: bytes) -> Outcome:
    return matcher(data).outcome


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream.to_bytes(4, "big")
        + payload
    )


def headers_block(*fields: tuple[str, str]) -> bytes:
    return hpack.Encoder().encode(list(fields))


SETTINGS = frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")
REQUEST = (
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/pkg.Svc/Call"),
    (":authority", "localhost"),
    ("content-type", "application/grpc+proto"),
    ("te", "trailers"),
)


@pytest.mark.parametrize(
    ("matcher", "data", "expected"),
    [
        (matchers.any(), b"", M),
        (matchers.any(), b"anything", M),
        (matchers.prefix(b"ECHO "), b"", W),
        (matchers.prefix(b"ECHO "), b"ECH", W),
        (matchers.prefix(b"ECHO "), b"ECHO ", M),
        (matchers.prefix(b"ECHO "), b"ECHO hello", M),
        (matchers.prefix(b"ECHO "), b"ECHX", N),
        (matchers.prefix(b"A", b"BB"), b"B", W),
        (matchers.prefix(b"A", b"BB"), b"BB", M),
        (matchers.prefix(b"A", b"BB"), b"C", N),
        (matchers.ssh(), b"SSH-2.", W),
        (matchers.ssh(), capture("openssh-client.bin"), M),
        (matchers.ssh(), b"SSH-1.99-x", M),
        (matchers.ssh(), b"SSH-1.5-old", N),
        (matchers.ssh(), b"GET / HTTP/1.1\r\n", N),
    ],
)
def test_simple_matchers(
    matcher: matchers.Matcher, data: bytes, expected: Outcome
) -> None:
    assert outcome(matcher, data) is expected


@pytest.mark.parametrize(
    "method",
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"],
)
def test_http1_fast_knows_every_rfc9110_method_and_patch(method: str) -> None:
    request = f"{method} / HTTP/1.1\r\n".encode()
    fast = matchers.http1_fast()
    assert outcome(fast, request) is M
    assert outcome(fast, request[: len(method)]) is W  # the space decides
    assert outcome(matchers.http1(), request) is M


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"G", W),
        (b"GET", W),
        (b"GETX / HTTP/1.1\r\n", N),
        (b"PROPFIND / HTTP/1.1\r\n", N),
        (b"get / HTTP/1.1\r\n", N),
        (b"\x16\x03\x01", N),
    ],
)
def test_http1_fast_table(data: bytes, expected: Outcome) -> None:
    assert outcome(matchers.http1_fast(), data) is expected


def test_http1_fast_extra_methods_must_be_tokens() -> None:
    assert outcome(matchers.http1_fast("PROPFIND"), b"PROPFIND /x HTTP/1.1\r\n") is M
    with pytest.raises(ValueError, match="not an HTTP method token"):
        matchers.http1_fast("BAD METHOD")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (capture("curl-http1.1.bin"), M),
        (b"GET / HTTP/1.0\r\n", M),
        (b"GET / HTTP/1.1\n", M),  # a bare LF is tolerated (RFC 9112 2.2)
        (b"PROPFIND /dav HTTP/1.1\r\n", M),  # any token method
        (b"GET / HTTP/1.1", W),
        (b"GET / HTTP/1.1\r", W),
        (b"GET / HTTP/1.", W),
        (b"GET /", W),
        (b"", W),
        (PREFACE, N),  # PRI * HTTP/2.0
        (b"GET / HTTP/2.0\r\n", N),
        (b"GET / HTTP/1.x\r\n", N),
        (b"GET / HTTX", N),
        (b"GET  / HTTP/1.1\r\n", N),
        (b"GET /\x01 HTTP/1.1\r\n", N),
        (b"GET / HTTP/1.1\rX", N),
        (b"(GET) / HTTP/1.1\r\n", N),
        (capture("openssh-client.bin"), N),
        (capture("curl-tls-clienthello.bin"), N),
    ],
)
def test_http1_request_line(data: bytes, expected: Outcome) -> None:
    assert outcome(matchers.http1(), data) is expected


def test_http1_gives_up_at_its_bound() -> None:
    line = b"GET /" + b"a" * 100
    bounded = matchers.http1(max_request_line=50)
    assert bounded.max_bytes == 50
    assert outcome(bounded, line[:49]) is W
    assert outcome(bounded, line[:50]) is N
    assert outcome(bounded, line) is N
    assert outcome(matchers.http1(), line) is W


def test_http1_header_gives_up_at_its_bound() -> None:
    opening = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Long: " + b"a" * 100
    bounded = matchers.http1_header("Upgrade", "websocket", max_bytes=60)
    assert outcome(bounded, opening[:59]) is W
    assert outcome(bounded, opening[:60]) is N
    assert outcome(matchers.http1_header("Upgrade", "websocket"), opening) is W


WEBSOCKET = (
    b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade:  WebSocket \r\n"
    b"Connection: Upgrade\r\n\r\n"
)


@pytest.mark.parametrize(
    ("matcher", "data", "expected"),
    [
        (matchers.http1_header("Upgrade", "websocket"), WEBSOCKET, M),
        (matchers.http1_header("upgrade", "websocket"), WEBSOCKET[:60], W),
        (
            matchers.http1_header("Upgrade", "websocket"),
            WEBSOCKET.replace(b"Upgrade:", b"X:"),
            N,
        ),
        (matchers.http1_header("host", "example"), WEBSOCKET, N),
        (matchers.http1_header("host", "example", prefix=True), WEBSOCKET, M),
        (matchers.http1_header("host", "example.com"), WEBSOCKET[:30], W),
        (matchers.http1_header("host", "example.com"), WEBSOCKET[:40], M),
        (
            matchers.http1_header("host", "127.0.0.1", prefix=True),
            capture("curl-http1.1.bin"),
            M,
        ),
        (
            matchers.http1_header("x-a", "1"),
            b"GET / HTTP/1.1\r\nX-A: 2\r\nX-A: 1\r\n",
            M,
        ),
        (matchers.http1_header("x-a", "1"), b"GET / HTTP/1.1\r\n  folded\r\n", N),
        (matchers.http1_header("x-a", "1"), b"GET / HTTP/1.1\r\nno colon\r\n", N),
        (matchers.http1_header("x-a", "1"), PREFACE, N),
        (matchers.http1_header("x-a", "1"), b"GET / HTTP/1.1\nX-A: 1\n", M),
    ],
)
def test_http1_header(
    matcher: matchers.Matcher, data: bytes, expected: Outcome
) -> None:
    assert outcome(matcher, data) is expected


def test_http1_header_rejects_a_bad_name() -> None:
    with pytest.raises(ValueError, match="not an HTTP field name"):
        matchers.http1_header("bad name", "x")


def h2_request(*fields: tuple[str, str], flags: int = 0x4, extra: bytes = b"") -> bytes:
    return PREFACE + SETTINGS + frame(1, flags, 1, extra + headers_block(*fields))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", W),
        (PREFACE[:10], W),
        (PREFACE, M),
        (PREFACE + b"whatever", M),
        (b"PRI * HTTP/1.1\r\n", N),
        (b"GET / HTTP/1.1\r\n", N),
    ],
)
def test_http2_preface(data: bytes, expected: Outcome) -> None:
    assert outcome(matchers.http2(), data) is expected


def test_grpc_on_real_clients() -> None:
    grpc = matchers.grpc()
    for client in ("grpcio-unary", "grpc-js-unary"):
        before = capture(f"{client}.before-settings.bin")
        waiting = grpc(before)
        assert waiting.outcome is W
        # These clients wait for our SETTINGS; theirs are acknowledged.
        assert waiting.send == EMPTY_SETTINGS + SETTINGS_ACK
        assert outcome(grpc, http2_opening(client)) is M
    # h2load does not wait: its HEADERS come before any SETTINGS of ours.
    assert outcome(grpc, capture("h2load-grpc.before-settings.bin")) is M
    # curl's h2c request has no gRPC content-type.
    assert outcome(grpc, capture("curl-h2c-prior-knowledge.before-settings.bin")) is N


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/grpc", M),
        ("application/grpc+proto", M),
        ("application/grpc+json", M),
        ("application/grpc-web", N),
        ("application/grpc-web+proto", N),
        ("application/json", N),
    ],
)
def test_grpc_content_types(content_type: str, expected: Outcome) -> None:
    fields = (*REQUEST[:4], ("content-type", content_type))
    assert outcome(matchers.grpc(), h2_request(*fields)) is expected


def test_http2_header_padding_priority_and_continuation() -> None:
    wanted = matchers.http2_header("x-route", "b")
    block = headers_block(*REQUEST[:4], ("x-route", "b"))
    padded = frame(1, 0x4 | 0x8, 1, bytes([3]) + block + b"\x00" * 3)
    assert outcome(wanted, PREFACE + padded) is M
    prioritised = frame(1, 0x4 | 0x20, 1, b"\x00\x00\x00\x00\x10" + block)
    assert outcome(wanted, PREFACE + prioritised) is M
    split = (
        frame(1, 0, 1, block[:5])
        + frame(9, 0, 1, block[5:9])
        + frame(9, 0x4, 1, block[9:])
    )
    assert outcome(wanted, PREFACE + SETTINGS + split) is M
    assert outcome(wanted, PREFACE + SETTINGS + split[:-3]) is W
    # A CONTINUATION on another stream, or another frame in between, is an error.
    wrong_stream = frame(1, 0, 1, block[:5]) + frame(9, 0x4, 3, block[5:])
    assert outcome(wanted, PREFACE + wrong_stream) is N
    interleaved = frame(1, 0, 1, block[:5]) + SETTINGS + frame(9, 0x4, 1, block[5:])
    assert outcome(wanted, PREFACE + interleaved) is N


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (matchers.http2_header(":path", "/pkg.Svc/Call"), M),
        (matchers.http2_header(":path", "/pkg.Svc/", prefix=True), M),
        (matchers.http2_header(":path", "/pkg.Svc/"), N),
        (matchers.http2_header("Content-Type", "application/grpc+proto"), M),
        (matchers.http2_header("content-type", "application/grpc"), N),
        (matchers.http2_header(":authority", "localhost"), M),
    ],
)
def test_http2_header_values(matcher: matchers.Matcher, expected: Outcome) -> None:
    assert outcome(matcher, h2_request(*REQUEST)) is expected


@pytest.mark.parametrize(
    ("opening", "reason"),
    [
        (PREFACE + frame(0, 0, 1, b"data"), "DATA before HEADERS"),
        (PREFACE + frame(1, 0x4, 2, headers_block(*REQUEST)), "even stream id"),
        (PREFACE + frame(1, 0x4, 0, headers_block(*REQUEST)), "stream 0"),
        (PREFACE + frame(1, 0x4, 1, b"\xff\xff\xff\xff"), "bad HPACK"),
        (PREFACE + frame(1, 0x4 | 0x8, 1, b"\x09abc"), "padding longer than frame"),
        (PREFACE + frame(1, 0x4 | 0x8, 1, b""), "padded, empty"),
        (PREFACE + b"\x00\x40\x01\x04\x00\x00\x00\x00\x00", "frame over 16384"),
        (PREFACE + frame(9, 0x4, 1, b""), "CONTINUATION first"),
        (PREFACE + frame(7, 0, 0, b"\x00" * 8), "GOAWAY"),
    ],
)
def test_http2_header_rejects_bad_openings(opening: bytes, reason: str) -> None:
    assert outcome(matchers.grpc(), opening) is N, reason


def test_http2_header_skips_extension_frames_and_ping() -> None:
    extras = (
        frame(0xFA, 0, 0, b"ext")
        + frame(6, 0, 0, b"12345678")
        + frame(8, 0, 0, b"\0\0\0\1")
    )
    data = PREFACE + SETTINGS + extras + frame(1, 0x4, 1, headers_block(*REQUEST))
    assert outcome(matchers.grpc(), data) is M


def test_http2_header_without_settings_sends_nothing() -> None:
    quiet = matchers.http2_header("x", "y", send_settings=False)
    verdict = quiet(PREFACE + SETTINGS)
    assert verdict.outcome is W
    assert verdict.send == b""
    # Before the whole preface is in, not even the loud one asks to send.
    assert matchers.grpc()(PREFACE[:-1]).send == b""


@pytest.mark.parametrize(
    ("matcher", "data", "expected"),
    [
        # The rest of the TLS tables (captures, records, SNI, ALPN, versions,
        # malformed hellos) are in tests/test_tls_matcher.py.
        (matchers.tls(), b"\x15\x03\x01", N),  # an alert, decided on 1 byte
        (matchers.tls(versions="TLSv1.1"), capture("chromium-tls-clienthello.bin"), N),
        (matchers.tls(versions="TLSv1.3"), capture("chromium-tls-clienthello.bin"), M),
    ],
)
def test_tls_version_spellings_and_early_rejection(
    matcher: matchers.Matcher, data: bytes, expected: Outcome
) -> None:
    assert outcome(matcher, data) is expected


def test_extra_matchers() -> None:
    redis, postgres = matchers.redis(), matchers.postgres()
    assert outcome(redis, b"*1\r\n$4\r\nPING\r\n") is M
    assert outcome(redis, b"*1\r") is W
    assert outcome(redis, b"*x") is N
    assert outcome(redis, b"PING\r\n") is N
    startup = (
        (8 + 19).to_bytes(4, "big") + (196608).to_bytes(4, "big") + b"user\0bob\0\0"
    )
    ssl_request = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
    assert outcome(postgres, startup) is M
    assert outcome(postgres, ssl_request) is M
    assert outcome(postgres, ssl_request[:5]) is W
    assert outcome(postgres, b"GET / HTTP/1.1") is N


def test_matchers_check_their_arguments() -> None:
    with pytest.raises(ValueError):
        matchers.prefix()
    with pytest.raises(ValueError):
        matchers.prefix(b"")
    with pytest.raises(ValueError, match="unknown TLS version"):
        matchers.tls(versions="2.0")


_REQUEST_LINE_PIECES = [
    b"GET",
    b"PROPFIND",
    b"G(T",
    b" ",
    b"  ",
    b"/",
    b"/a?b=c",
    b"*",
    b"\x80\xff",
    b"\x7f",
    b"\t",
    b"\x00",
    b"HTTP/1.",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"HTTP/1.x",
    b"1",
    b"\r",
    b"\n",
    b"\r\n",
    b"Host: x\r\n",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_REQUEST_LINE_PIECES), max_size=10).map(b"".join))
def test_the_request_line_regex_agrees_with_the_byte_scan(data: bytes) -> None:
    """The fast path (one regex) and the byte-by-byte scan accept the same lines."""
    from txcmux.matchers._http1 import _REQUEST_LINE, _scan_request_line

    scanned = _scan_request_line(data)
    matched = _REQUEST_LINE.match(data)
    assert (matched.end() if matched else None) == (
        scanned if isinstance(scanned, int) else None
    )
