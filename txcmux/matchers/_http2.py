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
# Frames a client may send before its first request without breaking the
# protocol; unknown (extension) frame types must be ignored too (section 4.1).
_SKIPPABLE = frozenset({_SETTINGS, _PING, _WINDOW_UPDATE, _PRIORITY})
# SETTINGS_MAX_FRAME_SIZE's initial value: we never advertise a larger one.
_MAX_FRAME = 16384
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
    if len(data) < len(PREFACE):
        return NEED_MORE if PREFACE.startswith(data) else NO_MATCH
    if not data.startswith(PREFACE):
        return NO_MATCH
    position = len(PREFACE)
    block = bytearray()
    stream = 0
    while True:
        if len(data) - position < _FRAME_HEADER:
            return NEED_MORE
        length = int.from_bytes(data[position : position + 3], "big")
        kind, flags = data[position + 3], data[position + 4]
        stream_id = (
            int.from_bytes(data[position + 5 : position + 9], "big") & 0x7FFFFFFF
        )
        if length > _MAX_FRAME:
            return NO_MATCH
        payload_start = position + _FRAME_HEADER
        position = payload_start + length
        if position > len(data):
            return NEED_MORE
        payload = data[payload_start:position]
        if stream:  # inside a header block: only its CONTINUATION may follow
            if kind != _CONTINUATION or stream_id != stream:
                return NO_MATCH
            block += payload
        elif kind == _HEADERS:
            fragment = _header_fragment(flags, payload)
            if fragment is None or stream_id % 2 == 0:
                return NO_MATCH
            block += fragment
            stream = stream_id
        elif kind in _SKIPPABLE or kind > _CONTINUATION:
            continue
        else:
            return NO_MATCH
        if flags & _END_HEADERS:
            return bytes(block)


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
    waiting = (
        Verdict(NEED_MORE.outcome, EMPTY_SETTINGS, SettingsAckFilter)
        if send_settings
        else NEED_MORE
    )

    def verdict(data: bytes) -> Verdict:
        # Only the first max_bytes count, however many arrived in one read:
        # a header block ending past the bound matches no more than one
        # still unfinished there (the answer must not depend on the split).
        data = data[:max_bytes]
        block = first_block(data)
        if isinstance(block, Verdict):
            if block is NEED_MORE and len(data) >= max_bytes:
                return NO_MATCH  # frames before the headers up to the bound
            if block is NEED_MORE and len(data) >= len(PREFACE):
                return waiting
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
