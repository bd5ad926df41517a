"""Matchers for database protocols, registered through the plugin mechanism.

They live in txcmux but reach config files the way a third-party package's
matchers do: through the ``txcmux.matchers`` entry-point group (see
``setup.py``), so that mechanism is used, not only offered.
"""

from __future__ import annotations

from ._params import parameters
from ._verdict import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict

# RESP (Redis serialisation protocol): a client's commands are arrays,
# "*<count>\r\n$<len>\r\n<name>\r\n...".  Inline commands (plain text such
# as "PING\r\n") exist too, but cannot be told from other text protocols.


def _resp_verdict(data: bytes) -> Verdict:
    if not data:
        return NEED_MORE
    if data[:1] != b"*":
        return NO_MATCH
    end = data.find(b"\r\n")
    if end < 0:
        count = data[1:].removesuffix(b"\r")
        if (count and not count.isdigit()) or len(count) > 10:
            return NO_MATCH
        return NEED_MORE
    if not data[1:end].isdigit():
        return NO_MATCH
    following = data[end + 2 : end + 3]
    if not following:
        return NEED_MORE
    return MATCH if following == b"$" else NO_MATCH


@parameters()
def redis() -> FunctionMatcher:
    """Match a Redis client's first command in RESP array form (``*1\\r\\n$4...``)."""
    return FunctionMatcher("redis", 16, _resp_verdict)


# PostgreSQL startup (protocol 3.0): Int32 length, Int32 code.  The code is
# 196608 (3.0) for a StartupMessage, 80877103 for SSLRequest, 80877104 for
# GSSENCRequest, 80877102 for CancelRequest.
_POSTGRES_CODES = frozenset({196608, 80877103, 80877104, 80877102})


def _postgres_verdict(data: bytes) -> Verdict:
    if len(data) < 8:
        if len(data) >= 4 and not 8 <= int.from_bytes(data[:4], "big") <= 10000:
            return NO_MATCH
        return NEED_MORE
    length = int.from_bytes(data[:4], "big")
    code = int.from_bytes(data[4:8], "big")
    return MATCH if 8 <= length <= 10000 and code in _POSTGRES_CODES else NO_MATCH


@parameters()
def postgres() -> FunctionMatcher:
    """Match a PostgreSQL client's startup, SSL, GSS or cancel request."""
    return FunctionMatcher("postgres", 8, _postgres_verdict)
