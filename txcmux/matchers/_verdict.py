"""What a matcher answers, and the shape every matcher has.

A matcher is a pure function of the bytes a client has sent so far::

    >>> from txcmux import matchers
    >>> m = matchers.prefix(b"PING")
    >>> [m(data).outcome.value for data in (b"PI", b"PING\\r\\n", b"GET")]
    ['need more', 'match', 'no match']

Matchers must be *monotone*: once a matcher has answered ``MATCH`` or
``NO_MATCH`` for some bytes, it answers the same for every extension of them.
That is what makes the detector's decision independent of how the stream was
split into reads.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class Outcome(enum.Enum):
    """The three answers a matcher can give."""

    MATCH = "match"
    NO_MATCH = "no match"
    NEED_MORE = "need more"


class AnswerFilter(Protocol):
    """Removes the client's answer to a probe from the bytes a target receives.

    It is fed the client's bytes in order, from the first byte the matchers
    saw, and returns what the target is to receive of them.  Once ``done``
    is true it would pass everything through unchanged, and the detector
    stops feeding it (and leaves the data path).  A filter that holds bytes
    back between reads may also have ``flush() -> bytes``, which the
    detector calls when the client closes its side, to hand the target
    what is held (see :func:`flush_filter`).
    """

    done: bool

    def feed(self, data: bytes) -> bytes: ...


#: A filter of what the *target* writes to the client, in the same shape: fed
#: the target's bytes in order, it returns what the client is to get of them
#: (see ``Verdict.reply_filter``).
ReplyFilter = AnswerFilter


def flush_filter(answer_filter: AnswerFilter) -> bytes:
    """What ``answer_filter`` still holds back, once the client closed its side.

    A filter that holds bytes back between reads (a frame header cut by a
    read) gives them up through a ``flush()`` method returning them;
    a filter without one holds nothing.
    """
    flush = getattr(answer_filter, "flush", None)
    if flush is None:
        return b""
    held: bytes = flush()
    return held


@dataclass(frozen=True, slots=True)
class Verdict:
    """A matcher's answer, with what it needs written to the peer, if anything.

    ``send`` is only meaningful with ``NEED_MORE``: it is how a matcher that
    waits on a client which itself waits for the server (HTTP/2 clients that
    wait for SETTINGS) makes progress.  The detector writes each distinct
    ``send`` at most once per connection.

    The client may answer what was sent; the target the connection goes to
    never sent it, so the answer may not be for the target's eyes (an HTTP/2
    server that gets an ACK of SETTINGS it never sent closes the
    connection).  ``answer_filter`` makes a fresh :class:`AnswerFilter` that
    removes the answer; the detector applies one to every connection it
    wrote ``send`` to, whichever route takes it.

    A matcher may answer for the server while it waits (an HTTP/2 matcher
    acknowledges the client's SETTINGS and PINGs): ``send`` is then all a
    server would have written by now, and grows with the bytes seen; the
    detector writes only what it has not written yet (a ``send`` that
    extends one it wrote adds the rest).  The target, replayed the same
    bytes, answers them again: ``reply_filter`` makes a fresh filter that
    removes those answers from what the target writes to the client.
    """

    outcome: Outcome
    send: bytes = b""
    answer_filter: Callable[[], AnswerFilter] | None = None
    reply_filter: Callable[[], ReplyFilter] | None = None


MATCH = Verdict(Outcome.MATCH)
NO_MATCH = Verdict(Outcome.NO_MATCH)
NEED_MORE = Verdict(Outcome.NEED_MORE)


@runtime_checkable
class Matcher(Protocol):
    """Anything the detector can ask about a connection's first bytes.

    ``name`` is used in logs; ``max_bytes`` is the most bytes the matcher may
    ask for: once the buffer holds that many it must not answer ``NEED_MORE``
    (the detector treats it as ``NO_MATCH`` if it does).

    A matcher may also have ``alpn``, the TLS ALPN protocol ids a connection
    it matches speaks (``(b"h2",)`` for HTTP/2): a TLS route offers them for
    the routes behind it.  Without it a matcher implies no protocol id.
    """

    name: str
    max_bytes: int

    def __call__(self, data: bytes) -> Verdict: ...


class FunctionMatcher:
    """A :class:`Matcher` made of a name, a bound and a function of the bytes.

    This is the easiest way to write a matcher of your own::

        def _is_ping(data: bytes) -> Verdict:
            if len(data) < 4:
                return NEED_MORE if b"PING".startswith(data) else NO_MATCH
            return MATCH if data.startswith(b"PING") else NO_MATCH

        ping = FunctionMatcher("ping", 4, _is_ping)

    ``alpn`` lists the TLS ALPN protocol ids the matched protocol speaks.
    """

    __slots__ = ("_function", "alpn", "max_bytes", "name")

    def __init__(
        self,
        name: str,
        max_bytes: int,
        function: Callable[[bytes], Verdict],
        *,
        alpn: tuple[bytes, ...] = (),
    ) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self._function = function
        self.alpn = alpn

    def __call__(self, data: bytes) -> Verdict:
        return self._function(data)

    def __repr__(self) -> str:
        return f"<Matcher {self.name}>"


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
    # Sends that only grow (an HTTP/2 matcher's answers) are one send: the
    # longest of them says all the others do.
    distinct = [
        v
        for v in distinct
        if not any(w is not v and w.send.startswith(v.send) for w in distinct)
    ]
    if len(distinct) == 1:
        return distinct[0]
    filters = [v.answer_filter for v in distinct if v.answer_filter is not None]
    replies = [v.reply_filter for v in distinct if v.reply_filter is not None]
    return Verdict(
        Outcome.NEED_MORE,
        b"".join(v.send for v in distinct),
        (lambda: FilterChain([make() for make in filters])) if filters else None,
        (lambda: FilterChain([make() for make in replies])) if replies else None,
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

    def flush(self) -> bytes:
        """What the filters hold back, each one's passed through the next."""
        data = b""
        for answer_filter in self._filters:
            if data:
                data = answer_filter.feed(data)
            data += flush_filter(answer_filter)
        self.done = True
        return data
