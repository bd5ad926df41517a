"""The detector and ProtocolSwitchingFactory on in-memory transports."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from zope.interface import implementer

import txcmux
from txcmux import (
    ConfigurationError,
    Handoff,
    IHandoffReceiver,
    ProtocolSwitchingFactory,
    Rejection,
    Route,
    matchers,
)
from txcmux._detector import Detector
from txcmux.matchers import (
    EMPTY_SETTINGS,
    NEED_MORE,
    PREFACE,
    FunctionMatcher,
    Outcome,
    Verdict,
)

from .captures import SETTINGS_ACK, capture
from .logs import captured_logs
from .recording import HalfCloseRecordingFactory, Recorder, RecordingFactory

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Harness:
    """A switch with recording routes, and a detector on a StringTransport."""

    def __init__(self, routes: list[tuple[str, matchers.Matcher]], **options: object):
        self.factories = {name: RecordingFactory(name) for name, _ in routes}
        self.rejections: list[Rejection] = []
        self.clock = Clock()
        self.switch = ProtocolSwitchingFactory(
            [Route(name, m, self.factories[name]) for name, m in routes],
            on_error=self.rejections.append,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )
        self.transport = StringTransport(peerAddress=PEER)
        self.detector = self.switch.buildProtocol(PEER)
        self.transport.protocol = self.detector  # as tcp and unix transports have
        self.detector.makeConnection(self.transport)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.detector.dataReceived(chunk)

    def chosen(self) -> Recorder | None:
        built = [p for f in self.factories.values() for p in f.built]
        assert len(built) <= 1
        return built[0] if built else None


THREE = [
    ("echo", matchers.prefix(b"ECHO ")),
    ("web", [matchers.http1(), matchers.http2()]),
    ("ssh", matchers.ssh()),
]


def test_public_names_are_exported() -> None:
    for name in txcmux.__all__:
        assert getattr(txcmux, name) is not None
    assert {"ProtocolSwitchingFactory", "Route", "matchers"} <= set(txcmux.__all__)
    for name in matchers.__all__:
        assert callable(getattr(matchers, name)) or name.isupper()


def test_routes_by_first_bytes_and_replays_once() -> None:
    for data, route in [
        (b"ECHO hi\n", "echo"),
        (capture("curl-http1.1.bin"), "web"),
        (capture("curl-h2c-prior-knowledge.before-settings.bin"), "web"),
        (capture("openssh-client.bin"), "ssh"),
    ]:
        harness = Harness(THREE)
        harness.feed(data)
        chosen = harness.chosen()
        assert chosen is not None and chosen.route == route
        assert chosen.chunks == [data]
        assert chosen.events[:2] == ["makeConnection", "dataReceived"]
        assert chosen.connected_with is harness.transport
        assert harness.transport.protocol is chosen
        assert harness.switch.stats["routed." + route] == 1


def test_later_bytes_reach_the_chosen_protocol_unchanged() -> None:
    harness = Harness(THREE)
    harness.feed(b"ECH", b"O first\n")
    harness.feed(b"second")
    chosen = harness.chosen()
    assert chosen is not None
    assert chosen.chunks == [b"ECHO first\n", b"second"]


def test_strict_priority_waits_for_earlier_routes() -> None:
    # "web" (http1) needs the whole request line; "any-g" matches at once but
    # comes later, so it must not win while "web" can still match.
    harness = Harness(
        [
            ("web", matchers.http1()),
            ("g", matchers.prefix(b"G")),
            ("any", matchers.any()),
        ]
    )
    harness.feed(b"GET / HT")
    assert harness.chosen() is None
    harness.feed(b"TP/1.1\r\n")
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "web"

    harness = Harness(
        [
            ("web", matchers.http1()),
            ("g", matchers.prefix(b"G")),
            ("any", matchers.any()),
        ]
    )
    harness.feed(b"GE", b"T / HTTP/2.0\r\n")
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "g"


def test_any_matches_before_the_client_sends_anything() -> None:
    harness = Harness([("banner", matchers.any())])
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "banner"
    assert chosen.chunks == []


def test_only_routes_that_decide_on_no_bytes_make_the_detector_ask_on_connect() -> None:
    assert not Harness(THREE).switch.decider.decides_on_connect
    assert Harness([*THREE, ("rest", matchers.any())]).switch.decider.decides_on_connect
    # A matcher that wants to send first thing counts too.
    greeter = FunctionMatcher(
        "greeter", 4, lambda data: Verdict(Outcome.NEED_MORE, b"hi")
    )
    harness = Harness([("greeter", greeter)])
    assert harness.switch.decider.decides_on_connect
    assert harness.transport.value() == b"hi"


def test_no_route_closes_logs_counts_and_calls_the_hook() -> None:
    with captured_logs() as logs:
        harness = Harness(THREE)
        harness.feed(b"\x00\x01binary junk")
    assert harness.chosen() is None
    assert harness.transport.disconnecting
    assert harness.switch.stats["closed.no_match"] == 1
    [rejection] = harness.rejections
    assert rejection.reason == "no_match"
    assert rejection.peer == PEER
    assert rejection.data == b"\x00\x01binary junk"
    [line] = [line for line in logs if "closing connection" in line]
    assert "127.0.0.1:40000" in line
    assert "no route matched" in line
    assert "13 bytes seen" in line
    assert r"\x00\x01binary junk" in line
    # Bytes after the decision are dropped, not buffered or routed.
    harness.feed(b"more")
    assert harness.chosen() is None


def test_undecided_at_max_sniff_bytes_is_closed_as_too_long() -> None:
    harness = Harness([("web", matchers.http1())], max_sniff_bytes=20)
    harness.feed(b"GET /" + b"a" * 10)
    assert not harness.transport.disconnecting
    harness.feed(b"b" * 10)
    assert harness.transport.disconnecting
    assert [r.reason for r in harness.rejections] == ["too_long"]
    assert harness.switch.stats["closed.too_long"] == 1


def test_max_sniff_bytes_lets_a_later_route_win_over_an_undecided_one() -> None:
    harness = Harness(
        [("web", matchers.http1()), ("rest", matchers.any())], max_sniff_bytes=20
    )
    harness.feed(b"GET /" + b"a" * 30)
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "rest"
    assert chosen.received == b"GET /" + b"a" * 30  # the replay is not cut


def test_timeout_closes_a_silent_client() -> None:
    with captured_logs() as logs:
        harness = Harness(THREE, sniff_timeout=3.0)
        harness.feed(b"EC")
        harness.clock.advance(2.9)
        assert not harness.transport.disconnecting
        harness.clock.advance(0.1)
    assert harness.transport.disconnecting
    assert [r.reason for r in harness.rejections] == ["timeout"]
    assert any("undecided after 3.0 seconds" in line for line in logs)


def test_timeout_hands_silent_clients_to_on_timeout_with_what_arrived() -> None:
    harness = Harness(THREE, sniff_timeout=1.0, on_timeout="ssh")
    harness.feed(b"SS")
    harness.clock.advance(1.0)
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "ssh"
    assert chosen.chunks == [b"SS"]
    assert harness.switch.stats["timeout_fallback"] == 1
    assert not harness.transport.disconnecting


def test_a_decision_cancels_the_timer() -> None:
    harness = Harness(THREE, sniff_timeout=1.0)
    assert len(harness.clock.getDelayedCalls()) == 1
    harness.feed(b"ECHO ")
    assert harness.clock.getDelayedCalls() == []
    rejected = Harness(THREE, sniff_timeout=1.0)
    rejected.feed(b"\x00")
    assert rejected.clock.getDelayedCalls() == []


def test_peer_leaving_while_undecided_is_counted_and_logged() -> None:
    with captured_logs() as logs:
        harness = Harness(THREE, sniff_timeout=1.0)
        harness.feed(b"ECH")
        harness.detector.connectionLost()
    assert harness.switch.stats["closed.peer"] == 1
    assert harness.clock.getDelayedCalls() == []
    assert any("closed the connection while undecided" in line for line in logs)


def test_connection_lost_after_the_switch_reaches_the_target() -> None:
    harness = Harness(THREE)
    harness.feed(b"ECHO x")
    harness.detector.connectionLost()
    chosen = harness.chosen()
    assert chosen is not None and chosen.events[-1] == "connectionLost"
    assert harness.switch.stats["closed.peer"] == 0


def test_a_factory_returning_none_closes_the_connection() -> None:
    class Refusing(Factory):
        def buildProtocol(self, addr: object) -> None:  # type: ignore[override]
            return None

    rejections: list[Rejection] = []
    switch = ProtocolSwitchingFactory(
        [Route("no", matchers.any(), Refusing())],
        on_error=rejections.append,
        clock=Clock(),
    )
    transport = StringTransport()
    switch.buildProtocol(PEER).makeConnection(transport)
    assert transport.disconnecting
    assert [r.reason for r in rejections] == ["no_protocol"]


def test_half_close_while_undecided_decides_with_what_arrived() -> None:
    factory = HalfCloseRecordingFactory("echo")
    switch = ProtocolSwitchingFactory(
        [
            Route("web", matchers.http1(), RecordingFactory("web")),
            Route("echo", matchers.prefix(b"EC"), factory),
        ],
        clock=Clock(),
    )
    transport = StringTransport()
    detector = switch.buildProtocol(PEER)
    detector.makeConnection(transport)
    detector.dataReceived(b"EC")  # http1 still needs more: undecided
    detector.readConnectionLost()  # ...but no more will come: echo wins
    [chosen] = factory.built
    assert chosen.events == ["makeConnection", "dataReceived", "readConnectionLost"]
    assert not transport.disconnecting


def test_half_close_reaches_a_protocol_that_cannot_half_close_as_a_close() -> None:
    harness = Harness([("echo", matchers.prefix(b"ECHO "))])
    harness.feed(b"ECHO x")
    harness.detector.readConnectionLost()
    assert harness.transport.disconnecting


def test_half_close_with_nothing_matched_is_a_rejection() -> None:
    harness = Harness(THREE)
    harness.feed(b"ECH")
    harness.detector.readConnectionLost()
    assert [r.reason for r in harness.rejections] == ["no_match"]


def test_a_matcher_that_raises_counts_as_no_match() -> None:
    def broken(data: bytes) -> matchers.Verdict:
        raise RuntimeError("bug in a matcher")

    with captured_logs() as logs:
        harness = Harness(
            [("broken", FunctionMatcher("broken", 10, broken)), ("any", matchers.any())]
        )
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "any"
    assert any("matcher broken of route broken raised" in line for line in logs)


def test_a_matcher_asking_past_its_bound_counts_as_no_match() -> None:
    greedy = FunctionMatcher("greedy", 4, lambda data: NEED_MORE)
    harness = Harness([("greedy", greedy), ("any", matchers.any())])
    assert harness.chosen() is None
    harness.feed(b"abcd")
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "any"


def test_an_on_error_hook_that_raises_is_logged() -> None:
    def hook(rejection: Rejection) -> None:
        raise ValueError("hook bug")

    switch = ProtocolSwitchingFactory(
        [Route("echo", matchers.prefix(b"E"), RecordingFactory("echo"))],
        on_error=hook,
        clock=Clock(),
    )
    transport = StringTransport()
    with captured_logs() as logs:
        detector = switch.buildProtocol(PEER)
        detector.makeConnection(transport)
        detector.dataReceived(b"X")
    assert transport.disconnecting
    assert any("on_error hook raised" in line for line in logs)


def test_grpc_clients_get_settings_once_and_their_ack_is_kept_from_the_target() -> None:
    before = capture("grpcio-unary.before-settings.bin")
    after = capture("grpcio-unary.after-settings.bin")
    harness = Harness([("grpc", matchers.grpc()), ("web", matchers.http2())])
    harness.feed(before[:30], before[30:])
    # Once, though two reads; and the client's SETTINGS acknowledged.
    assert harness.transport.value() == EMPTY_SETTINGS + SETTINGS_ACK
    assert harness.chosen() is None
    harness.feed(after)
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "grpc"
    assert chosen.received == before + after[len(SETTINGS_ACK) :]


def test_the_ack_is_stripped_when_it_arrives_after_the_switch() -> None:
    # A client that sends HEADERS before our SETTINGS reach it (h2load does)
    # is matched at once; its ACK comes later, split across reads.
    harness = Harness([("grpc", matchers.grpc())])
    opening = capture("h2load-grpc.before-settings.bin")
    settings_end = len(PREFACE) + 9 + int.from_bytes(opening[24:27], "big")
    harness.feed(opening[:settings_end])
    assert harness.transport.value() == EMPTY_SETTINGS + SETTINGS_ACK
    harness.feed(opening[settings_end:])
    chosen = harness.chosen()
    assert chosen is not None
    assert harness.transport.protocol is harness.detector  # still filtering
    window_update = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x10\x00"
    harness.feed(SETTINGS_ACK[:4], SETTINGS_ACK[4:] + window_update[:4])
    harness.feed(window_update[4:])
    assert chosen.received == opening + window_update
    assert harness.transport.protocol is chosen  # out of the data path now


def handoff_recording_factory() -> tuple[Factory, list[Handoff]]:
    """A factory of protocols that keep the Handoff they receive, and that list."""
    received: list[Handoff] = []

    @implementer(IHandoffReceiver)
    class Aware(Protocol):
        def handoff_received(self, handoff: Handoff) -> None:
            received.append(handoff)

    return Factory.forProtocol(Aware), received


def test_handoff_receivers_learn_what_the_detector_did() -> None:
    aware, received = handoff_recording_factory()
    switch = ProtocolSwitchingFactory(
        [Route("grpc", matchers.grpc(), aware)], clock=Clock()
    )
    detector = switch.buildProtocol(PEER)
    detector.makeConnection(StringTransport(peerAddress=PEER))
    before = capture("grpcio-unary.before-settings.bin")
    after = capture("grpcio-unary.after-settings.bin")
    detector.dataReceived(before)
    detector.dataReceived(after)
    [handoff] = received
    assert handoff.route == "grpc"
    assert handoff.peer == PEER
    assert handoff.buffered == before + after
    assert handoff.sent == EMPTY_SETTINGS + SETTINGS_ACK


def test_iosim_transport_is_repointed_at_the_target() -> None:
    factory = RecordingFactory("echo")
    switch = ProtocolSwitchingFactory(
        [Route("echo", matchers.prefix(b"ECHO "), factory)]
    )
    server = switch.buildProtocol(PEER)
    client = Protocol()
    server_transport = FakeTransport(server, isServer=True)
    pump = connect(
        server, server_transport, client, FakeTransport(client, isServer=False)
    )
    client.transport.write(b"ECHO one")
    pump.flush()
    [chosen] = factory.built
    assert server_transport.protocol is chosen
    client.transport.write(b" two")
    pump.flush()
    assert chosen.received == b"ECHO one two"


def test_wrapper_transports_are_repointed_too() -> None:
    factory = RecordingFactory("echo")
    switch = ProtocolSwitchingFactory(
        [Route("echo", matchers.prefix(b"ECHO "), factory)]
    )
    wrapping = WrappingFactory(switch)
    wrapper = wrapping.buildProtocol(PEER)
    assert wrapper is not None
    wrapper.makeConnection(StringTransport(peerAddress=PEER))
    detector = wrapper.wrappedProtocol
    assert isinstance(detector, Detector)
    wrapper.dataReceived(b"ECHO a")
    [chosen] = factory.built
    assert wrapper.wrappedProtocol is chosen
    assert chosen.connected_with is wrapper
    wrapper.dataReceived(b"b")
    assert chosen.received == b"ECHO ab"


def test_start_and_stop_reach_each_route_factory_once() -> None:
    shared = RecordingFactory("shared")
    other = RecordingFactory("other")
    switch = ProtocolSwitchingFactory(
        [
            Route("a", matchers.prefix(b"A"), shared),
            Route("b", matchers.prefix(b"B"), shared),
            Route("c", matchers.prefix(b"C"), other),
        ],
        clock=Clock(),
    )
    switch.doStart()
    switch.doStart()  # a second listener on the same factory
    assert (shared.starts, other.starts) == (1, 1)
    switch.doStop()
    assert (shared.stops, other.stops) == (0, 0)
    switch.doStop()
    assert (shared.stops, other.stops) == (1, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"routes": []}, "at least one route"),
        ({"sniff_timeout": 0}, "sniff_timeout is 0; expected a positive number"),
        ({"max_sniff_bytes": 0}, "max_sniff_bytes must be at least 1"),
        (
            {"on_timeout": "sssh"},
            "on_timeout names route 'sssh', but the routes are 'a'",
        ),
    ],
)
def test_bad_options_are_configuration_errors(
    options: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "routes": [Route("a", matchers.any(), RecordingFactory("a"))],
        "clock": Clock(),
    }
    arguments.update(options)
    with pytest.raises(ConfigurationError, match=message):
        ProtocolSwitchingFactory(**arguments)  # type: ignore[arg-type]


def test_routes_must_have_unique_names_and_real_parts() -> None:
    factory = RecordingFactory("a")
    with pytest.raises(ConfigurationError, match="two routes are named 'a'"):
        ProtocolSwitchingFactory(
            [Route("a", matchers.any(), factory), Route("a", matchers.any(), factory)]
        )
    with pytest.raises(ConfigurationError, match="is not a matcher"):
        Route("a", [b"GET"], factory)  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="is not a protocol factory"):
        Route("a", matchers.any(), object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="has no matcher"):
        Route("a", [], factory)


# -- asking fewer routes ------------------------------------------------------


class Counting:
    """A matcher that counts the questions it is asked."""

    def __init__(self, inner: matchers.Matcher) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_bytes = inner.max_bytes
        self.asked: list[bytes] = []

    def __call__(self, data: bytes) -> Verdict:
        self.asked.append(data)
        return self.inner(data)


def test_routes_ruled_out_by_the_first_byte_are_never_asked() -> None:
    ssh = Counting(matchers.ssh())
    tls = Counting(matchers.tls())
    web = Counting(matchers.http1())
    factories = {name: RecordingFactory(name) for name in ("ssh", "tls", "web")}
    switch = ProtocolSwitchingFactory(
        [
            Route("ssh", ssh, factories["ssh"]),
            Route("tls", tls, factories["tls"]),
            Route("web", web, factories["web"]),
        ],
        clock=Clock(),
    )
    for counting in (ssh, tls, web):
        counting.asked.clear()  # the factory asked each about single bytes
    for chunk in (b"GET / HT", b"TP/1.1\r\n"):
        detector = switch.buildProtocol(PEER)
        detector.makeConnection(StringTransport(peerAddress=PEER))
        detector.dataReceived(chunk[:1])
        detector.dataReceived(chunk[1:])
    assert ssh.asked == [] and tls.asked == []
    assert web.asked == [b"G", b"GET / HT", b"T", b"TP/1.1\r\n"]
    assert [i for i, _, _ in switch.decider.candidates[0x16]] == [1]  # TLS only
    # SSH-, SEARCH
    assert [i for i, _, _ in switch.decider.candidates[ord("S")]] == [0, 2]
    assert switch.decider.candidates[0x00] == ()


def test_a_matcher_that_raises_on_one_byte_is_still_asked() -> None:
    def picky(data: bytes) -> Verdict:
        if not data:
            return NEED_MORE
        if len(data) == 1:
            raise ValueError("one byte is too short to say")
        return matchers.MATCH if data.startswith(b"OK") else matchers.NO_MATCH

    harness = Harness(
        [("picky", FunctionMatcher("picky", 2, picky)), ("o", matchers.prefix(b"O"))]
    )
    assert harness.switch.decider.candidates[ord("O")][0][1].name == "picky"
    harness.feed(b"OK")
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "picky"


def test_undecided_connections_share_one_timer() -> None:
    clock = Clock()
    factory = RecordingFactory("echo")
    switch = ProtocolSwitchingFactory(
        [Route("echo", matchers.prefix(b"ECHO "), factory)],
        sniff_timeout=2.0,
        clock=clock,
    )
    transports = []
    for _ in range(5):
        transport = StringTransport(peerAddress=PEER)
        switch.buildProtocol(PEER).makeConnection(transport)
        transports.append(transport)
        clock.advance(0.25)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.75)  # t=2: the first connection's time is up
    assert [t.disconnecting for t in transports] == [True] + [False] * 4
    assert switch.stats["closed.timeout"] == 1
    clock.advance(1.0)  # t=3: all of them
    assert all(t.disconnecting for t in transports)
    assert clock.getDelayedCalls() == []


# -- what the routes' factories learn ------------------------------------------


def test_handoff_factories_build_from_what_the_detector_saw() -> None:
    @implementer(txcmux.IHandoffFactory)
    class Picking(Factory):
        def __init__(self) -> None:
            self.handoffs: list[Handoff] = []
            self.targets = {"a": RecordingFactory("a"), "b": RecordingFactory("b")}

        def protocol_for_handoff(self, handoff: Handoff) -> Protocol | None:
            self.handoffs.append(handoff)
            kind = handoff.buffered[5:6].decode()
            if kind not in self.targets:
                return None
            return self.targets[kind].buildProtocol(handoff.peer)

        def buildProtocol(self, addr: object) -> Protocol:  # type: ignore[override]
            raise AssertionError("the detector should not call buildProtocol")

    picking = Picking()
    route = Route("echo", matchers.prefix(b"ECHO "), picking)
    assert route.picks_by_handoff
    rejections: list[Rejection] = []
    switch = ProtocolSwitchingFactory(
        [route], clock=Clock(), on_error=rejections.append
    )
    for message, negotiated in (
        (b"ECHO b", None),
        (b"ECHO a", b"h2"),
        (b"ECHO c", None),
    ):
        transport = StringTransport(peerAddress=PEER)
        if negotiated is not None:
            transport.negotiatedProtocol = negotiated  # type: ignore[attr-defined]
        detector = switch.buildProtocol(PEER)
        transport.protocol = detector  # type: ignore[attr-defined]
        detector.makeConnection(transport)
        detector.dataReceived(message)
    assert [
        (h.route, h.peer, h.buffered, h.sent, h.negotiated) for h in picking.handoffs
    ] == [
        ("echo", PEER, b"ECHO b", b"", None),
        ("echo", PEER, b"ECHO a", b"", b"h2"),
        ("echo", PEER, b"ECHO c", b"", None),
    ]
    [b] = picking.targets["b"].built
    [a] = picking.targets["a"].built
    assert (a.received, b.received) == (b"ECHO a", b"ECHO b")
    assert b.events[:2] == ["makeConnection", "dataReceived"]
    assert [r.reason for r in rejections] == ["no_protocol"]
    assert switch.stats["routed.echo"] == 2


def test_handoffs_name_the_peer_a_proxy_protocol_header_gave() -> None:
    # What twisted.protocols.haproxy.proxyEndpoint wraps a listener's factory in.
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

    aware, received = handoff_recording_factory()
    switch = ProtocolSwitchingFactory(
        [Route("echo", matchers.prefix(b"ECHO "), aware)], clock=Clock()
    )
    proxy = IPv4Address("TCP", "10.0.0.1", 9999)
    wrapper = HAProxyWrappingFactory(switch).buildProtocol(proxy)
    assert wrapper is not None
    wrapper.makeConnection(StringTransport(peerAddress=proxy))
    wrapper.dataReceived(b"PROXY TCP4 192.0.2.7 192.0.2.1 51000 443\r\nECHO hi")
    [handoff] = received
    assert handoff.peer == IPv4Address("TCP", "192.0.2.7", 51000)


# -- what the detector sends, and the filter for the client's answer ----------


class _StripOk:
    """Removes the first ``OK\\n`` from the stream (a toy client's answer)."""

    def __init__(self) -> None:
        self.done = False
        self._seen = b""

    def feed(self, data: bytes) -> bytes:
        self._seen += data
        if b"OK\n" in self._seen:
            self.done = True
            kept = self._seen.replace(b"OK\n", b"", 1)
            self._seen = b""
            return kept
        # Hold back what may be the start of the answer; pass the rest.
        keep = next((n for n in (2, 1) if self._seen.endswith(b"OK\n"[:n])), 0)
        cut = len(self._seen) - keep
        out, self._seen = self._seen[:cut], self._seen[cut:]
        return out


def _asking(prefix: bytes) -> matchers.FunctionMatcher:
    """Matches ``prefix`` once a ``!`` follows, asking ``READY?`` meanwhile."""
    probe = Verdict(Outcome.NEED_MORE, b"READY?\n", _StripOk)

    def verdict(data: bytes) -> Verdict:
        if not (data.startswith(prefix) or prefix.startswith(data)):
            return matchers.NO_MATCH
        return matchers.MATCH if b"!" in data else probe

    return FunctionMatcher("asking", 64, verdict)


@pytest.mark.parametrize("cut", range(1, 12))
def test_the_clients_answer_to_a_probe_never_reaches_the_target(cut: int) -> None:
    stream = b"TOYOK\n!hello"
    harness = Harness([("toy", _asking(b"TOY"))])
    harness.feed(stream[:cut], stream[cut:])
    assert harness.transport.value() == b"READY?\n"  # sent once
    chosen = harness.chosen()
    assert chosen is not None
    assert chosen.received == b"TOY!hello"
    # With the answer gone by, the transport calls the target directly.
    assert harness.transport.protocol is chosen


def test_a_filter_still_waiting_keeps_the_detector_in_the_data_path() -> None:
    harness = Harness([("toy", _asking(b"TOY"))])
    harness.feed(b"TOY")
    harness.feed(b"!")  # decided before the answer came
    chosen = harness.chosen()
    assert chosen is not None
    assert harness.transport.protocol is harness.detector
    harness.feed(b"abOK\ncd", b"ef")
    assert chosen.received == b"TOY!abcdef"
    assert harness.transport.protocol is chosen


def test_a_fallback_route_after_settings_does_not_get_their_ack_either() -> None:
    # SETTINGS were sent, then the client was handed over on the timeout:
    # whichever route takes it never sent them.
    harness = Harness(
        [("grpc", matchers.grpc()), ("ssh", matchers.ssh())],
        sniff_timeout=1.0,
        on_timeout="ssh",
    )
    harness.feed(PREFACE)
    assert harness.transport.value() == EMPTY_SETTINGS
    harness.clock.advance(1.0)
    chosen = harness.chosen()
    assert chosen is not None and chosen.route == "ssh"
    harness.feed(SETTINGS_ACK)
    assert chosen.received == PREFACE


@pytest.mark.parametrize(
    "stream", [b"SSH-2.0-x\r\n" + SETTINGS_ACK, b"PRI * HTTP/1.1\r\n" + SETTINGS_ACK]
)
def test_the_settings_ack_filter_passes_a_stream_that_is_no_http2(
    stream: bytes,
) -> None:
    ack_filter = matchers.SettingsAckFilter()
    out = b"".join(ack_filter.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == stream
    assert ack_filter.done


# -- what the log says ----------------------------------------------------------


def test_a_connection_the_listener_closed_is_not_blamed_on_the_client() -> None:
    # Twisted's haproxy: endpoint closes a connection whose first bytes are no
    # PROXY header; the detector behind it never saw a byte.
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

    harness = Harness(THREE)
    wrapper = HAProxyWrappingFactory(harness.switch).buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    with captured_logs() as logs:
        wrapper.makeConnection(transport)
        wrapper.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        assert transport.disconnecting
        wrapper.connectionLost(Failure(ConnectionDone()))
    assert harness.switch.stats["closed.listener"] == 1
    assert harness.switch.stats["closed.peer"] == 0
    [line] = [line for line in logs if "while undecided" in line]
    assert "closed by the listener" in line
    assert "closed the connection" not in line


def test_each_decided_connection_gets_one_debug_line() -> None:
    with captured_logs() as logs:
        harness = Harness(THREE, log_decisions=True)
        harness.feed(b"ECH")
        harness.clock.advance(0.25)
        harness.feed(b"O hi")
    [line] = [line for line in logs if "route echo" in line]
    assert line == "txcmux: 127.0.0.1:40000: route echo after 7 bytes in 250.000 ms"


def test_decision_lines_are_off_by_default() -> None:
    with captured_logs() as logs:
        harness = Harness(THREE)
        harness.feed(b"ECHO hi")
    assert harness.chosen() is not None
    assert not [line for line in logs if "route echo" in line]
