"""Checks that a matcher keeps the rules the detector relies on.

A matcher must be a pure, monotone, bounded function of the bytes seen so
far (see docs/matchers.md).  :func:`feed_matcher` shows what one answers for
every prefix of an input; :func:`assert_well_behaved` checks the rules over
sample inputs and raises ``AssertionError`` showing the smallest input that
breaks one::

    >>> from txcmux import matchers
    >>> from txcmux.testing import CURL_HTTP1, assert_well_behaved, feed_matcher
    >>> fed = feed_matcher(matchers.http1_fast(), b"GET / HTTP/1.1\\r\\n")
    >>> fed.whole.outcome.value, fed.decided_at
    ('match', 4)
    >>> assert_well_behaved(matchers.http1_fast(), [CURL_HTTP1, b"PRI * HTTP/2.0"])
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..matchers import Matcher, Outcome, Verdict
from ._harness import ConnectionReport, SwitchHarness, split_at

#: Inputs are tried at every prefix and every split point up to this many
#: bytes; beyond it, at doubling lengths (see :func:`assert_well_behaved`).
EXHAUSTIVE_BYTES = 4096

# Three-piece splits are all tried for inputs up to this length (about
# n * n / 2 detector runs), and this many sampled ones for longer inputs.
_ALL_PAIRS_UP_TO = 48
_SAMPLED_PAIRS = 300
# The longest input built to probe a matcher at its bound.
_LONGEST_PROBE = 1 << 20


@dataclass(frozen=True)
class Feeding:
    """What one matcher answered for every prefix of one input.

    ``verdicts[n]`` is the answer for ``data[:n]``, from the empty prefix
    to the whole input.
    """

    data: bytes
    verdicts: tuple[Verdict, ...]

    @property
    def whole(self) -> Verdict:
        """The answer for the whole input."""
        return self.verdicts[-1]

    @property
    def decided_at(self) -> int | None:
        """The length of the shortest prefix answered other than ``NEED_MORE``."""
        for length, verdict in enumerate(self.verdicts):
            if verdict.outcome is not Outcome.NEED_MORE:
                return length
        return None

    @property
    def outcomes(self) -> list[str]:
        """Each prefix's outcome, by its value (``'match'``, ...)."""
        return [verdict.outcome.value for verdict in self.verdicts]


def feed_matcher(matcher: Matcher, data: bytes) -> Feeding:
    """Ask ``matcher`` about every prefix of ``data``, shortest first.

    An exception from the matcher propagates.

    >>> from txcmux import matchers
    >>> feed_matcher(matchers.prefix(b"PING"), b"PINGS").outcomes
    ['need more', 'need more', 'need more', 'need more', 'match', 'match']
    """
    return Feeding(data, tuple(matcher(data[:end]) for end in range(len(data) + 1)))


def assert_well_behaved(
    matcher: Matcher,
    samples: Iterable[bytes],
    *,
    exhaustive_bytes: int = EXHAUSTIVE_BYTES,
) -> None:
    """Check that ``matcher`` keeps the detector's rules on ``samples``.

    Call it from your own tests with inputs your matcher should match and
    inputs it should refuse (the real client openings of this module make
    good ones).  For each sample it checks that the matcher

    - never raises, and always returns a :class:`~txcmux.matchers.Verdict`;
    - is monotone: once it answers ``MATCH`` or ``NO_MATCH`` for a prefix, it
      answers the same for every longer prefix, and for the sample padded
      to ``max_bytes``;
    - is bounded: never ``NEED_MORE`` for ``max_bytes`` bytes or more (a
      sample shorter than that is padded to ``max_bytes`` to try it, up to
      1 MiB);
    - is split-invariant: a detector with this matcher's route, fed the
      sample in two or three pieces, decides as it does on the whole sample
      (the same route, or the same rejection, or still waiting), and when it
      wrote the same bytes to the client (a matcher that sends asks for it
      only while it needs more), replays the same bytes.

    Prefixes and split points are all tried up to ``exhaustive_bytes`` of
    each sample, and at doubling lengths beyond; three-piece splits are all
    tried for samples up to 48 bytes, and 300 sampled ones (the same on
    every run) for longer samples.

    A broken rule raises ``AssertionError`` naming the rule and showing the
    smallest input found to break it.
    """
    inputs = list(samples)
    found = [_check_prefixes(matcher, sample, exhaustive_bytes) for sample in inputs]
    if not any(found):
        harness = SwitchHarness({"checked": matcher})
        found = [_check_splits(harness, sample, exhaustive_bytes) for sample in inputs]
    violations = [violation for violation in found if violation is not None]
    if violations:
        raise AssertionError(min(violations).message)


# -- the rules, one sample at a time -----------------------------------------


@dataclass(frozen=True, order=True)
class _Violation:
    """A broken rule; the one shown is the one with the shortest input."""

    size: int
    message: str


