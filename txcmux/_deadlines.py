"""One timer for the sniff timeouts of all of a factory's undecided connections.

Every connection a :class:`~txcmux.ProtocolSwitchingFactory` sniffs gets the
same timeout, and connections arrive in time order, so their deadlines come
in arrival order too.  An insertion-ordered dict from connection to deadline
and one ``DelayedCall`` for the earliest deadline therefore replace a
``DelayedCall`` per connection, which cost more than a microsecond to
schedule and cancel, and the reactor's heap of timers more to keep.

::

    deadlines = Deadlines(clock, 5.0)
    deadlines.add(detector)       # on connect: detector.timed_out() in 5 s
    deadlines.discard(detector)   # decided or gone: no timeout

The timer is cancelled whenever no connection waits, so an idle factory
leaves nothing scheduled on the reactor.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger(namespace="txcmux")


class Waiter(Protocol):
    """What waits on a deadline: something that can time out."""

    def timed_out(self) -> None:
        """The deadline has passed."""


class Deadlines:
    """Deadlines ``timeout`` seconds after each ``add``, on one reactor timer."""

    __slots__ = ("_call", "_clock", "_timeout", "_waiting")

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._waiting: dict[Waiter, float] = {}
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, waiter: Waiter) -> None:
        """Call ``waiter.timed_out()`` in ``timeout`` seconds unless discarded."""
        self._waiting[waiter] = self._clock.seconds() + self._timeout
        if self._call is None:
            self._call = self._clock.callLater(self._timeout, self._expire)

    def discard(self, waiter: Waiter) -> None:
        """Forget ``waiter`` (it is fine if it was never added, or expired)."""
        waiting = self._waiting
        if waiting.pop(waiter, None) is not None and not waiting:
            call = self._call
            if call is not None:
                self._call = None
                call.cancel()

    def _expire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        waiting = self._waiting
        expired = []
        for waiter, deadline in waiting.items():
            if deadline > now:
                break
            expired.append(waiter)
        for waiter in expired:
            del waiting[waiter]
        for waiter in expired:
            try:
                waiter.timed_out()
            except Exception:  # one connection's failure must not stop the others'
                _log.failure("txcmux: handling a sniff timeout failed")
        if waiting and self._call is None:
            first = next(iter(waiting.values()))
            self._call = self._clock.callLater(max(first - now, 0.0), self._expire)
