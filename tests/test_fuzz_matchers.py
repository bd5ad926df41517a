"""Fuzzing every matcher, and the decision core around them, with hostile bytes.

For every matcher the registry knows (several variants of some), on random
bytes, mutated real openings and generated TLS records and HTTP/2 frames:

- no matcher raises, and each answers a :class:`~txcmux.matchers.Verdict`;
- each is monotone (once decided, longer input never changes the answer)
  and bounded (never ``NEED_MORE`` at or past its ``max_bytes``);
- a :class:`~txcmux.ProtocolSwitchingFactory` with any of them as routes,
  fed the bytes whole or cut anywhere, decides the same, replays the same
  bytes, and logs no failure (a matcher that raises is logged and taken as
  no match: that log line fails these tests too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import hpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import provider

from txcmux import matchers
from txcmux._plugins import BUILTIN_MATCHERS
from txcmux.matchers import EMPTY_SETTINGS, PREFACE, Outcome, Verdict
from txcmux.testing import CAPTURES, SwitchHarness, split_at

from .fuzzing import (
    CLIENT,
    LOCAL,
    OUTSIDER,
    all_matchers,
    bound,
    client_hellos,
    frame,
    fuzz_settings,
    h2_streams,
    hostile_bytes,
)

MATCHERS = all_matchers()
NAMES = sorted(MATCHERS)


def test_every_matcher_name_is_fuzzed() -> None:
    """A matcher added to the registry must be added to tests/fuzzing.py."""
    fuzzed = {name.split(":")[0] for name in MATCHERS}
    assert set(BUILTIN_MATCHERS) | {"redis", "postgres"} <= fuzzed


# -- each matcher alone ----------------------------------------------------------


def _lengths(size: int, cuts: list[int]) -> list[int]:
    """The prefix lengths to ask: every one up to 64, the cuts, the whole."""
    return sorted({*range(min(size, 64) + 1), *(c for c in cuts if c <= size), size})


def check_matcher(
    name: str, matcher: matchers.Matcher, data: bytes, lengths: list[int]
) -> None:
    """Ask ``matcher`` about ``data[:n]`` for each n: well-typed, monotone, bounded."""
    decided: tuple[int, Outcome] | None = None
    for length in lengths:
        answer = matcher(data[:length])
        assert isinstance(answer, Verdict), (name, answer)
        outcome = answer.outcome
        if decided is not None:
            assert outcome is decided[1], (
                f"{name} answered {decided[1].value} at {decided[0]} bytes"
                f" but {outcome.value} at {length}: {data[:length][:200]!r}"
            )
        elif outcome is not Outcome.NEED_MORE:
            decided = (length, outcome)
        if outcome is Outcome.NEED_MORE:
            assert length < matcher.max_bytes, (
                f"{name} needs more at {length} bytes, past its max_bytes"
                f" ({matcher.max_bytes}): {data[:200]!r}"
            )
        assert not answer.send or outcome is Outcome.NEED_MORE, name


@fuzz_settings(300)
@given(
    data=hostile_bytes,
    cuts=st.lists(st.integers(0, 70000), max_size=8),
    filler=st.sampled_from([b"", b"\x00", b"A", b"\xff"]),
)
def test_matchers_never_raise_and_stay_monotone_and_bounded(
    data: bytes, cuts: list[int], filler: bytes
) -> None:
    for name, matcher in MATCHERS.items():
        for variant in {matcher, bound(matcher), bound(matcher, OUTSIDER)}:
            stream = data
            if filler and len(data) < variant.max_bytes <= 70000:
                # Padded to the bound: a matcher still waiting there is wrong.
                stream = data + filler * (variant.max_bytes - len(data))
            check_matcher(name, variant, stream, _lengths(len(stream), cuts))


def _waiting_streams() -> dict[str, bytes]:
    """Openings built to keep matchers waiting as long as they will, most of
    them completed at the end (past every bound) by what a matcher wants."""
    size = 70000
    settings = frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")
    grpc_headers = frame(
        1, 4, 1, bytes(hpack.Encoder().encode([(b"content-type", b"application/grpc")]))
    )
    hello = b"\x01" + (60000).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * 59998
    curl = CAPTURES["curl-tls-clienthello.bin"]
    websocket = b"Upgrade: websocket\r\n\r\n"
    return {
        "h2 SETTINGS flood": PREFACE
        + settings * (size // len(settings))
        + grpc_headers,
        "h2 unknown frames": PREFACE
        + frame(0xFA, 0, 0, b"x" * 16000) * 5
        + grpc_headers,
        "TLS 1-byte records": _one_byte_records(hello)[:size],
        "TLS curl hello in 1-byte records": _one_byte_records(curl[5:]),
        "TLS big records": b"\x16\x03\x01" + (18000).to_bytes(2, "big") + hello[:18000],
        "HTTP header flood": b"GET / HTTP/1.1\r\n"
        + b"X-A: b\r\n" * (size // 8)
        + websocket,
        "HTTP long target": b"GET /" + b"a" * size + b" HTTP/1.1\r\n" + websocket,
        "XMPP long tag": b"<stream:stream " + b"a" * size + b" xmlns='jabber:client'>",
        "XMPP declaration": b"<?xml "
        + b"a" * size
        + b"?><stream:stream xmlns='jabber:client'>",
        "SOCKS4 long user": b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * size + b"\x00",
        "RESP": b"*1234567890",
        "zeros": b"\x00" * size,
        "letters": b"A" * size,
    }


def _one_byte_records(message: bytes) -> bytes:
    return b"".join(b"\x16\x03\x01\x00\x01" + bytes([b]) for b in message)


def test_no_matcher_waits_past_its_bound_or_decides_past_it() -> None:
    """At ``max_bytes`` every matcher has decided, whatever kept it waiting,
    and what follows the bound does not change its answer."""
    for stream_name, stream in _waiting_streams().items():
        for name, matcher in MATCHERS.items():
            variant = bound(matcher)
            limit = variant.max_bytes
            lengths = [
                n
                for n in (limit - 1, limit, limit + 1, len(stream))
                if 0 <= n <= len(stream)
            ]
            check_matcher(
                f"{name} on {stream_name}", variant, stream, sorted(set(lengths))
            )


@fuzz_settings(200)
@given(hello=client_hellos())
def test_the_client_hello_parser_never_raises(hello: bytes) -> None:
    for length in (len(hello), len(hello) // 2, 6):
        found = matchers.parse_client_hello(hello[:length])
        assert isinstance(found, Verdict | matchers.ClientHello)
    small = matchers.parse_client_hello(hello, limit=64)
    assert isinstance(small, Verdict | matchers.ClientHello)


# -- the decision core ----------------------------------------------------------


@contextmanager
def failures_logged() -> Iterator[list[LogEvent]]:
    """Collect the log events that carry a failure (a caught exception)."""
    found: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            found.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield found
    finally:
        globalLogPublisher.removeObserver(observe)


def strip_first_ack(data: bytes) -> bytes:
    """``data`` less its first SETTINGS ACK frame, if it is an HTTP/2 stream.

    The reference the answer filter is checked against: walk the frames from
    the preface, drop the first one of type SETTINGS with the ACK flag and an
    empty payload.
    """
    if not data.startswith(PREFACE):
        return data
    position = len(PREFACE)
    while len(data) - position >= 9:
        length = int.from_bytes(data[position : position + 3], "big")
        if data[position + 3] == 4 and data[position + 4] & 1 and length == 0:
            return data[:position] + data[position + 9 :]
        position += 9 + length
    return data


routes = st.permutations(NAMES).flatmap(
    lambda order: st.integers(1, 8).map(lambda n: order[:n])
)


@fuzz_settings(250)
@given(
    data=hostile_bytes,
    names=routes,
    cuts=st.lists(st.integers(0, 400), max_size=12),
    eof=st.booleans(),
    limit=st.sampled_from([16384, 512, 24]),
    on_timeout=st.booleans(),
    client=st.sampled_from([CLIENT, OUTSIDER]),
)
def test_the_detector_decides_the_same_whatever_the_split(
    data: bytes,
    names: list[str],
    cuts: list[int],
    eof: bool,
    limit: int,
    on_timeout: bool,
    client: object,
) -> None:
    with failures_logged() as failures:
        harness = SwitchHarness(
            {name: MATCHERS[name] for name in names},
            max_sniff_bytes=limit,
            on_timeout=names[-1] if on_timeout else None,
        )
        whole = harness.feed(data, eof=eof, peer=client, host=LOCAL)  # type: ignore[arg-type]
        split = harness.feed(
            *split_at(data, *cuts),
            eof=eof,
            peer=client,
            host=LOCAL,  # type: ignore[arg-type]
        )
        assert (split.route, split.rejected) == (whole.route, whole.rejected)
        assert split.closed == whole.closed
        if split.route is not None:
            # Only where the detector sent SETTINGS is the client's ACK of
            # them kept from the target; a split may make it send them.
            sent = EMPTY_SETTINGS in split.written
            assert split.replayed == (strip_first_ack(data) if sent else data)
        if eof:
            assert whole.decision != "waiting"
        if whole.decision == "waiting":
            assert len(data) < limit
            harness.advance(5.0)
            stats = harness.stats
            assert stats["closed.timeout"] + stats["timeout_fallback"] == 2
    assert not failures, [event.get("log_format") for event in failures]


@fuzz_settings(150)
@given(stream=h2_streams(), cuts=st.lists(st.integers(0, 600), max_size=12))
def test_http2_openings_split_anywhere(stream: bytes, cuts: list[int]) -> None:
    with failures_logged() as failures:
        harness = SwitchHarness(
            {
                "grpc": matchers.grpc(),
                "web": matchers.http2_header(":path", "/pkg", prefix=True),
                "h2": matchers.http2(),
            }
        )
        whole = harness.feed(stream, eof=True)
        split = harness.feed(*split_at(stream, *cuts), eof=True)
        assert (split.route, split.rejected) == (whole.route, whole.rejected)
        if split.route is not None:
            sent = EMPTY_SETTINGS in split.written
            assert split.replayed == (strip_first_ack(stream) if sent else stream)
    assert not failures


# -- regressions: bugs the fuzzing found ------------------------------------------


def test_http2_header_matchers_decide_at_their_bound() -> None:
    # A client sending nothing but SETTINGS kept http2_header and grpc
    # answering "need more" past their max_bytes.
    flood = PREFACE + frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64") * 40
    for matcher in (
        matchers.grpc(max_bytes=200),
        matchers.http2_header(":path", "/x", max_bytes=200),
    ):
        assert matcher(flood[:199]).outcome is Outcome.NEED_MORE
        assert matcher(flood[:200]).outcome is Outcome.NO_MATCH
        assert matcher(flood).outcome is Outcome.NO_MATCH


def test_tls_filters_decide_at_their_bound() -> None:
    # A ClientHello cut into one-byte records takes six bytes on the wire
    # for each byte of the message: tls(sni=...) waited past max_bytes.
    hello = b"\x01" + (250).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * 248
    records = b"".join(b"\x16\x03\x01\x00\x01" + bytes([b]) for b in hello)
    matcher = matchers.tls(sni="localhost", max_bytes=300)
    assert matcher(records[:299]).outcome is Outcome.NEED_MORE
    assert matcher(records[:300]).outcome is Outcome.NO_MATCH
    assert matcher(records).outcome is Outcome.NO_MATCH


def test_what_completes_past_the_bound_does_not_match_in_one_read_either() -> None:
    # A request line, header block, XMPP tag, ClientHello or HTTP/2 header
    # block completed past max_bytes matched when it came in one read, but
    # not read by read (the route gave up at the bound): the decision
    # depended on the split.
    ws = b"Upgrade: websocket\r\n\r\n"
    curl = CAPTURES["curl-tls-clienthello.bin"]
    settings = frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")
    path = frame(1, 4, 1, bytes(hpack.Encoder().encode([(b":path", b"/x")])))
    cases = [
        (matchers.http1(max_request_line=40), b"GET /" + b"a" * 40 + b" HTTP/1.1\r\n"),
        (
            matchers.http1_header("upgrade", "websocket", max_bytes=60),
            b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 6 + ws,
        ),
        (
            matchers.websocket(max_bytes=60),
            b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 6 + ws,
        ),
        (
            matchers.xmpp(),
            b"<stream:stream " + b"a" * 4096 + b" xmlns='jabber:client'>",
        ),
        (matchers.tls(sni="localhost", max_bytes=300), _one_byte_records(curl[5:])),
        (
            matchers.http2_header(":path", "/x", max_bytes=200),
            PREFACE + settings * 20 + path,
        ),
    ]
    for matcher, stream in cases:
        assert matcher(stream).outcome is Outcome.NO_MATCH, matcher.name
        harness = SwitchHarness({"it": matcher, "rest": matchers.any()})
        whole = harness.feed(stream)
        bytewise = harness.feed(*[stream[i : i + 1] for i in range(len(stream))])
        assert whole.route == bytewise.route == "rest", matcher.name


def test_bytes_the_ack_filter_holds_reach_the_target_at_a_half_close() -> None:
    # The filter held back a frame header cut short by the client's
    # half-close, and those bytes never reached the target.
    harness = SwitchHarness({"grpc": matchers.grpc(), "h2": matchers.http2()})
    for stream in (
        PREFACE + b"\r\n",
        PREFACE + frame(4, 0, 0, b"") + b"\x00\x00",
    ):
        whole = harness.feed(stream, eof=True)
        assert whole.route == "h2" and whole.replayed == stream
        bytewise = harness.feed(
            *[stream[i : i + 1] for i in range(len(stream))], eof=True
        )
        assert bytewise.route == "h2" and bytewise.replayed == stream