def _check_prefixes(
    matcher: Matcher, sample: bytes, exhaustive_bytes: int
) -> _Violation | None:
    """The rules a matcher alone can break: raising, monotony, the bound."""
    name = getattr(matcher, "name", repr(matcher))
    bound = matcher.max_bytes
    decided: tuple[bytes, Outcome] | None = None
    probes = [(sample[:end], "") for end in _prefix_lengths(sample, exhaustive_bytes)]
    if len(sample) < bound <= _LONGEST_PROBE:
        for filler in (b"\x00", b"A"):
            padded = sample + filler * (bound - len(sample))
            probes.append((padded, f" (the sample padded with {filler!r})"))
    for data, how in probes:
        answer = _ask(matcher, name, data, how)
        if isinstance(answer, _Violation):
            return answer
        if decided is not None and answer is not decided[1]:
            before, first = decided
            return _Violation(
                len(data),
                f"matcher {name} is not monotone: it answered {first.value!r}"
                f" for the first {_count(before)} {_show(before)}, but"
                f" {answer.value!r} for {_count(data)}{how}: {_show(data)}",
            )
        if answer is Outcome.NEED_MORE and len(data) >= bound:
            return _Violation(
                len(data),
                f"matcher {name} answered 'need more' for {_count(data)}{how},"
                f" at or beyond its max_bytes ({bound}): {_show(data)}",
            )
        # Each padding extends the sample, not the other padding: only what
        # the sample's own prefixes decided binds them.
        if decided is None and answer is not Outcome.NEED_MORE and not how:
            decided = (data, answer)
    return None


def _ask(matcher: Matcher, name: str, data: bytes, how: str) -> Outcome | _Violation:
    """The matcher's outcome for ``data``, or what was wrong with its answer."""
    try:
        verdict = matcher(data)
    except Exception as error:
        return _Violation(
            len(data),
            f"matcher {name} raised {error!r} for {_count(data)}{how}: {_show(data)}",
        )
    outcome = getattr(verdict, "outcome", None)
    if not isinstance(verdict, Verdict) or not isinstance(outcome, Outcome):
        return _Violation(
            len(data),
            f"matcher {name} returned {verdict!r}, not a txcmux.matchers.Verdict,"
            f" for {_count(data)}{how}: {_show(data)}",
        )
    return outcome


def _check_splits(
    harness: SwitchHarness, sample: bytes, exhaustive_bytes: int
) -> _Violation | None:
    """The rule only a detector shows: the same decision however split."""
    whole = _feed(harness, sample)
    for cuts in _splits(sample, exhaustive_bytes):
        found = _difference(harness, sample, cuts, whole)
        if found is not None:
            return _smallest_split_violation(harness, sample, cuts, found)
    return None


_Difference = tuple[ConnectionReport, ConnectionReport]


def _difference(
    harness: SwitchHarness,
    data: bytes,
    cuts: tuple[int, ...],
    whole: ConnectionReport | None = None,
) -> _Difference | None:
    """The reports on ``data`` fed whole and cut at ``cuts``, if they differ.

    They differ if the decision or the closing differs, or if the detector
    wrote the same bytes to the client both times but replayed others.
    """
    if whole is None:
        whole = _feed(harness, data)
    split = _feed(harness, *split_at(data, *cuts))
    if (split.decision, split.closed) != (whole.decision, whole.closed) or (
        split.written == whole.written and split.replayed != whole.replayed
    ):
        return whole, split
    return None


def _smallest_split_violation(
    harness: SwitchHarness,
    sample: bytes,
    cuts: tuple[int, ...],
    found: _Difference,
) -> _Violation:
    """Shrink a failing split: the shortest prefix, then the fewest cuts."""
    data = sample
    for shorter in range(max(cuts) + 1, len(sample)):
        smaller = _difference(harness, sample[:shorter], cuts)
        if smaller is not None:
            data, found = sample[:shorter], smaller
            break
    for cut in cuts if len(cuts) > 1 else ():
        fewer = _difference(harness, data, (cut,))
        if fewer is not None:
            cuts, found = (cut,), fewer
            break
    whole, split = found
    pieces = ", ".join(_show(piece) for piece in split_at(data, *cuts))
    return _Violation(
        len(data),
        f"a detector with this matcher decided differently on {_show(data)}"
        f" fed whole ({_describe(whole)}) and in pieces {pieces}"
        f" ({_describe(split)}); is the matcher pure (no state kept"
        " between calls)?",
    )


# -- helpers -----------------------------------------------------------------


def _feed(harness: SwitchHarness, *pieces: bytes) -> ConnectionReport:
    """One connection's report; the harness forgets the connection's target."""
    report = harness.feed(*pieces)
    for factory in harness.targets.values():
        factory.built.clear()
    return report


def _prefix_lengths(sample: bytes, exhaustive_bytes: int) -> Iterator[int]:
    """Every length up to ``exhaustive_bytes``, then doubling, then the whole."""
    last = min(len(sample), exhaustive_bytes)
    yield from range(last + 1)
    step = max(last, 1) * 2
    while step < len(sample):
        yield step
        step *= 2
    if len(sample) > last:
        yield len(sample)


def _splits(sample: bytes, exhaustive_bytes: int) -> Iterator[tuple[int, ...]]:
    """Cut points: every one (up to the bound), then pairs of them."""
    size = len(sample)
    cuts = [c for c in _prefix_lengths(sample, exhaustive_bytes) if 0 < c < size]
    for cut in cuts:
        yield (cut,)
    if size <= _ALL_PAIRS_UP_TO:
        for first in range(1, size):
            for second in range(first + 1, size):
                yield (first, second)
    elif size > 2:
        chooser = random.Random(size)  # the same pairs on every run
        for _ in range(_SAMPLED_PAIRS):
            first, second = sorted(chooser.sample(range(1, size), 2))
            yield (first, second)


def _describe(report: ConnectionReport) -> str:
    said = report.decision
    if report.route is not None:
        said += f", replayed {_show(report.replayed)}"
    if report.written:
        said += f", wrote {_show(report.written)}"
    return said


def _count(data: bytes) -> str:
    return "1 byte" if len(data) == 1 else f"{len(data)} bytes"


def _show(data: bytes, limit: int = 120) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[: limit // 2]!r} ... {data[-limit // 4 :]!r} ({len(data)} bytes)"
