"""txcmux.testing: the helpers find broken matchers and pass the shipped ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from txcmux import Route, matchers, testing
from txcmux.matchers import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict
from txcmux.testing import (
    CAPTURES,
    CURL_H2C,
    CURL_HTTP1,
    GRPCIO,
    HTTP2_CLIENTS,
    OPENSSH,
    SETTINGS_ACK,
    SwitchHarness,
    assert_well_behaved,
    capture,
    every_split,
    feed_matcher,
    http2_opening,
    split_at,
)

from . import captures, recording

SHIPPED = {
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

SYNTHETIC = [
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
    b"ECHO hello\n",
    b"*1\r\n$4\r\nPING\r\n",
    (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"),
    b"\x00\x01garbage\r\n",
    b"",
]


# -- assert_well_behaved finds broken matchers --------------------------------


def _flips_at_three(data: bytes) -> Verdict:
    """Matches short inputs, then changes its mind: not monotone."""
    return MATCH if len(data) < 3 else NO_MATCH


def test_a_matcher_that_changes_its_mind_is_not_monotone() -> None:
    flipping = FunctionMatcher("flipping", 8, _flips_at_three)
    with pytest.raises(AssertionError) as caught:
        assert_well_behaved(flipping, [b"GET / HTTP/1.1\r\n", b"SSH-2.0-x"])
    message = str(caught.value)
    assert "flipping is not monotone" in message
    # The smallest offending input: the first three bytes of either sample.
    assert "'match' for the first 0 bytes b''" in message
    assert "'no match' for 3 bytes: b'GET'" in message


def test_the_smallest_offending_input_is_shown() -> None:
    def late_flip(data: bytes) -> Verdict:
        if len(data) < 5:
            return NEED_MORE
        if data[4:5] == b"!":
            return NO_MATCH if len(data) == 5 else MATCH
        return MATCH if len(data) < 12 else NO_MATCH

    flipping = FunctionMatcher("late", 16, late_flip)
    samples = [b"abcdefghijklmnop!!!!", b"abcd!xyz"]  # flip at 12 and at 6
    with pytest.raises(AssertionError, match=r"for 6 bytes: b'abcd!x'"):
        assert_well_behaved(flipping, samples)


def test_a_matcher_that_raises_is_caught_with_the_input() -> None:
    def fragile(data: bytes) -> Verdict:
        if b"\xff" in data:
            raise ValueError("bad byte")
        return NEED_MORE if len(data) < 10 else NO_MATCH

    matcher = FunctionMatcher("fragile", 10, fragile)
    with pytest.raises(AssertionError) as caught:
        assert_well_behaved(matcher, [b"abcd\xffefgh", b"\xff"])
    assert str(caught.value) == (
        "matcher fragile raised ValueError('bad byte') for 1 byte: b'\\xff'"
    )


def test_a_matcher_needing_more_at_its_bound_is_caught() -> None:
    greedy = FunctionMatcher("greedy", 4, lambda data: NEED_MORE)
    with pytest.raises(AssertionError) as caught:
        assert_well_behaved(greedy, [b"PINGPONG"])
    assert str(caught.value) == (
        "matcher greedy answered 'need more' for 4 bytes, at or beyond its"
        " max_bytes (4): b'PING'"
    )


def test_short_samples_are_padded_to_the_bound() -> None:
    greedy = FunctionMatcher("greedy", 6, lambda data: NEED_MORE)
    with pytest.raises(AssertionError, match=r"for 6 bytes \(the sample padded"):
        assert_well_behaved(greedy, [b"PI"])


def test_paddings_are_not_held_to_each_other() -> None:
    # Undecided on the sample, the matcher may decide either way on what
    # follows: the NUL padding matches, the "A" padding does not.
    assert_well_behaved(matchers.prefix(b"\x00\x00"), [b""])


def test_a_padded_sample_must_keep_the_decision() -> None:
    def only_short(data: bytes) -> Verdict:
        if len(data) < 2:
            return NEED_MORE
        return MATCH if len(data) < 5 else NO_MATCH

    matcher = FunctionMatcher("short", 6, only_short)
    with pytest.raises(AssertionError, match=r"not monotone.*padded"):
        assert_well_behaved(matcher, [b"PING"])


def test_a_matcher_must_return_a_verdict() -> None:
    lying = FunctionMatcher("lying", 4, lambda data: "match")
    with pytest.raises(AssertionError, match="returned 'match', not a txcmux"):
        assert_well_behaved(lying, [b"x"])


class _Streak:
    """Impure: matches once asked three times in a row about growing input.

    Asked about every prefix in turn it looks monotone; a detector asks about
    each read's bytes so far, so its answer depends on how reads were cut.
    """

    name = "streak"
    max_bytes = 64

    def __init__(self) -> None:
        self._previous = -1
        self._streak = 0

    def __call__(self, data: bytes) -> Verdict:
        self._streak = self._streak + 1 if len(data) > self._previous else 1
        self._previous = len(data)
        return MATCH if self._streak >= 3 else NEED_MORE


def test_a_matcher_with_state_is_not_split_invariant() -> None:
    streak = _Streak()
    assert feed_matcher(streak, b"ECHO").outcomes == [
        "need more",
        "need more",
        "match",
        "match",
        "match",
    ]
    with pytest.raises(AssertionError) as caught:
        assert_well_behaved(_Streak(), [b"x" * 70])
    message = str(caught.value)
    assert message.startswith("a detector with this matcher decided differently")
    assert "is the matcher pure" in message
    # Which way round depends on the state it was left in; both are shown.
    assert "(route checked, replayed b'xxx" in message
    assert "(rejected no_match)" in message


# -- the shipped matchers keep the rules ---------------------------------------


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_matchers_are_well_behaved_on_the_captures(name: str) -> None:
    assert_well_behaved(SHIPPED[name], CAPTURES.values())


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_matchers_are_well_behaved_on_synthetic_openings(name: str) -> None:
    assert_well_behaved(SHIPPED[name], SYNTHETIC)


def test_feed_matcher_answers_for_every_prefix() -> None:
    fed = feed_matcher(matchers.ssh(), OPENSSH)
    assert len(fed.verdicts) == len(OPENSSH) + 1
    assert fed.decided_at == len(b"SSH-2.0-")
    assert fed.whole == MATCH
    assert fed.outcomes[:8] == ["need more"] * 8
    assert feed_matcher(matchers.ssh(), b"GET").decided_at == 1
    assert feed_matcher(matchers.ssh(), b"SSH").decided_at is None


# -- the harness -----------------------------------------------------------------


def test_every_split_gives_the_same_report() -> None:
    harness = SwitchHarness(
        {"grpc": matchers.grpc(), "web": [matchers.http1(), matchers.http2()]}
    )
    whole = harness.feed(CURL_HTTP1)
    assert (whole.route, whole.replayed, whole.written) == ("web", CURL_HTTP1, b"")
    assert not whole.closed
    for pieces in every_split(CURL_HTTP1):
        assert harness.feed(*pieces) == whole
    assert harness.stats["routed.web"] == len(CURL_HTTP1)
    assert harness.stats["accepted"] == len(CURL_HTTP1)


def test_the_report_says_what_the_detector_wrote_and_replays_exactly() -> None:
    harness = SwitchHarness({"grpc": matchers.grpc()})
    client = harness.connect()
    client.send(capture("grpcio-unary.before-settings.bin"))
    waiting = client.report()
    # Our SETTINGS, then the acknowledgement of the client's, as a server.
    assert waiting.decision == "waiting"
    assert waiting.written == matchers.EMPTY_SETTINGS + SETTINGS_ACK
    client.send(capture("grpcio-unary.after-settings.bin"))
    switched = client.report()
    assert switched.route == "grpc"
    # The client's answer to our SETTINGS is kept from the target.
    assert switched.replayed == GRPCIO.replace(SETTINGS_ACK, b"", 1)
    client.send(b"more")
    assert client.report().replayed.endswith(b"more")


def test_timeouts_run_on_the_harness_clock() -> None:
    harness = SwitchHarness(
        {"ssh": matchers.ssh(), "web": matchers.http1()},
        sniff_timeout=3.0,
        on_timeout="ssh",
    )
    silent = harness.connect()
    harness.advance(2.9)
    assert silent.report().decision == "waiting"
    harness.advance(0.1)
    assert silent.report().decision == "route ssh"
    assert harness.stats["timeout_fallback"] == 1

    closing = SwitchHarness({"web": matchers.http1()}, sniff_timeout=1.0)
    client = closing.connect()
    client.send(b"GET / HT")
    closing.advance(1.0)
    report = client.report()
    assert (report.decision, report.closed) == ("rejected timeout", True)
    assert report.rejection is not None
    assert report.rejection.data == b"GET / HT"
    assert closing.stats["closed.timeout"] == 1
    client.send(b"TP/1.1\r\n")  # the transport stopped reading
    assert client.report() == report


def test_rejections_and_clients_that_leave() -> None:
    harness = SwitchHarness({"web": matchers.http1()}, max_sniff_bytes=8)
    too_long = harness.feed(b"GET /a-long-path HTTP/1.1\r\n")
    assert (too_long.rejected, too_long.closed, too_long.route) == (
        "too_long",
        True,
        None,
    )
    refused = harness.feed(b"\x16\x03\x01", eof=True)
    assert refused.rejected == "no_match"
    assert refused.rejection is not None
    assert refused.rejection.reason == "no_match"
    assert harness.rejections[-1] is refused.rejection
    leaving = harness.connect()
    leaving.send(b"GE")
    leaving.disconnect()
    assert (leaving.report().decision, leaving.report().closed) == ("waiting", True)
    assert harness.stats["closed.peer"] == 1
    leaving.send(b"T /")  # nothing arrives after the client left
    assert harness.stats["closed.no_match"] == 1


def test_a_half_close_reaches_the_chosen_protocol() -> None:
    harness = SwitchHarness({"echo": matchers.prefix(b"ECHO")})
    client = harness.connect()
    client.send(b"ECHO hi")
    client.close_write()
    target = harness.targets["echo"].built[-1]
    # A Recorder is not half-closeable: the detector closes the connection.
    assert client.report().closed
    assert target.events == ["makeConnection", "dataReceived", "connectionLost"]


def test_routes_may_be_given_as_routes() -> None:
    real = testing.RecordingFactory("not used")
    harness = SwitchHarness([Route("h2", matchers.http2(), real)])
    assert harness.feed(CURL_H2C).route == "h2"
    assert real.built == []
    assert harness.targets["h2"].built[0].received == CURL_H2C


def test_split_at() -> None:
    assert split_at(b"abcdef") == [b"abcdef"]
    assert split_at(b"abcdef", 4, 2, 2, 0, 6) == [b"ab", b"cd", b"ef"]
    assert list(every_split(b"ab")) == [[b"a", b"b"]]
    assert list(every_split(b"a")) == []


# -- the captures ------------------------------------------------------------------


def test_every_capture_is_described_in_its_readme() -> None:
    readme = (Path(testing.__file__).parent / "_captures" / "README.md").read_text(
        "utf-8"
    )
    described = set(re.findall(r"^\| ([\w.-]+?)(?:\.\*|\.bin) \|", readme, re.M))
    stems = {
        re.sub(r"\.(before|after)-settings\.bin$|\.bin$", "", name) for name in CAPTURES
    }
    assert described == stems
    assert len(CAPTURES) == 22


def test_the_captures_are_what_their_readme_says() -> None:
    assert len(testing.CURL_CLIENT_HELLO) == 517
    assert len(testing.CHROMIUM_CLIENT_HELLO) == 1981
    assert testing.CURL_CLIENT_HELLO[:1] == b"\x16"
    assert OPENSSH.startswith(b"SSH-2.0-OpenSSH_9.2") and OPENSSH.endswith(b"\r\n")
    assert CURL_HTTP1.startswith(b"GET ") and b"curl/7.88" in CURL_HTTP1
    for client in HTTP2_CLIENTS:
        assert capture(f"{client}.before-settings.bin").startswith(matchers.PREFACE)
        assert capture(f"{client}.after-settings.bin").startswith(SETTINGS_ACK)
    assert http2_opening("grpc-js-unary") == testing.GRPC_JS
    assert http2_opening("h2load-grpc") == testing.H2LOAD_GRPC


def test_an_unknown_capture_names_the_known_ones() -> None:
    with pytest.raises(LookupError, match=r"no capture named 'x\.bin'.*openssh"):
        capture("x.bin")


def test_the_test_suite_reads_the_same_captures_and_recorders() -> None:
    assert captures.capture is capture
    assert captures.SETTINGS_ACK is SETTINGS_ACK
    assert recording.RecordingFactory is testing.RecordingFactory
    assert recording.HalfCloseRecordingFactory is testing.HalfCloseRecordingFactory


# -- importing it ----------------------------------------------------------------


def test_txcmux_testing_needs_neither_hypothesis_nor_pytest() -> None:
    script = (
        "import sys\n"
        "sys.modules['hypothesis'] = None\n"
        "sys.modules['pytest'] = None\n"
        "import txcmux\n"
        "assert 'txcmux.testing' not in sys.modules, 'import txcmux imported it'\n"
        "import txcmux.testing\n"
        "from txcmux import matchers\n"
        "txcmux.testing.assert_well_behaved(matchers.ssh(), [b'SSH-2.0-x'])\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
