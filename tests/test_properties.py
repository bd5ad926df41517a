"""Properties: the decision and the replay do not depend on how reads are split.

For every matcher and every stream of a corpus (real client captures and
synthetic openings), feeding the detector the stream in arbitrary pieces gives
the same route, or the same rejection, as feeding it at once, and the chosen
protocol receives the stream byte for byte (less the client's SETTINGS ACK when
the detector sent SETTINGS).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txcmux import ProtocolSwitchingFactory, Rejection, Route, matchers
from txcmux.matchers import EMPTY_SETTINGS, PREFACE, Outcome

from .captures import HTTP2_CLIENTS, SETTINGS_ACK, capture, http2_opening
from .recording import RecordingFactory


def _matchers() -> dict[str, matchers.Matcher]:
    return {
        "grpc": matchers.grpc(),
        "h2-web": matchers.http2_header(":path", "/web", prefix=True),
        "h2": matchers.http2(),
        "websocket": matchers.http1_header("upgrade", "websocket"),
        "h1-fast": matchers.http1_fast(),
        "h1": matchers.http1(),
        "tls13-localhost": matchers.tls(versions="1.3", sni="localhost"),
        "tls": matchers.tls(),
        "ssh": matchers.ssh(),
        "echo": matchers.prefix(b"ECHO ", b"PING"),
        "redis": matchers.redis(),
        "postgres": matchers.postgres(),
        "any": matchers.any(),
    }


MATCHER_NAMES = list(_matchers())

CORPUS = [
    *(http2_opening(client) for client in HTTP2_CLIENTS),
    *(capture(f"{client}.before-settings.bin") for client in HTTP2_CLIENTS),
    capture("curl-http1.1.bin"),
    capture("curl-tls-clienthello.bin"),
    capture("chromium-tls-clienthello.bin"),
    capture("openssh-client.bin"),
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
    b"PROPFIND /dav HTTP/1.1\r\nHost: x\r\n\r\n",
    b"ECHO hello\n",
    b"*1\r\n$4\r\nPING\r\n",
    (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"),
    b"\x00\x01garbage that nothing wants\r\n",
    b"",
]


@dataclass
class Outcome_:
    route: str | None
    rejection: str | None
    replayed: bytes
    written: bytes


def run(
    names: list[str],
    stream: bytes,
    cuts: list[int],
    limit: int,
    eof: bool,
    first_byte_filter: bool = True,
) -> Outcome_:
    """Feed ``stream`` cut at ``cuts`` to a detector with routes ``names``.

    ``first_byte_filter=False`` makes the detector ask every route, as if no
    route could be ruled out by the first byte alone.
    """
    everything = _matchers()
    factories = {name: RecordingFactory(name) for name in names}
    rejections: list[Rejection] = []
    switch = ProtocolSwitchingFactory(
        [Route(name, everything[name], factories[name]) for name in names],
        max_sniff_bytes=limit,
        on_error=rejections.append,
        clock=Clock(),
    )
    if not first_byte_filter:
        switch.decider.candidates = (switch.decider.all_routes,) * 256
    detector = switch.buildProtocol(None)
    transport = StringTransport()
    detector.makeConnection(transport)
    edges = [0, *sorted(set(cuts)), len(stream)]
    for start, end in pairwise(edges):
        if start < end:
            detector.dataReceived(stream[start:end])
    if eof:
        detector.readConnectionLost()
    built = [p for f in factories.values() for p in f.built]
    assert len(built) <= 1
    return Outcome_(
        route=built[0].route if built else None,
        rejection=rejections[0].reason if rejections else None,
        replayed=built[0].received if built else b"",
        written=transport.value(),
    )


def expected_replay(stream: bytes, written: bytes) -> bytes:
    """The stream less the first SETTINGS ACK, if the detector sent SETTINGS."""
    if EMPTY_SETTINGS not in written:
        return stream
    # In every capture the ACK of our SETTINGS is the first frame after the
    # bytes the client sent before it; check that, then remove it there.
    for client in HTTP2_CLIENTS:
        before = capture(f"{client}.before-settings.bin")
        if stream.startswith(before) and stream[len(before) :].startswith(SETTINGS_ACK):
            return before + stream[len(before) + len(SETTINGS_ACK) :]
    return stream


streams = st.sampled_from(CORPUS)


@settings(max_examples=300, deadline=None)
@given(
    stream=streams,
    names=st.permutations(MATCHER_NAMES).flatmap(
        lambda order: st.integers(1, len(order)).map(lambda n: order[:n])
    ),
    data=st.data(),
    limit=st.sampled_from([16384, 200, 30]),
    eof=st.booleans(),
)
def test_any_split_gives_the_same_decision_and_an_exact_replay(
    stream: bytes, names: list[str], data: st.DataObject, limit: int, eof: bool
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    whole = run(names, stream, [], limit, eof)
    split = run(names, stream, cuts, limit, eof)
    assert (split.route, split.rejection) == (whole.route, whole.rejection)
    assert whole.route is not None or whole.rejection is not None or not eof
    if split.route is not None:
        assert split.replayed == expected_replay(stream, split.written)
    asking_all = run(names, stream, cuts, limit, eof, first_byte_filter=False)
    assert asking_all == split


@settings(max_examples=100, deadline=None)
@given(stream=streams, name=st.sampled_from(MATCHER_NAMES))
def test_one_byte_writes_give_the_same_decision(stream: bytes, name: str) -> None:
    names = [name, "any"] if name != "any" else ["any"]
    whole = run(names, stream, [], 16384, True)
    bytewise = run(names, stream, list(range(len(stream))), 16384, True)
    assert bytewise.route == whole.route
    assert bytewise.replayed == expected_replay(stream, bytewise.written)


def test_matchers_are_monotone_on_every_prefix() -> None:
    """Once a matcher says match or no match, longer input never changes it."""
    for matcher in _matchers().values():
        for stream in CORPUS:
            decided: Outcome | None = None
            for end in range(min(len(stream), 3000) + 1):
                answer = matcher(stream[:end]).outcome
                if decided is not None:
                    assert answer is decided, (matcher.name, stream[:40], end)
                elif answer is not Outcome.NEED_MORE:
                    decided = answer


def test_the_captures_acknowledge_settings_first() -> None:
    # expected_replay() relies on this fact about the captures.
    for client in (
        "grpcio-unary",
        "grpc-js-unary",
        "h2load-grpc",
        "curl-h2c-prior-knowledge",
    ):
        assert capture(f"{client}.after-settings.bin").startswith(SETTINGS_ACK)
        assert capture(f"{client}.before-settings.bin").startswith(PREFACE)
