"""HTTP/2 matchers: the client preface, and headers of the first request.

An HTTP/2 client (RFC 9113 section 3.4) opens with a fixed 24-byte preface,
then frames.  :func:`http2` decides on the preface alone.  :func:`http2_header`
and :func:`grpc` walk the frames after it to the first HEADERS frame (and its
CONTINUATION frames), and look for one field in that header block, decoding
only that field (:mod:`._hpack_scan`).  Because many clients (grpcio,
grpc-js, grpc-go, grpc-java) send nothing but SETTINGS until the server's
SETTINGS arrive, these matchers ask the detector to send an empty SETTINGS
frame once the preface is in, and give it a :class:`SettingsAckFilter` to
keep the client's ACK of that frame from the target.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import hpack

from ._hpack_scan import values_of
from ._params import Param, parameters
from ._verdict import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: An empty SETTINGS frame: "use the defaults".  Sent by matchers that wait
#: for a client's first HEADERS; the client answers it with a SETTINGS ACK,
#: which the detector keeps from the target (see :class:`SettingsAckFilter`).
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

_FRAME_HEADER = 9
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
_ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
# SETTINGS_MAX_FRAME_SIZE's initial value: we never advertise a larger one.
_MAX_FRAME = 16384
_LARGEST_FRAME = (1 << 24) - 1
_ENABLE_PUSH, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 0x2, 0x4, 0x5
_INITIAL_WINDOW = 65535
_MAX_WINDOW = (1 << 31) - 1
#: A SETTINGS ACK frame: what a server answers to each SETTINGS frame.
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
# A PING ACK's header; its 8-byte payload is the PING's (section 6.7).
_PING_ACK_HEADER = b"\x00\x00\x08\x06\x01\x00\x00\x00\x00"
DEFAULT_MAX_BYTES = 65536

Headers = list[tuple[bytes, bytes]]


def _header_fragment(flags: int, payload: bytes) -> bytes | None:
    """The header block fragment of a HEADERS frame, without padding/priority."""
    start, end = 0, len(payload)
    if flags & _PADDED:
        if not payload:
            return None
        start, end = 1, end - payload[0]
    if flags & _PRIORITY_FLAG:
        start += 5
    return payload[start:end] if start <= end else None


def first_headers(data: bytes) -> Verdict | Headers:
    """Decode the first header block a client sends, or say why not yet.

    Returns the decoded fields (names and values as bytes, in order), or
    ``NEED_MORE`` while the block is incomplete, or ``NO_MATCH`` when the
    bytes are not an HTTP/2 client's opening.
    """
    block = first_block(data)
    if isinstance(block, Verdict):
        return block
    try:
        decoded = hpack.Decoder().decode(block, raw=True)
    except hpack.HPACKError:
        return NO_MATCH
    return [(bytes(n), bytes(v)) for n, v in decoded]


def first_block(data: bytes) -> Verdict | bytes:
    """The first header block a client sends, undecoded, or why not yet.

    As :func:`first_headers`, without decoding the block.
    """
    return opening(data)[0]


def opening(data: bytes) -> tuple[Verdict | bytes, bytes]:
    """The first header block (or why not yet), and what a server owes so far.

    The second item is what an HTTP/2 server would have answered, by now,
    to the frames before the first HEADERS: a SETTINGS ACK for each
    SETTINGS frame, a PING ACK (same payload) for each PING (RFC 9113
    sections 6.5.3 and 6.7).  A frame that a server must refuse with a
    connection error (a SETTINGS value out of range, a PING of the wrong
    length, a window update of zero, a frame on a stream it may not be on)
    makes the opening ``NO_MATCH``: no HTTP/2 server takes it, and the
    target the connection goes to instead answers it as a server should.
    """
    if len(data) < len(PREFACE):
        return (NEED_MORE if PREFACE.startswith(data) else NO_MATCH), b""
    if not data.startswith(PREFACE):
        return NO_MATCH, b""
    position = len(PREFACE)
    block = bytearray()
    replies = bytearray()
    stream = 0
    window = _INITIAL_WINDOW
    while True:
        if len(data) - position < _FRAME_HEADER:
            return NEED_MORE, bytes(replies)
        length = int.from_bytes(data[position : position + 3], "big")
        kind, flags = data[position + 3], data[position + 4]
        stream_id = (
            int.from_bytes(data[position + 5 : position + 9], "big") & 0x7FFFFFFF
        )
        if length > _MAX_FRAME:
            return NO_MATCH, bytes(replies)
        payload_start = position + _FRAME_HEADER
        position = payload_start + length
        if position > len(data):
            return NEED_MORE, bytes(replies)
        payload = data[payload_start:position]
        if stream:  # inside a header block: only its CONTINUATION may follow
            if kind != _CONTINUATION or stream_id != stream:
                return NO_MATCH, bytes(replies)
            block += payload
        elif kind == _HEADERS:
            fragment = _header_fragment(flags, payload)
            if fragment is None or stream_id % 2 == 0:
                return NO_MATCH, bytes(replies)
            block += fragment
            stream = stream_id
        elif kind == _SETTINGS:
            if stream_id or not _valid_settings(flags, payload):
                return NO_MATCH, bytes(replies)
            if not flags & _ACK:
                replies += SETTINGS_ACK
            continue
        elif kind == _PING:
            if stream_id or length != 8:
                return NO_MATCH, bytes(replies)
            if not flags & _ACK:
                replies += _PING_ACK_HEADER + payload
            continue
        elif kind == _WINDOW_UPDATE:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            window += increment
            # On a stream: that stream is idle (no HEADERS yet), an error.
            if stream_id or length != 4 or not increment or window > _MAX_WINDOW:
                return NO_MATCH, bytes(replies)
            continue
        elif kind == _PRIORITY:
            depends = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if not stream_id or length != 5 or depends == stream_id:
                return NO_MATCH, bytes(replies)
            continue
        elif kind > _CONTINUATION:  # extension frames are ignored (4.1)
            continue
        else:
            return NO_MATCH, bytes(replies)
        if flags & _END_HEADERS:
            return bytes(block), bytes(replies)


def _valid_settings(flags: int, payload: bytes) -> bool:
    """Whether a SETTINGS frame is one a server acknowledges (6.5, 6.5.2)."""
    if flags & _ACK:
        return not payload
    if len(payload) % 6:
        return False
    for at in range(0, len(payload), 6):
        key = int.from_bytes(payload[at : at + 2], "big")
        value = int.from_bytes(payload[at + 2 : at + 6], "big")
        if key == _ENABLE_PUSH and value > 1:
            return False
        if key == _INITIAL_WINDOW_SIZE and value > _MAX_WINDOW:
            return False
        if key == _MAX_FRAME_SIZE and not _MAX_FRAME <= value <= _LARGEST_FRAME:
            return False
    return True


@parameters()
def http2() -> FunctionMatcher:
    """Match an HTTP/2 client preface (prior knowledge, h2c, or h2 after TLS)."""

    def verdict(data: bytes) -> Verdict:
        if data.startswith(PREFACE):
            return MATCH
        return NEED_MORE if PREFACE.startswith(data) else NO_MATCH

    return FunctionMatcher("http2", len(PREFACE), verdict, alpn=(b"h2",))


def header_matcher(
    label: str,
    name: bytes,
    accepts: Callable[[bytes], bool],
    send_settings: bool,
    max_bytes: int,
) -> FunctionMatcher:
    """An HTTP/2 matcher on the first header block: does a ``name`` field's
    value satisfy ``accepts``?  Only that field is decoded (see
    :mod:`._hpack_scan`)."""
    waiting = _waiting(b"") if send_settings else NEED_MORE

    def verdict(data: bytes) -> Verdict:
        # Only the first max_bytes count, however many arrived in one read:
        # a header block ending past the bound matches no more than one
        # still unfinished there (the answer must not depend on the split).
        data = data[:max_bytes]
        block, replies = opening(data)
        if isinstance(block, Verdict):
            if block is NEED_MORE and len(data) >= max_bytes:
                return NO_MATCH  # frames before the headers up to the bound
            if block is NEED_MORE and len(data) >= len(PREFACE):
                return _waiting(replies) if replies and send_settings else waiting
            return block
        try:
            values = values_of(block, name)
        except hpack.HPACKError:
            return NO_MATCH
        return MATCH if any(accepts(value) for value in values) else NO_MATCH

    return FunctionMatcher(label, max_bytes, verdict, alpn=(b"h2",))


@parameters(
    Param("name", str),
    Param("value", str),
    Param("prefix", bool, False),
    Param("send_settings", bool, True),
    Param("max_bytes", int, DEFAULT_MAX_BYTES),
)
def http2_header(
    name: str | bytes,
    value: str | bytes,
    prefix: bool = False,
    send_settings: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FunctionMatcher:
    """Match an HTTP/2 connection whose first request has ``name: value``.

    Names are compared in lower case (HTTP/2 requires lower-case names) and
    may be pseudo-headers such as ``:authority`` or ``:path``; values are
    compared exactly, or by prefix with ``prefix=True``.  With
    ``send_settings`` (the default) the detector sends an empty SETTINGS
    frame after the preface, so clients that wait for it go on.
    """
    wanted_name = (name.encode("ascii") if isinstance(name, str) else name).lower()
    wanted = value.encode("latin-1") if isinstance(value, str) else value

    def accepts(value: bytes) -> bool:
        return value == wanted or (prefix and value.startswith(wanted))

    kind = "prefix" if prefix else "value"
    label = f"http2_header({wanted_name.decode()}, {kind}={wanted!r})"
    return header_matcher(label, wanted_name, accepts, send_settings, max_bytes)


def _is_grpc_content_type(value: bytes) -> bool:
    # gRPC over HTTP/2 (PROTOCOL-HTTP2.md): "application/grpc" [("+proto" /
    # "+json" / {custom})].  Not gRPC-Web, which is application/grpc-web*.
    return value == b"application/grpc" or value.startswith(
        (b"application/grpc+", b"application/grpc;")
    )


@parameters(Param("max_bytes", int, DEFAULT_MAX_BYTES))
def grpc(max_bytes: int = DEFAULT_MAX_BYTES) -> FunctionMatcher:
    """Match a gRPC connection: HTTP/2 with ``content-type: application/grpc*``.

    Sends SETTINGS after the preface, as gRPC clients wait for them.
    gRPC-Web (``application/grpc-web``) is not matched: grpcio cannot serve it.
    """

    return header_matcher(
        "grpc", b"content-type", _is_grpc_content_type, True, max_bytes
    )


@functools.lru_cache(maxsize=256)
def _waiting(replies: bytes) -> Verdict:
    """The verdict of a matcher waiting for the first HEADERS.

    It sends the detector's SETTINGS, then ``replies`` (what a server owes
    for the client's frames so far, see :func:`opening`); the detector
    writes what it has not written yet.  Its filters keep the client's ACK
    of those SETTINGS from the target, and the target's own answers to the
    frames already answered from the client.
    """
    if not replies:
        return Verdict(NEED_MORE.outcome, EMPTY_SETTINGS, SettingsAckFilter)
    return Verdict(
        NEED_MORE.outcome,
        EMPTY_SETTINGS + replies,
        SettingsAckFilter,
        functools.partial(RepliesFilter, replies),
    )


class SettingsAckFilter:
    """Keeps a client's ACK of the detector's SETTINGS from the target.

    The detector sent SETTINGS (:data:`EMPTY_SETTINGS`) that the target (a
    gRPC server, Twisted's HTTP/2 server) never sent; strict servers (Go's)
    answer an ACK of SETTINGS they did not send with PROTOCOL_ERROR.  Peers
    acknowledge SETTINGS in the order they received them (RFC 9113 section
    6.5.3), and the detector's were sent before the target's, so the
    client's *first* SETTINGS ACK is the detector's: this drops exactly that
    frame and passes every other byte through unchanged::

        >>> ack = b"\\x00\\x00\\x00\\x04\\x01\\x00\\x00\\x00\\x00"
        >>> strip = SettingsAckFilter()
        >>> strip.feed(PREFACE + ack + b"rest") == PREFACE + b"rest"
        True
        >>> strip.done
        True

    Frame payloads pass through as they arrive; only a frame header split
    across reads is held back until its nine bytes are in.  A stream that
    does not open with the HTTP/2 preface (a client handed to a fallback
    route) is passed through untouched.
    """

    __slots__ = ("_header", "_passing", "_preface", "done")

    def __init__(self) -> None:
        self._preface = 0  # how much of the preface has been checked
        self._passing = 0  # payload bytes to pass before the next header
        self._header = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return ``data`` without the first SETTINGS ACK frame."""
        if self.done:
            return data
        if self._preface < len(PREFACE):
            expected = PREFACE[self._preface : self._preface + len(data)]
            if not data.startswith(expected):
                self.done = True  # not HTTP/2: nothing to remove
                return data
            self._preface += len(expected)
            if self._preface < len(PREFACE):
                return data
            return expected + self._frames(data[len(expected) :])
        return self._frames(data)

    def flush(self) -> bytes:
        """The client closed its side: return the bytes held back, if any.

        A frame header cut short by the end of the stream is not a SETTINGS
        ACK; the target gets it as it came.
        """
        held, self._header = self._header, b""
        self.done = True
        return held

    def _frames(self, data: bytes) -> bytes:
        out: list[bytes] = []
        view = memoryview(data)
        while view and not self.done:
            if self._passing:
                taken = view[: self._passing]
                out.append(bytes(taken))
                self._passing -= len(taken)
                view = view[len(taken) :]
                continue
            needed = _FRAME_HEADER - len(self._header)
            self._header += bytes(view[:needed])
            view = view[needed:]
            if len(self._header) < _FRAME_HEADER:
                break
            header, self._header = self._header, b""
            length = int.from_bytes(header[:3], "big")
            if header[3] == _SETTINGS and header[4] & _ACK and length == 0:
                self.done = True
            else:
                out.append(header)
                self._passing = length
        out.append(bytes(view))
        return b"".join(out)


