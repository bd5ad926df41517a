"""HTTP/1.x matchers: by method, by request line, by a header of the first request.

All three read the bytes as RFC 9112 frames an HTTP/1.1 request: a request
line ``method SP request-target SP HTTP-version CRLF`` and header lines
``field-name ":" OWS field-value OWS CRLF`` up to an empty line.  A bare LF
is accepted where CRLF is expected (RFC 9112 section 2.2 allows it).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._params import Param, parameters
from ._simple import prefix_verdict
from ._verdict import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict

#: The ALPN protocol id of the connections these matchers match.
_HTTP1_ALPN = (b"http/1.1",)

# RFC 9110 section 5.6.2: tchar.
_TCHAR = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# RFC 9110 section 9 registers these; PATCH comes from RFC 5789.
STANDARD_METHODS = (
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
)
_VERSION = b"HTTP/1."
# A whole request line, as request_line_end() checks it byte by byte: the
# common case (a complete, valid line) in one C-speed match.
_REQUEST_LINE = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+ [\x21-\x7e\x80-\xff]+ HTTP/1\.[0-9]\r?\n"
)
DEFAULT_MAX_REQUEST_LINE = 8192
DEFAULT_MAX_HEADER_BYTES = 16384


def _is_token(value: bytes) -> bool:
    return bool(value) and all(byte in _TCHAR for byte in value)


@parameters(
    Param("extra_methods", list[str], (), repeats=True, singular="extra_method")
)
def http1_fast(*extra_methods: bytes | str) -> FunctionMatcher:
    """Match a request that starts with a known method and a space.

    Decides after a few bytes, so it is the cheapest HTTP/1 matcher.  Knows
    every RFC 9110 method and PATCH; name others (WebDAV's ``PROPFIND``...)
    in ``extra_methods``.  Extension methods must be tokens.
    """
    methods = list(STANDARD_METHODS)
    for method in extra_methods:
        raw = method.encode("ascii") if isinstance(method, str) else method
        if not _is_token(raw):
            raise ValueError(f"http1_fast(): {method!r} is not an HTTP method token")
        methods.append(raw)
    starts = tuple(m + b" " for m in methods)
    return FunctionMatcher(
        "http1_fast",
        max(len(s) for s in starts),
        lambda data: prefix_verdict(starts, data),
        alpn=_HTTP1_ALPN,
    )


def _line_end(data: bytes, start: int) -> tuple[int, int] | None:
    """Where the line that begins at ``start`` ends, and where the next begins."""
    newline = data.find(b"\n", start)
    if newline < 0:
        return None
    end = newline - 1 if newline > start and data[newline - 1] == 0x0D else newline
    return end, newline + 1


def find_field(
    data: bytes, position: int, wanted: Callable[[bytes, bytes], bool]
) -> Verdict:
    """Look through the header block that starts at ``position`` for a field.

    ``MATCH`` as soon as a complete field line makes ``wanted(name, value)``
    true (the raw name and value, the value untrimmed); ``NO_MATCH`` at the
    empty line ending the block, or at a malformed line (obsolete line
    folding included); ``NEED_MORE`` while neither has arrived.
    """
    while True:
        ends = _line_end(data, position)
        if ends is None:
            return NEED_MORE
        end, following = ends
        if end == position:
            return NO_MATCH  # the empty line: end of the headers
        colon = data.find(b":", position, end)
        name = data[position:colon]
        if colon < 0 or not _is_token(name):
            return NO_MATCH  # malformed, or obsolete line folding
        if wanted(name, data[colon + 1 : end]):
            return MATCH
        position = following


class HeaderBlock:
    """The first header block of a request, parsed once for every
    :func:`http1_header` matcher that asks about the same bytes.

    ``fields`` are the complete, well-formed field lines before the first
    line that is not one, each as (lower-case name, value trimmed and in
    lower case); ``then`` is what follows them: ``NO_MATCH`` for the empty
    line ending the block or a malformed line, ``NEED_MORE`` for a line not
    yet complete, or the request line's own verdict (with no fields) while
    that is not a whole request line.
    """

    __slots__ = ("fields", "then")

    def __init__(self, data: bytes) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        position = request_line_end(data)
        if isinstance(position, Verdict):
            self.then = position
            return
        while True:
            ends = _line_end(data, position)
            if ends is None:
                self.then = NEED_MORE
                return
            end, following = ends
            colon = data.find(b":", position, end)
            name = data[position:colon]
            if end == position or colon < 0 or not _is_token(name):
                self.then = NO_MATCH  # the empty line, or a malformed one
                return
            value = data[colon + 1 : end].strip(b" \t").lower()
            self.fields.append((name.lower(), value))
            position = following


#: The last header block parsed, and the bytes it was parsed from: every
#: http1_header route asks about the same bytes in one decision, so the
#: block is parsed once however many routes ask (the reactor asks from one
#: thread; the pair is replaced whole).
_last_block: tuple[bytes, HeaderBlock] | None = None


def header_block(data: bytes) -> HeaderBlock:
    """The :class:`HeaderBlock` of ``data``, parsed once per bytes object."""
    global _last_block
    last = _last_block
    if last is not None and last[0] is data:
        return last[1]
    block = HeaderBlock(data)
    _last_block = (data, block)
    return block


def request_line_end(data: bytes) -> Verdict | int:
    """Check an HTTP/1.x request line; return the offset just after it.

    Returns ``NEED_MORE`` or ``NO_MATCH`` while the line is incomplete or
    invalid.  Rejects as early as a byte proves the line is not HTTP/1.
    """
    complete = _REQUEST_LINE.match(data)
    if complete is not None:
        return complete.end()
    return _scan_request_line(data)


def _scan_request_line(data: bytes) -> Verdict | int:
    """:func:`request_line_end` byte by byte: also says why a line is not (yet) one."""
    size = len(data)
    i = 0
    while i < size and data[i] in _TCHAR:
        i += 1
    if i == size:
        return NEED_MORE
    if i == 0 or data[i] != 0x20:
        return NO_MATCH
    i += 1
    target_start = i
    while i < size and (0x21 <= data[i] <= 0x7E or data[i] >= 0x80):
        i += 1
    if i == size:
        return NEED_MORE
    if i == target_start or data[i] != 0x20:
        return NO_MATCH
    i += 1
    version = data[i : i + len(_VERSION) + 1]  # "HTTP/1." and one digit
    if len(version) <= len(_VERSION):
        return NEED_MORE if _VERSION.startswith(version) else NO_MATCH
    if not version.startswith(_VERSION) or not 0x30 <= version[-1] <= 0x39:
        return NO_MATCH
    i += len(version)
    if i == size:
        return NEED_MORE
    if data[i] == 0x0A:
        return i + 1
    if data[i] != 0x0D:
        return NO_MATCH
    if i + 1 == size:
        return NEED_MORE
    return i + 2 if data[i + 1] == 0x0A else NO_MATCH


@parameters(Param("max_request_line", int, DEFAULT_MAX_REQUEST_LINE))
def http1(max_request_line: int = DEFAULT_MAX_REQUEST_LINE) -> FunctionMatcher:
    """Match a full HTTP/1.x request line, with any method that is a token.

    Unlike :func:`http1_fast` it waits for the end of the request line, so it
    also catches extension methods and rejects HTTP/2's ``PRI * HTTP/2.0``.
    """

    def verdict(data: bytes) -> Verdict:
        end = request_line_end(data)
        if end is NEED_MORE and len(data) >= max_request_line:
            return NO_MATCH  # a line longer than allowed is not waited for
        if isinstance(end, Verdict):
            return end
        # Nor does it match when it arrives whole in one read.
        return MATCH if end <= max_request_line else NO_MATCH

    return FunctionMatcher("http1", max_request_line, verdict, alpn=_HTTP1_ALPN)


@parameters(
    Param("name", str),
    Param("value", str),
    Param("prefix", bool, False),
    Param("max_bytes", int, DEFAULT_MAX_HEADER_BYTES),
)
def http1_header(
    name: str | bytes,
    value: str | bytes,
    prefix: bool = False,
    max_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> FunctionMatcher:
    """Match an HTTP/1.x request whose first header block has ``name: value``.

    The name is compared case-insensitively, as HTTP field names are; so is
    the value (``Upgrade: WebSocket`` and ``Host: Example.COM`` are common),
    after optional white space is trimmed.  With ``prefix=True`` the value
    need only start with ``value``.  Any of several fields of that name may
    match.  Answers as soon as a matching field is complete; ``NO_MATCH`` at
    the end of the header block.
    """
    wanted_name = (name.encode("ascii") if isinstance(name, str) else name).lower()
    wanted_value = (
        value.encode("latin-1") if isinstance(value, str) else value
    ).lower()
    if not _is_token(wanted_name):
        raise ValueError(f"http1_header(): {name!r} is not an HTTP field name")

    def verdict(data: bytes) -> Verdict:
        # Only the first max_bytes count, however many arrived in one read.
        data = data[:max_bytes]
        block = header_block(data)
        for field_name, field_value in block.fields:
            if field_name == wanted_name and (
                field_value == wanted_value
                or (prefix and field_value.startswith(wanted_value))
            ):
                return MATCH
        if block.then is NEED_MORE and len(data) >= max_bytes:
            return NO_MATCH  # a header block longer than allowed is not waited for
        return block.then

    kind = "prefix" if prefix else "value"
    label = f"http1_header({wanted_name.decode()}, {kind}={wanted_value!r})"
    return FunctionMatcher(label, max_bytes, verdict, alpn=_HTTP1_ALPN)
