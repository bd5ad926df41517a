"""Matchers on fixed byte strings: ``any``, ``prefix`` and ``ssh``."""

from __future__ import annotations

from ._params import Param, parameters
from ._verdict import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict


@parameters()
def any_() -> FunctionMatcher:
    """Match every connection, even one that has sent nothing yet.

    Put it last, as the catch-all route; placed first it takes everything.
    """
    return FunctionMatcher("any", 0, lambda data: MATCH)


def prefix_verdict(values: tuple[bytes, ...], data: bytes) -> Verdict:
    """Match if ``data`` starts with a value; need more while it may still."""
    waiting = False
    for value in values:
        if data.startswith(value):
            return MATCH
        if value.startswith(data):
            waiting = True
    return NEED_MORE if waiting else NO_MATCH


@parameters(Param("values", list[bytes], repeats=True, singular="value"))
def prefix(*values: bytes) -> FunctionMatcher:
    """Match a connection whose first bytes are one of ``values``.

    >>> prefix(b"PING", b"PONG")(b"PONG!").outcome.value
    'match'
    """
    if not values:
        raise ValueError("prefix() needs at least one value")
    for value in values:
        if not isinstance(value, bytes) or not value:
            raise ValueError(f"prefix() values must be non-empty bytes, not {value!r}")
    frozen = tuple(values)
    name = "prefix(" + ", ".join(repr(v) for v in frozen) + ")"
    return FunctionMatcher(
        name, max(len(v) for v in frozen), lambda data: prefix_verdict(frozen, data)
    )


# RFC 4253 section 4.2: "SSH-protoversion-softwareversion"; protoversion is
# 2.0, or 1.99 for servers that also speak version 1.  The client sends its
# identification string first thing (the server may send extra lines before
# its own, a client may not).
_SSH_IDENTS = (b"SSH-2.0-", b"SSH-1.99-")


@parameters()
def ssh() -> FunctionMatcher:
    """Match an SSH client's identification string (``SSH-2.0-...``).

    Many SSH clients wait for the server to speak first; pair this route with
    ``on_timeout`` so silent clients reach it too.
    """
    return FunctionMatcher(
        "ssh",
        max(len(v) for v in _SSH_IDENTS),
        lambda data: prefix_verdict(_SSH_IDENTS, data),
    )