class RepliesFilter:
    """Keeps from the client the target's answers to frames already answered.

    While it sniffs, the detector answers the client's SETTINGS and PING
    frames as a server would (see :func:`opening`): a client that waits for
    the ACK of its SETTINGS before it sends a request (h2spec, h2's own
    client) would otherwise wait until the sniff timeout.  The target is
    then given those frames again and answers them too; this filter, fed
    what the target writes, drops exactly those answers: the first SETTINGS
    ACK for each SETTINGS answered (a server acknowledges SETTINGS in the
    order it received them, RFC 9113 section 6.5.3), and the first PING ACK
    carrying each payload answered, in order.  ``replies`` is what the
    detector sent on the target's behalf::

        >>> ping = b"\\x00\\x00\\x08\\x06\\x01\\x00\\x00\\x00\\x00" + b"12345678"
        >>> strip = RepliesFilter(SETTINGS_ACK + ping)
        >>> target = EMPTY_SETTINGS + SETTINGS_ACK + ping + b"rest"
        >>> strip.feed(target) == EMPTY_SETTINGS + b"rest"
        True
        >>> strip.done
        True

    Every other byte passes unchanged; only a frame header split across
    writes (and a PING ACK's payload, to compare it) is held until complete.
    """

    __slots__ = ("_acks", "_header", "_passing", "_pings", "done")

    def __init__(self, replies: bytes) -> None:
        self._acks = 0
        pings: list[bytes] = []
        position = 0
        while position < len(replies):
            length = int.from_bytes(replies[position : position + 3], "big")
            start = position + _FRAME_HEADER
            if replies[position + 3] == _PING:
                pings.append(replies[start : start + length])
            else:
                self._acks += 1
            position = start + length
        self._pings = pings
        self._passing = 0  # payload bytes to pass before the next header
        self._header = b""  # a frame header (and a PING ACK's payload) held
        self.done = not self._acks and not pings

    def feed(self, data: bytes) -> bytes:
        """Return what the target wrote, less the answers already given."""
        if self.done:
            return data
        out: list[bytes] = []
        view = memoryview(data)
        while view and not self.done:
            if self._passing:
                taken = view[: self._passing]
                out.append(bytes(taken))
                self._passing -= len(taken)
                view = view[len(taken) :]
                continue
            wanted = _FRAME_HEADER
            if len(self._header) >= 5 and self._is_ping_ack(self._header):
                wanted += 8
            needed = wanted - len(self._header)
            self._header += bytes(view[:needed])
            view = view[needed:]
            if len(self._header) < _FRAME_HEADER:
                break
            header = self._header
            if self._is_ping_ack(header) and len(header) < _FRAME_HEADER + 8:
                continue  # its payload, to compare with the next one owed
            self._header = b""
            out.append(self._frame(header))
        out.append(bytes(view))
        return b"".join(out)

    def flush(self) -> bytes:
        """The target closed the connection: the bytes held back, if any."""
        held, self._header = self._header, b""
        self.done = True
        return held

    def _is_ping_ack(self, header: bytes) -> bool:
        return bool(
            self._pings
            and header[3] == _PING
            and header[4] & _ACK
            and header[:3] == b"\x00\x00\x08"
        )

    def _frame(self, held: bytes) -> bytes:
        """What of a whole frame header (or PING ACK) passes on."""
        length = int.from_bytes(held[:3], "big")
        if held[3] == _SETTINGS and held[4] & _ACK and not length and self._acks:
            self._acks -= 1
        elif len(held) > _FRAME_HEADER and held[_FRAME_HEADER:] == self._pings[0]:
            del self._pings[0]
        else:
            self._passing = length - (len(held) - _FRAME_HEADER)
            return held
        self.done = not self._acks and not self._pings
        return b""
