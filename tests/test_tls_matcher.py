"""The TLS ClientHello parser and the ``matchers.tls()`` matcher.

Table tests on hand-built ClientHellos (one record, many records, truncated,
extended, malformed), the real curl and Chromium captures whole and split at
every offset (through a real detector), and Hypothesis tests that random or
mutated bytes never make the parser raise and that decisions never change
as more bytes arrive.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.testing import StringTransport

from txcmux import ConfigurationError, ProtocolSwitchingFactory, Route, matchers
from txcmux.matchers import ClientHello, Outcome, Verdict, parse_client_hello

from .captures import capture
from .recording import RecordingFactory

M, N, W = Outcome.MATCH, Outcome.NO_MATCH, Outcome.NEED_MORE

CURL = capture("curl-tls-clienthello.bin")
CHROMIUM = capture("chromium-tls-clienthello.bin")
GREASE = 0x1A1A


# -- building ClientHellos -----------------------------------------------------


def _vector(length_size: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(length_size, "big") + payload


def _extension(kind: int, payload: bytes) -> bytes:
    return kind.to_bytes(2, "big") + _vector(2, payload)


def sni_extension(*names: str | bytes, name_type: int = 0) -> bytes:
    entries = b"".join(
        bytes([name_type]) + _vector(2, n.encode("ascii") if isinstance(n, str) else n)
        for n in names
    )
    return _extension(0, _vector(2, entries))


def alpn_extension(*protocols: str) -> bytes:
    listed = b"".join(_vector(1, p.encode("ascii")) for p in protocols)
    return _extension(16, _vector(2, listed))


def versions_extension(*versions: int) -> bytes:
    listed = b"".join(v.to_bytes(2, "big") for v in versions)
    return _extension(43, _vector(1, listed))


def hello_body(
    *extensions: bytes,
    legacy_version: int = 0x0303,
    session_id: bytes = b"\x11" * 32,
    with_extensions: bool = True,
) -> bytes:
    body = (
        legacy_version.to_bytes(2, "big")
        + b"\x22" * 32
        + _vector(1, session_id)
        + _vector(2, b"\x13\x01\x13\x02\xc0\x2f")
        + _vector(1, b"\x00")
    )
    if with_extensions:
        body += _vector(2, b"".join(extensions))
    return body


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, *sizes: int, version: bytes = b"\x03\x01") -> bytes:
    """Cut ``message`` into handshake records of ``sizes`` (the rest last)."""
    out = b""
    position = 0
    for size in (*sizes, len(message)):
        fragment = message[position : position + size]
        if not fragment:
            break
        out += b"\x16" + version + _vector(2, fragment)
        position += len(fragment)
    return out


def hello(*extensions: bytes, **options: object) -> bytes:
    """A whole ClientHello in one record."""
    return records(handshake(hello_body(*extensions, **options)))  # type: ignore[arg-type]


MODERN = hello(
    sni_extension("Www.Example.COM"),
    alpn_extension("h2", "http/1.1"),
    versions_extension(GREASE, 0x0304, 0x0303),
)


# -- the parser ----------------------------------------------------------------


def test_captures_parse() -> None:
    assert parse_client_hello(CURL) == ClientHello(
        frozenset({"1.0", "1.1", "1.2", "1.3"}), "localhost", ("h2", "http/1.1")
    )
    assert parse_client_hello(CHROMIUM) == ClientHello(
        frozenset({"1.2", "1.3"}), "localhost", ("h2", "http/1.1")
    )


def test_hand_built_hello_parses() -> None:
    assert parse_client_hello(MODERN) == ClientHello(
        frozenset({"1.2", "1.3"}), "www.example.com", ("h2", "http/1.1")
    )


@pytest.mark.parametrize(
    "data", [CURL, CHROMIUM, MODERN], ids=["curl", "chromium", "built"]
)
def test_every_truncation_needs_more(data: bytes) -> None:
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is matchers.NEED_MORE, end


@pytest.mark.parametrize(
    "data", [CURL, CHROMIUM, MODERN], ids=["curl", "chromium", "built"]
)
@pytest.mark.parametrize(
    "tail", [b"", b"\x00", b"\x16\x03\x01\x00\x05", b"GET / HTTP/1.1\r\n", bytes(4096)]
)
def test_extended_input_parses_the_same(data: bytes, tail: bytes) -> None:
    assert parse_client_hello(data + tail) == parse_client_hello(data)


@pytest.mark.parametrize(
    "sizes",
    [(1,), (2,), (3,), (4,), (5,), (1, 1, 1, 1), (40,), (1, 60, 7), (10,) * 20],
    ids=str,
)
def test_hello_spanning_several_records(sizes: tuple[int, ...]) -> None:
    message = handshake(
        hello_body(
            sni_extension("multi.example"),
            alpn_extension("h2"),
            versions_extension(0x0304),
        )
    )
    data = records(message, *sizes)
    assert data.count(b"\x16\x03\x01") >= 2
    assert parse_client_hello(data) == ClientHello(
        frozenset({"1.3"}), "multi.example", ("h2",)
    )
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is matchers.NEED_MORE, end


def test_capture_recut_into_records() -> None:
    message = CHROMIUM[5:]
    for size in (1, 100, 512, 1000):
        data = records(message, *([size] * (len(message) // size)))
        assert parse_client_hello(data) == parse_client_hello(CHROMIUM)


def test_record_version_0300_and_0303_are_read() -> None:
    message = handshake(hello_body(sni_extension("v.example")))
    for version in (b"\x03\x00", b"\x03\x03"):
        parsed = parse_client_hello(records(message, 20, version=version))
        assert isinstance(parsed, ClientHello)
        assert parsed.server_name == "v.example"


def test_hello_without_extensions() -> None:
    data = records(handshake(hello_body(with_extensions=False, legacy_version=0x0302)))
    assert parse_client_hello(data) == ClientHello(frozenset({"1.0", "1.1"}), None, ())


def test_only_grease_versions_offer_nothing_known() -> None:
    parsed = parse_client_hello(hello(versions_extension(GREASE, 0x7F1C)))
    assert isinstance(parsed, ClientHello)
    assert parsed.versions == frozenset()


def test_unknown_name_types_are_skipped() -> None:
    extension = _extension(
        0,
        _vector(
            2, b"\x07" + _vector(2, b"opaque") + b"\x00" + _vector(2, b"x.example")
        ),
    )
    parsed = parse_client_hello(hello(extension))
    assert isinstance(parsed, ClientHello)
    assert parsed.server_name == "x.example"


def _body_bytes(body: bytes) -> bytes:
    return records(handshake(body))


MESSAGE = handshake(hello_body(sni_extension("a.example")))

MALFORMED = {
    "alert record": b"\x15\x03\x01\x00\x02\x02\x28",
    "application data": b"\x17\x03\x03\x00\x05hello",
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "sslv2 hello": b"\x80\x2e\x01\x00\x02\x00\x15",
    "record version 2": b"\x16\x02\x01\x00\x05\x01\x00\x00\x01\x00",
    "record version 3.9": b"\x16\x03\x09\x00\x05\x01\x00\x00\x01\x00",
    "empty record": b"\x16\x03\x01\x00\x00",
    "record too long": b"\x16\x03\x01\xff\xff\x01",
    "server hello": b"\x16\x03\x03\x00\x30\x02\x00\x00\x2c",
    "second record not handshake": records(MESSAGE, 10)[:15]
    + b"\x17"
    + records(MESSAGE, 10)[16:],
    "second record empty": records(MESSAGE, 10)[:15] + b"\x16\x03\x01\x00\x00",
    "second record version 2": records(MESSAGE, 10)[:15] + b"\x16\x02\x01\x00\x01",
    "truncated body": _body_bytes(hello_body()[:30]),
    "session id overflows": _body_bytes(b"\x03\x03" + bytes(32) + b"\x40" + bytes(10)),
    "extensions overflow": _body_bytes(hello_body()[:-2] + b"\x40\x00"),
    "extension overflows": _body_bytes(hello_body(b"\x00\x10\x40\x00" + b"\x00\x02")),
    "sni list overflows": _body_bytes(hello_body(_extension(0, b"\x00\x40\x00"))),
    "sni name overflows": _body_bytes(
        hello_body(_extension(0, _vector(2, b"\x00\x00\x40abc")))
    ),
    "alpn name overflows": _body_bytes(
        hello_body(_extension(16, _vector(2, b"\x09h2")))
    ),
    "odd supported_versions": _body_bytes(
        hello_body(_extension(43, b"\x03\x03\x04\x03"))
    ),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_is_no_match(data: bytes) -> None:
    assert parse_client_hello(data) is matchers.NO_MATCH
    assert matchers.tls(sni="a.example")(data).outcome is N
    # and stays so however much more arrives
    assert parse_client_hello(data + bytes(300)) is matchers.NO_MATCH


def test_hello_bigger_than_the_limit_is_no_match() -> None:
    big = hello(_extension(21, bytes(3000)), sni_extension("big.example"))
    assert parse_client_hello(big, limit=2048) is matchers.NO_MATCH
    assert parse_client_hello(big[:20], limit=2048) is matchers.NO_MATCH
    parsed = parse_client_hello(big)
    assert isinstance(parsed, ClientHello)
    assert parsed.server_name == "big.example"
    assert matchers.tls(sni="big.example", max_bytes=2048)(big).outcome is N


# -- the matcher ---------------------------------------------------------------


def outcome(matcher: matchers.Matcher, data: bytes) -> Outcome:
    return matcher(data).outcome


SNI_CASES = [
    ("localhost", CURL, M),
    ("LOCALHOST", CURL, M),
    ("localhost.", CHROMIUM, M),
    ("other", CURL, N),
    ("www.example.com", MODERN, M),  # the hello says Www.Example.COM
    ("*.example.com", MODERN, M),
    ("*.EXAMPLE.com", MODERN, M),
    ("*.example.com", hello(sni_extension("a.b.example.com")), M),
    ("*.example.com", hello(sni_extension("example.com")), N),
    ("*.example.com", hello(sni_extension("badexample.com")), N),
    ("*.example.com", hello(sni_extension("example.com.evil")), N),
    ("*.example.com", hello(sni_extension("x.example.com.")), M),
    ("example.com", hello(sni_extension("www.example.com")), N),
    ("a.example", hello(alpn_extension("h2")), N),  # no SNI at all
    (["x.example", "localhost"], CHROMIUM, M),
    (("x.example", "*.y.example"), hello(sni_extension("z.y.example")), M),
]


@pytest.mark.parametrize(("sni", "data", "expected"), SNI_CASES)
def test_sni(sni: str | list[str], data: bytes, expected: Outcome) -> None:
    matcher = matchers.tls(sni=sni)
    assert outcome(matcher, data) is expected
    assert outcome(matcher, data + b"\x17\x03\x03") is expected
    assert outcome(matcher, data[: len(data) // 2]) is W


ALPN_CASES = [
    ("h2", CURL, M),
    ("http/1.1", CHROMIUM, M),
    (["h3", "h2"], CHROMIUM, M),
    ("h3", CURL, N),
    ("H2", CURL, N),  # ALPN identifiers are exact bytes
    ("h2", hello(sni_extension("a.example")), N),  # no ALPN offered
    ("grpc-exp", hello(alpn_extension("grpc-exp", "h2")), M),
]


@pytest.mark.parametrize(("alpn", "data", "expected"), ALPN_CASES)
def test_alpn(alpn: str | list[str], data: bytes, expected: Outcome) -> None:
    assert outcome(matchers.tls(alpn=alpn), data) is expected
    assert outcome(matchers.tls(alpn=alpn), data + bytes(10)) is expected


TLS12_ONLY = hello(sni_extension("old.example"))
TLS13_ONLY = hello(versions_extension(0x0304))

VERSION_CASES = [
    ("1.3", CHROMIUM, M),
    ("TLSv1.3", CURL, M),
    ("tls1.2", CHROMIUM, M),
    ("1.1", CHROMIUM, N),
    ("1.3", TLS12_ONLY, N),
    ("1.2", TLS12_ONLY, M),
    ("1.0", TLS12_ONLY, M),  # a legacy hello offers every version up to its own
    ("1.2", TLS13_ONLY, N),
    (["1.0", "1.3"], TLS13_ONLY, M),
    ("1.3", hello(versions_extension(GREASE)), N),
]


@pytest.mark.parametrize(("versions", "data", "expected"), VERSION_CASES)
def test_versions(versions: str | list[str], data: bytes, expected: Outcome) -> None:
    assert outcome(matchers.tls(versions=versions), data) is expected


def test_all_filters_together() -> None:
    both = matchers.tls(versions="1.3", sni="*.example.com", alpn="h2")
    assert outcome(both, MODERN) is M
    assert (
        outcome(matchers.tls(versions="1.3", sni="*.example.com", alpn="h3"), MODERN)
        is N
    )
    assert (
        outcome(matchers.tls(versions="1.1", sni="*.example.com", alpn="h2"), MODERN)
        is N
    )
    assert outcome(matchers.tls(versions="1.3", sni="other", alpn="h2"), MODERN) is N


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'2\.0'"):
        matchers.tls(versions="2.0")


@pytest.mark.parametrize("argument", ["sni", "alpn", "versions"])
def test_empty_filter_list_is_refused(argument: str) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        matchers.tls(**{argument: []})


def test_bare_tls_decides_on_six_bytes() -> None:
    bare = matchers.tls()
    assert bare.max_bytes == 6
    assert [outcome(bare, CURL[:n]) for n in range(7)] == [W] * 6 + [M]
    assert outcome(bare, b"\x16\x03\x01\x02\x00\x02") is N  # ServerHello
    assert outcome(bare, b"\x16\x04") is N
    assert outcome(bare, b"\x17") is N


def test_filtered_matcher_names() -> None:
    assert matchers.tls(sni="A.example").name == "tls(sni=['a.example'])"
    assert "alpn=['h2']" in matchers.tls(alpn="h2", versions="1.3").name


# -- through a real detector, split at every offset ----------------------------


def _route_chunks(chunks: list[bytes]) -> tuple[str | None, bytes]:
    """Feed ``chunks`` to a detector; which route got the bytes, and what bytes."""
    example, h2_local, other_tls = (
        RecordingFactory(name) for name in ("example", "h2-local", "other-tls")
    )
    factory = ProtocolSwitchingFactory(
        [
            Route("example", matchers.tls(sni="*.example.com"), example),
            Route(
                "h2-local",
                matchers.tls(sni="localhost", alpn="h2", versions="1.3"),
                h2_local,
            ),
            Route("other-tls", matchers.tls(), other_tls),
        ],
        clock=task.Clock(),
    )
    transport = StringTransport()
    detector = factory.buildProtocol(None)  # type: ignore[arg-type]
    transport.protocol = detector  # type: ignore[attr-defined]
    detector.makeConnection(transport)
    for chunk in chunks:
        transport.protocol.dataReceived(chunk)  # type: ignore[attr-defined]
    built = example.built + h2_local.built + other_tls.built
    assert len(built) <= 1
    return (built[0].route, built[0].received) if built else (None, b"")


@pytest.mark.parametrize(
    ("data", "route"),
    [
        (CURL, "h2-local"),
        (CHROMIUM, "h2-local"),
        (MODERN, "example"),
        (TLS12_ONLY, "other-tls"),
    ],
    ids=["curl", "chromium", "built", "tls12"],
)
def test_detector_routes_the_same_at_every_split(data: bytes, route: str) -> None:
    for offset in range(len(data) + 1):
        chosen, replayed = _route_chunks([data[:offset], data[offset:]])
        assert chosen == route, offset
        assert replayed == data, offset


def test_detector_routes_one_byte_writes() -> None:
    chosen, replayed = _route_chunks([bytes([b]) for b in CHROMIUM])
    assert (chosen, replayed) == ("h2-local", CHROMIUM)


# -- properties ----------------------------------------------------------------

_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
_ANY_MATCHER = [
    matchers.tls(),
    matchers.tls(sni="localhost"),
    matchers.tls(sni="*.example.com", alpn="h2", versions="1.3"),
]


def _check_never_raises_and_monotone(data: bytes) -> None:
    final = parse_client_hello(data)
    assert isinstance(final, ClientHello | Verdict)
    for matcher in _ANY_MATCHER:
        assert matcher(data).outcome in (M, N, W)
    # a decision once made stays made
    for end in sorted({0, 1, 5, 6, 9, len(data) // 3, len(data) // 2, len(data) - 1}):
        if 0 <= end <= len(data):
            early = parse_client_hello(data[:end])
            if early is not matchers.NEED_MORE:
                assert early == final, end
            for matcher in _ANY_MATCHER:
                early_verdict = matcher(data[:end]).outcome
                if early_verdict is not W:
                    assert matcher(data).outcome is early_verdict


@_SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check_never_raises_and_monotone(data)


@_SETTINGS
@given(st.binary(max_size=400))
def test_random_record_bodies_never_raise(payload: bytes) -> None:
    # the right record and handshake headers, then anything
    data = b"\x16\x03\x01" + _vector(
        2, b"\x01" + len(payload).to_bytes(3, "big") + payload
    )
    _check_never_raises_and_monotone(data)


@_SETTINGS
@given(
    st.sampled_from([CURL, CHROMIUM, MODERN]),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2000), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    ),
    st.integers(min_value=0, max_value=2000),
)
def test_mutated_captures_never_raise(
    original: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(original)
    for position, value in flips:
        data[position % len(data)] = value
    mutated = bytes(data[: max(cut, 6)] if cut < len(data) else data)
    _check_never_raises_and_monotone(mutated)
