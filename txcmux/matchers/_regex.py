"""A matcher from a regular expression over a connection's first bytes.

``regex(pattern, max_bytes)`` matches when the pattern matches at the start of
the stream, and answers ``NEED_MORE`` while a longer stream could still match
(as sslh's regex probe does, but without waiting on a read)::

    >>> from txcmux import matchers
    >>> stomp = matchers.regex(rb"(CONNECT|STOMP)\\r?\\n", max_bytes=16)
    >>> [stomp(data).outcome.value for data in (b"STO", b"STOMP\\n", b"GET ")]
    ['need more', 'match', 'no match']

Telling "no match yet" from "no match ever" needs partial matching, which
Python's ``re`` lacks; the ``regex`` package has it (``partial=True``: a
match that ran into the end of the input, where more input could complete
it).  Writing it by hand over ``re`` would mean a second regular expression
engine.

Only the first ``max_bytes`` bytes are looked at, and a pattern that still
needs more at that point does not match, so the answer is bounded.  To keep
the answer monotone (the same for every extension of the bytes once decided)
the pattern may not look past the end of what it matched: ``$``, ``\\Z``,
``\\b``, ``\\B`` and negative lookahead ``(?!...)`` are refused (each can
match at the end of the bytes seen so far and fail once more arrive).
Positive lookahead and every other construct of Python's ``re`` syntax are
allowed.
"""

from __future__ import annotations

from re import _parser  # type: ignore[attr-defined]
from typing import Any

import regex as _regex

from ._params import Param, parameters
from ._verdict import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict

# The re parser's names for the assertions that look past the end of a
# match: at end of string or line, at a word boundary or not.
_LOOKS_PAST_END = {
    "AT_END": "$",
    "AT_END_LINE": "$",
    "AT_END_STRING": "\\Z",
    "AT_BOUNDARY": "\\b",
    "AT_LOC_BOUNDARY": "\\b",
    "AT_UNI_BOUNDARY": "\\b",
    "AT_NON_BOUNDARY": "\\B",
    "AT_LOC_NON_BOUNDARY": "\\B",
    "AT_UNI_NON_BOUNDARY": "\\B",
}


def _refused_construct(parsed: Any) -> str | None:
    """The first construct in a parsed pattern that could break monotony."""
    for op, argument in parsed:
        name = str(op)
        if name == "AT" and str(argument) in _LOOKS_PAST_END:
            return _LOOKS_PAST_END[str(argument)]
        if name == "ASSERT_NOT" and argument[0] == 1:
            return "negative lookahead (?!...)"
        for part in _nested(argument):
            found = _refused_construct(part)
            if found is not None:
                return found
    return None


def _nested(argument: object) -> list[Any]:
    """The sub-patterns inside one parsed item's argument, at any depth."""
    if isinstance(argument, _parser.SubPattern):
        return [argument]
    if isinstance(argument, tuple | list):
        return [part for item in argument for part in _nested(item)]
    return []


@parameters(Param("pattern", bytes), Param("max_bytes", int))
def regex(pattern: bytes | str, max_bytes: int) -> FunctionMatcher:
    """Match a connection whose first bytes match ``pattern`` at their start.

    ``pattern`` is a bytes regular expression in Python's ``re`` syntax (a
    ``str`` is taken as Latin-1, one character per byte); it is anchored at
    the first byte.  ``max_bytes`` bounds what it may read: at that many
    bytes, a pattern that could still match is taken as not matching.
    Answers ``NEED_MORE`` while the bytes so far are a prefix of something
    the pattern matches.  Raises ValueError for a pattern that does not
    compile or that uses ``$``, ``\\Z``, ``\\b``, ``\\B`` or ``(?!...)``.
    """
    raw = pattern.encode("latin-1") if isinstance(pattern, str) else pattern
    if not isinstance(raw, bytes):
        raise ValueError(f"regex(): the pattern must be bytes, not {pattern!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"regex(): max_bytes must be at least 1, not {max_bytes!r}")
    try:
        refused = _refused_construct(_parser.parse(raw))
        compiled = _regex.compile(raw)
    except Exception as error:  # re.error, regex.error, or a parser quirk
        raise ValueError(f"regex(): {raw!r} does not compile: {error}") from None
    if refused is not None:
        raise ValueError(
            f"regex(): {raw!r} uses {refused}, which can match at the end of the"
            " bytes seen so far and fail once more arrive; match what follows"
            " explicitly instead (for instance [\\r\\n] rather than $)"
        )
    match = compiled.match

    def verdict(data: bytes) -> Verdict:
        found = match(data[:max_bytes], partial=True)
        if found is None:
            return NO_MATCH
        if not found.partial:
            return MATCH
        return NEED_MORE if len(data) < max_bytes else NO_MATCH

    return FunctionMatcher(f"regex({raw!r})", max_bytes, verdict)
