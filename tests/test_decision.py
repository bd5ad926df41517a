"""The pure decision step: routes and bytes in, a decision out, no I/O."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory, Protocol

from txcmux import Reason, Route, Stat, matchers
from txcmux._decision import Decider, Reject, Wait, closed, routed
from txcmux.matchers import EMPTY_SETTINGS, PREFACE

FACTORY = Factory.forProtocol(Protocol)


def decider(*routes: tuple[str, matchers.Matcher], **options: object) -> Decider:
    built = [Route(name, matcher, FACTORY) for name, matcher in routes]
    return Decider(built, **options)  # type: ignore[arg-type]


SSH_WEB_GRPC = (
    ("ssh", matchers.ssh()),
    ("grpc", matchers.grpc()),
    ("web", matchers.http1()),
)


@pytest.mark.parametrize(
    ("data", "eof", "expected"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", False, "ssh"),
        (b"GET / HTTP/1.1\r\n", False, "web"),
        (b"GET / HT", False, Wait(frozenset(), ())),
        (b"SS", False, Wait(frozenset(), ())),  # SSH-, or a method like SEARCH
        (b"SSH-2", False, Wait(frozenset(), ())),  # still a possible method
        (b"\x00", False, Reject(Reason.NO_MATCH, "no route matched")),
        (
            b"GET / HT",
            True,
            Reject(
                Reason.NO_MATCH, "the client closed its side before any route matched"
            ),
        ),
    ],
)
def test_decisions_by_the_bytes_so_far(
    data: bytes, eof: bool, expected: str | Wait | Reject
) -> None:
    decision = decider(*SSH_WEB_GRPC, max_bytes=16384).decide(data, eof)
    if isinstance(expected, str):
        assert isinstance(decision, Route)
        assert decision.name == expected
    else:
        assert decision == expected


def test_waiting_routes_probes_are_returned_for_the_detector_to_send() -> None:
    decision = decider(*SSH_WEB_GRPC, max_bytes=16384).decide(PREFACE)
    assert isinstance(decision, Wait)
    assert decision.ruled_out == frozenset({2})  # "PRI * HTTP/2.0" is no HTTP/1
    [probe] = decision.probes
    assert probe.send == EMPTY_SETTINGS
    assert probe.answer_filter is matchers.SettingsAckFilter


def test_what_is_ruled_out_stays_ruled_out() -> None:
    # The spy rules itself out on its second byte; passed on, ``ruled_out``
    # means it is never asked again.
    asked: list[bytes] = []

    def spy(data: bytes) -> matchers.Verdict:
        if len(data) < 2:
            return matchers.NEED_MORE
        asked.append(data)
        return matchers.NO_MATCH

    d = decider(
        ("spy", matchers.FunctionMatcher("spy", 8, spy)),
        ("echo", matchers.prefix(b"ECHO ")),
        max_bytes=64,
    )
    first = d.decide(b"EC")
    assert isinstance(first, Wait)
    assert first.ruled_out == frozenset({0})
    assert d.decide(b"ECHO x", ruled_out=first.ruled_out).name == "echo"  # type: ignore[union-attr]
    assert asked == [b"EC"]


def test_an_earlier_route_still_waiting_keeps_a_later_match_from_winning() -> None:
    d = decider(
        ("long", matchers.prefix(b"GET /long")),
        ("web", matchers.http1_fast()),
        max_bytes=64,
    )
    assert isinstance(d.decide(b"GET /lo"), Wait)
    assert d.decide(b"GET /x").name == "web"  # type: ignore[union-attr]
    assert d.decide(b"GET /long").name == "long"  # type: ignore[union-attr]


def test_bytes_past_the_limit_are_not_looked_at() -> None:
    d = decider(("web", matchers.http1()), max_bytes=8)
    assert d.decide(b"GET /abc") == Reject(
        Reason.TOO_LONG, "still undecided after 8 bytes"
    )
    # The 9th byte would have completed nothing: the limit makes it final.
    assert d.decide(b"GET /abc HTTP/1.1\r\n").reason is Reason.TOO_LONG  # type: ignore[union-attr]


def test_no_match_within_the_limit_is_no_match_not_too_long() -> None:
    d = decider(("ssh", matchers.ssh()), max_bytes=4)
    assert d.decide(b"SSX-").reason is Reason.NO_MATCH  # type: ignore[union-attr]


def test_a_route_that_decides_on_no_bytes_makes_the_decision_possible_on_connect() -> (
    None
):
    assert not decider(*SSH_WEB_GRPC, max_bytes=64).decides_on_connect
    catch_all = decider(*SSH_WEB_GRPC, ("rest", matchers.any()), max_bytes=64)
    assert catch_all.decides_on_connect
    # ... but strict priority holds: the earlier routes still wait.
    assert catch_all.decide(b"") == Wait(frozenset(), ())
    alone = decider(("rest", matchers.any()), max_bytes=64)
    assert alone.decide(b"").name == "rest"  # type: ignore[union-attr]


def test_the_timeout_goes_to_the_fallback_route_or_rejects() -> None:
    ssh = Route("ssh", matchers.ssh(), FACTORY)
    assert Decider([ssh], 64, on_timeout=ssh).timed_out(5.0) is ssh
    assert Decider([ssh], 64).timed_out(5.0) == Reject(
        Reason.TIMEOUT, "undecided after 5.0 seconds"
    )


def test_two_distinct_probes_of_one_route_are_sent_and_filtered_together() -> None:
    class Strip:
        """Removes one marker from the stream, then is done."""

        def __init__(self, marker: bytes) -> None:
            self.marker, self.done = marker, False

        def feed(self, data: bytes) -> bytes:
            if self.marker in data:
                self.done = True
                return data.replace(self.marker, b"", 1)
            return data

    def waiting(send: bytes) -> matchers.FunctionMatcher:
        probe = matchers.Verdict(
            matchers.Outcome.NEED_MORE, send, lambda: Strip(send.lower())
        )
        return matchers.FunctionMatcher(send.decode(), 64, lambda data: probe)

    d = decider(("both", [waiting(b"A?"), waiting(b"B?")]), max_bytes=64)
    decision = d.decide(b"x")
    assert isinstance(decision, Wait)
    [probe] = decision.probes
    assert probe.send == b"A?B?"
    assert probe.answer_filter is not None
    chain = probe.answer_filter()
    assert chain.feed(b"1a?2") == b"12"
    assert not chain.done
    assert chain.feed(b"b?3") == b"3"
    assert chain.done


def test_stats_keys_are_named() -> None:
    assert routed("web") == "routed.web"
    assert [closed(reason) for reason in Reason] == [
        "closed.no_match",
        "closed.too_long",
        "closed.timeout",
        "closed.no_protocol",
        "closed.proxy_invalid",
        "closed.proxy_untrusted",
        "closed.proxy_missing",
        "closed.limit",
        "closed.draining",
    ]
    assert {str(s) for s in Stat} == {
        "accepted",
        "timeout_fallback",
        "closed.peer",
        "closed.listener",
    }
    # The reasons are strings: code comparing with the old literals still works.
    assert Reason.NO_MATCH == "no_match"
