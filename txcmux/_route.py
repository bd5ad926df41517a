"""A route: a name, the matchers that select it, and the factory it hands to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.logger import Logger

from ._connections import RouteLoad
from ._errors import ConfigurationError
from ._handoff import IHandoffFactory
from .matchers._address import NEVER, bind_matcher, depends_on_connection
from .matchers._verdict import (
    MATCH,
    NEED_MORE,
    NO_MATCH,
    Matcher,
    Outcome,
    Verdict,
    combine,
)

_log = Logger(namespace="txcmux")
# Enum members read once: a class attribute lookup on an Enum is slow.
_MATCH = Outcome.MATCH
_NEED_MORE = Outcome.NEED_MORE


class Matching:
    """Matchers as a route asks them: any match wins, then any need-more.

    The base of :class:`Route`, and of :class:`Bound`, the matchers of a
    route bound to one connection's addresses.
    """

    __slots__ = ()
    name: str
    matchers: tuple[Matcher, ...]

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


@dataclass(frozen=True, eq=False)
class Route(Matching):
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
    #: Whether a matcher decides on the connection's addresses (see
    #: :meth:`bind`).
    depends_on_connection: bool = field(init=False, repr=False)

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
        object.__setattr__(
            self, "depends_on_connection", any(map(depends_on_connection, found))
        )

    def bind(self, client: IAddress | None, local: IAddress | None) -> Matching:
        """This route's matchers for one connection, from ``client`` to ``local``.

        The route itself unless a matcher decides on the addresses
        (:func:`~txcmux.matchers.remote_ip` and the like); else a
        :class:`Bound` holding what each matcher became for them (a
        constant, or the part of a combination still to ask the bytes).
        """
        if not self.depends_on_connection:
            return self
        return Bound(
            self.name, tuple([bind_matcher(m, client, local) for m in self.matchers])
        )

    def __repr__(self) -> str:
        return f"<Route {self.name}: {' | '.join(m.name for m in self.matchers)}>"


class Bound(Matching):
    """A route's matchers bound to one connection (see :meth:`Route.bind`)."""

    __slots__ = ("matchers", "name", "never")

    def __init__(self, name: str, matchers: tuple[Matcher, ...]) -> None:
        self.name = name
        self.matchers = matchers
        #: Whether no byte can make this connection match (every part failed).
        self.never = all([m is NEVER for m in matchers])
