"""A prelude header before route matching, read by the detector itself."""

from __future__ import annotations

from itertools import pairwise

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txcmux import Handoff, ProtocolSwitchingFactory, Reason, Rejection, Route, matchers
from txcmux._decision import Reject
from txcmux._prelude import NEED_MORE, PreludeRead
from txcmux.matchers import Verdict

from .logs import captured_logs
from .recording import RecordingFactory
from .test_detector import handoff_recording_factory

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
CLIENT = IPv4Address("TCP", "192.0.2.7", 5000)
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Hello:
    """A toy prelude: ``HELLO <host> <port>\\n`` names the client.

    ``OPTIONAL`` mode lets a connection without it through untouched;
    ``BAD`` refuses the header.
    """

    name = "hello"
    max_bytes = 40

    def __init__(self, optional: bool = False) -> None:
        self.optional = optional
        self.calls = 0

    def __call__(
        self, data: bytes, peer: IAddress | None
    ) -> PreludeRead | Reject | Verdict:
        self.calls += 1
        if not data.startswith(b"HELLO "[: len(data)]):
            if self.optional:
                return PreludeRead(0)
            return Reject(Reason.NO_MATCH, "no HELLO header")
        end = data.find(b"\n")
        if end < 0:
            return NEED_MORE
        words = data[:end].split()
        if len(words) != 3 or words[1] == b"BAD":
            return Reject(Reason.NO_MATCH, "a malformed HELLO header")
        client = IPv4Address("TCP", words[1].decode(), int(words[2]))
        return PreludeRead(end + 1, client, {"line": bytes(data[:end])})


class Harness:
    def __init__(self, prelude: Hello, *routes: Route, **options: object) -> None:
        self.web = RecordingFactory("web")
        self.rejections: list[Rejection] = []
        self.clock = Clock()
        self.switch = ProtocolSwitchingFactory(
            routes or [Route("web", matchers.http1(), self.web)],
            prelude=prelude,
            on_error=self.rejections.append,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )
        self.transport = StringTransport(peerAddress=PEER)
        self.detector = self.switch.buildProtocol(PEER)
        self.transport.protocol = self.detector
        self.detector.makeConnection(self.transport)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.detector.dataReceived(chunk)


HEADER = b"HELLO 192.0.2.7 5000\n"


@pytest.mark.parametrize("cut", range(1, len(HEADER + REQUEST)))
def test_routes_match_on_the_bytes_after_the_header_however_split(cut: int) -> None:
    stream = HEADER + REQUEST
    harness = Harness(Hello())
    harness.feed(stream[:cut], stream[cut:])
    [web] = harness.web.built
    assert web.received == REQUEST  # the header is not replayed
    assert harness.switch.stats["routed.web"] == 1


def test_one_byte_writes_work() -> None:
    harness = Harness(Hello())
    for start, end in pairwise(range(len(HEADER + REQUEST) + 1)):
        harness.feed((HEADER + REQUEST)[start:end])
    [web] = harness.web.built
    assert web.received == REQUEST


def test_the_handoff_names_the_client_of_the_header_and_carries_its_info() -> None:
    aware, received = handoff_recording_factory()
    harness = Harness(Hello(), Route("web", matchers.http1(), aware))
    harness.feed(HEADER + REQUEST)
    [handoff] = received
    assert handoff == Handoff(
        "web", CLIENT, REQUEST, b"", None, {"line": b"HELLO 192.0.2.7 5000"}
    )


def test_a_refused_header_is_closed_logged_and_counted_with_the_real_peer() -> None:
    harness = Harness(Hello())
    with captured_logs() as logs:
        harness.feed(b"HELLO BAD 1\n" + REQUEST)
    assert harness.transport.disconnecting
    assert harness.web.built == []
    [rejection] = harness.rejections
    assert (rejection.reason, rejection.peer) == (Reason.NO_MATCH, PEER)
    assert harness.switch.stats["closed.no_match"] == 1
    assert any("127.0.0.1:40000" in line and "malformed" in line for line in logs)


def test_a_header_longer_than_its_bound_is_too_long() -> None:
    harness = Harness(Hello())
    harness.feed(b"HELLO " + b"9" * 50)
    [rejection] = harness.rejections
    assert rejection.reason is Reason.TOO_LONG
    assert "hello header is still incomplete after 56 bytes" in rejection.detail


def test_a_client_closing_inside_the_header_is_rejected() -> None:
    harness = Harness(Hello())
    harness.feed(b"HELLO 1")
    harness.detector.readConnectionLost()
    [rejection] = harness.rejections
    assert "inside the hello header" in rejection.detail


def test_the_sniff_timeout_covers_the_header() -> None:
    harness = Harness(Hello(), sniff_timeout=2.0)
    harness.feed(b"HELLO 192.0.2.7")
    harness.clock.advance(2.0)
    [rejection] = harness.rejections
    assert rejection.reason is Reason.TIMEOUT
    assert harness.transport.disconnecting


def test_an_optional_header_that_is_absent_leaves_the_bytes_to_the_routes() -> None:
    prelude = Hello(optional=True)
    harness = Harness(prelude)
    harness.feed(REQUEST)
    [web] = harness.web.built
    assert web.received == REQUEST
    assert prelude.calls == 1


def test_the_header_alone_lets_a_route_that_decides_on_nothing_take_over() -> None:
    rest = RecordingFactory("rest")
    harness = Harness(Hello(), Route("rest", matchers.any(), rest))
    assert rest.built == []  # no decision before the header is read
    harness.feed(HEADER)
    [protocol] = rest.built
    assert protocol.received == b""


def test_a_prelude_that_raises_is_logged_and_the_connection_closed() -> None:
    class Broken(Hello):
        def __call__(self, data: bytes, peer: IAddress | None) -> PreludeRead:
            raise RuntimeError("boom")

    harness = Harness(Broken())
    with captured_logs() as logs:
        harness.feed(HEADER)
    assert harness.transport.disconnecting
    assert any("prelude hello raised" in line for line in logs)
