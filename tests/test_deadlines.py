"""Deadlines: many sniff timeouts on one reactor timer, with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from txcmux._deadlines import Deadlines

from .logs import captured_logs


class Timeline:
    """A clock, deadlines of ``timeout`` seconds on it, and who timed out when."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock, timeout)
        self.fired: list[tuple[str, float]] = []

    def waiter(self, name: str) -> Waiter:
        waiter = Waiter(name, self)
        self.deadlines.add(waiter)
        return waiter

    def timers(self) -> int:
        return len(self.clock.getDelayedCalls())


class Waiter:
    """Records the time it timed out at."""

    def __init__(self, name: str, timeline: Timeline) -> None:
        self.name = name
        self.timeline = timeline

    def timed_out(self) -> None:
        self.timeline.fired.append((self.name, self.timeline.clock.seconds()))


def test_each_waiter_times_out_at_its_own_deadline_on_one_timer() -> None:
    timeline = Timeline(5.0)
    timeline.waiter("a")
    timeline.clock.advance(1.0)
    timeline.waiter("b")
    timeline.clock.advance(1.5)
    timeline.waiter("c")
    assert timeline.timers() == 1
    timeline.clock.advance(2.5)  # t=5: a
    assert timeline.fired == [("a", 5.0)]
    assert timeline.timers() == 1
    timeline.clock.pump([0.5, 0.5, 1.0, 0.5, 0.5])  # to t=8
    assert timeline.fired == [("a", 5.0), ("b", 6.0), ("c", 7.5)]
    assert timeline.timers() == 0
    assert len(timeline.deadlines) == 0


def test_discarded_waiters_never_time_out_and_the_last_one_cancels_the_timer() -> None:
    timeline = Timeline(5.0)
    first = timeline.waiter("first")
    timeline.clock.advance(1.0)
    second = timeline.waiter("second")
    timeline.deadlines.discard(first)
    assert timeline.timers() == 1  # still due at t=5, for nobody
    timeline.clock.advance(4.0)  # t=5: nothing fires; the timer moves to t=6
    assert timeline.fired == []
    assert [c.getTime() for c in timeline.clock.getDelayedCalls()] == [6.0]
    timeline.deadlines.discard(second)
    assert timeline.timers() == 0
    timeline.deadlines.discard(second)  # twice, or never added: no harm
    timeline.deadlines.discard(Waiter("stranger", timeline))
    timeline.clock.advance(10.0)
    assert timeline.fired == []


def test_a_waiter_added_after_the_timer_stopped_gets_a_new_one() -> None:
    timeline = Timeline(2.0)
    timeline.deadlines.discard(timeline.waiter("a"))
    assert timeline.timers() == 0
    timeline.clock.advance(7.0)
    timeline.waiter("b")
    timeline.clock.advance(2.0)
    assert timeline.fired == [("b", 9.0)]


def test_waiters_due_together_all_time_out_in_arrival_order() -> None:
    timeline = Timeline(1.0)
    for name in "abc":
        timeline.waiter(name)
    timeline.clock.advance(1.0)
    assert timeline.fired == [("a", 1.0), ("b", 1.0), ("c", 1.0)]


def test_a_failing_waiter_is_logged_and_the_others_still_time_out() -> None:
    class Broken:
        def timed_out(self) -> None:
            raise RuntimeError("boom")

    timeline = Timeline(1.0)
    timeline.deadlines.add(Broken())
    timeline.waiter("after")
    timeline.clock.advance(0.5)
    timeline.waiter("later")
    with captured_logs() as logs:
        timeline.clock.advance(0.5)
    assert timeline.fired == [("after", 1.0)]
    assert any("handling a sniff timeout failed" in line for line in logs)
    assert timeline.timers() == 1  # for "later"
    timeline.clock.advance(0.5)
    assert timeline.fired == [("after", 1.0), ("later", 1.5)]


def test_a_waiter_timing_out_may_add_and_discard_others() -> None:
    timeline = Timeline(1.0)

    class Chaining(Waiter):
        def timed_out(self) -> None:
            super().timed_out()
            self.timeline.deadlines.discard(victim)
            self.timeline.waiter("added")

    timeline.deadlines.add(Chaining("chaining", timeline))
    timeline.clock.advance(0.5)
    victim = timeline.waiter("victim")
    timeline.clock.advance(0.5)
    assert timeline.fired == [("chaining", 1.0)]
    timeline.clock.advance(1.0)
    assert timeline.fired == [("chaining", 1.0), ("added", 2.0)]
    assert timeline.timers() == 0


ADVANCES = [0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 2.5]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 7)),
            st.tuples(st.just("discard"), st.integers(0, 7)),
            st.tuples(st.just("advance"), st.sampled_from(ADVANCES)),
        ),
        max_size=40,
    )
)
def test_deadlines_behave_like_one_timer_per_waiter(
    steps: list[tuple[str, float]],
) -> None:
    """Against a model of a DelayedCall per waiter: same waiters, same times."""
    timeline = Timeline(2.0)
    waiters: dict[int, Waiter] = {}
    due: dict[int, float] = {}  # the model: waiter -> its deadline
    expected: list[tuple[str, float]] = []
    for action, value in steps:
        if action == "add":
            key = int(value)
            if key in waiters:
                continue  # a connection is added once
            waiters[key] = timeline.waiter(str(key))
            due[key] = timeline.clock.seconds() + 2.0
        elif action == "discard":
            key = int(value)
            if key in waiters:
                timeline.deadlines.discard(waiters[key])
                due.pop(key, None)
        else:
            timeline.clock.advance(value)
            now = timeline.clock.seconds()
            for key in sorted(due, key=lambda k: (due[k], list(waiters).index(k))):
                if due[key] <= now:
                    expected.append((str(key), now))
                    del due[key]
        assert timeline.fired == expected
        assert timeline.timers() == (1 if due else 0)
        assert len(timeline.deadlines) == len(due)
