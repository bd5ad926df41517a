"""A route: a name, the matchers that select it, and the factory it hands to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from ._connections import RouteLoad
from ._errors import ConfigurationError
from ._handoff import IHandoffFactory
from .matchers._verdict import (
    MATCH,
    NEED_MORE,
    NO_MATCH,
    AnswerFilter,
    Matcher,
    Outcome,
    Verdict,
)

_log = Logger(namespace="txcmux")
# Enum members read once: a class attribute lookup on an Enum is slow.
_MATCH = Outcome.MATCH
_NEED_MORE = Outcome.NEED_MORE


@dataclass(frozen=True, eq=False)
class Route:
    """Where connections go whose first bytes one of ``matcher`` matches.

    ``matcher`` is one :class:`~txcmux.matchers.Matcher` or a sequence of
    them (any of them matching selects the route).  ``factory`` is any
    Twisted protocol factory; it builds the protocol that takes over the
    connection.  With ``max_connections``, a connection that selects the
    route while it holds that many is closed instead (counted in every
    listener the route serves; ``load.active`` is how many it holds).

    >>> from twisted.internet.protocol import Factory, Protocol
    >>> from txcmux import Route, matchers
    >>> factory = Factory.forProtocol(Protocol)
    >>> Route("web", [matchers.http1(), matchers.http2()], factory)
    <Route web: http1 | http2>
    """

    name: str
    matcher: Matcher | Sequence[Matcher]
    factory: IProtocolFactory
    max_connections: int | None = field(default=None, kw_only=True)
    matchers: tuple[Matcher, ...] = field(init=False, repr=False)
    #: The connections this route holds now.
    load: RouteLoad = field(init=False, repr=False, compare=False)
    #: The factory's ``stats`` key counting connections handed to this route.
    counter: str = field(init=False, repr=False)
    #: Whether ``factory`` provides :class:`~txcmux.IHandoffFactory`.
    picks_by_handoff: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        found = (
            tuple(self.matcher)
            if isinstance(self.matcher, Sequence)
            else (self.matcher,)
        )
        if not self.name:
            raise ConfigurationError("a Route needs a non-empty name")
        if not found:
            raise ConfigurationError(f"route {self.name!r} has no matcher")
        for matcher in found:
            if not callable(matcher) or not hasattr(matcher, "max_bytes"):
                raise ConfigurationError(
                    f"route {self.name!r}: {matcher!r} is not a matcher"
                    " (expected an object from txcmux.matchers)"
                )
        if not IProtocolFactory.providedBy(self.factory):
            raise ConfigurationError(
                f"route {self.name!r}: {self.factory!r} is not a protocol factory"
            )
        if self.max_connections is not None and (
            isinstance(self.max_connections, bool)
            or not isinstance(self.max_connections, int)
            or self.max_connections < 1
        ):
            raise ConfigurationError(
                f"route {self.name!r}: max_connections must be a positive"
                f" integer or None, not {self.max_connections!r}"
            )
        object.__setattr__(self, "matchers", found)
        object.__setattr__(self, "load", RouteLoad())
        object.__setattr__(self, "counter", "routed." + self.name)
        object.__setattr__(
            self, "picks_by_handoff", IHandoffFactory.providedBy(self.factory)
        )

    def verdict(self, data: bytes) -> Verdict:
        """Combine the matchers' answers: any match wins, then any need-more.

        A matcher that raises, or that asks for more than its own bound, is
        taken to have answered ``NO_MATCH``.  The matchers still waiting that
        want bytes sent are combined into one verdict (each distinct
        ``send`` once, with all their answer filters).
        """
        waiting = False
        sends: list[Verdict] = []
        for matcher in self.matchers:
            try:
                answer = matcher(data)
            except Exception:
                _log.failure(
                    "txcmux: matcher {matcher} of route {route} raised;"
                    " taken as no match",
                    matcher=matcher.name,
                    route=self.name,
                )
                continue
            outcome = answer.outcome
            if outcome is _MATCH:
                return MATCH
            if outcome is _NEED_MORE and len(data) < matcher.max_bytes:
                waiting = True
                if answer.send:
                    sends.append(answer)
        if not waiting:
            return NO_MATCH
        if not sends:
            return NEED_MORE
        return combine(sends)

    def may_start_with(self, first: bytes) -> bool:
        """Whether a connection whose first byte is ``first`` may match this route.

        False only when every matcher answers ``NO_MATCH`` to that byte
        alone; matchers being monotone, they answer the same to whatever
        follows it.  A matcher that raises here is given the benefit of the
        doubt (the detector will ask it again on the real bytes).
        """
        for matcher in self.matchers:
            try:
                outcome = matcher(first).outcome
            except Exception:
                return True
            if outcome is _MATCH or (
                outcome is _NEED_MORE and len(first) < matcher.max_bytes
            ):
                return True
        return False

    def __repr__(self) -> str:
        return f"<Route {self.name}: {' | '.join(m.name for m in self.matchers)}>"


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """One ``NEED_MORE`` verdict sending what each of ``verdicts`` sends, once.

    >>> from txcmux import matchers
    >>> probe = matchers.grpc()(matchers.PREFACE)
    >>> combine([probe, probe]) is probe
    True
    """
    distinct = list({v.send: v for v in verdicts}.values())
    if len(distinct) == 1:
        return distinct[0]
    filters = [v.answer_filter for v in distinct if v.answer_filter is not None]
    return Verdict(
        _NEED_MORE,
        b"".join(v.send for v in distinct),
        (lambda: FilterChain([make() for make in filters])) if filters else None,
    )


class FilterChain:
    """Several answer filters applied one after the other."""

    __slots__ = ("_filters", "done")

    def __init__(self, filters: list[AnswerFilter]) -> None:
        self._filters = filters
        self.done = False

    def feed(self, data: bytes) -> bytes:
        for answer_filter in self._filters:
            data = answer_filter.feed(data)
        self.done = all(f.done for f in self._filters)
        return data
