"""What txcmux adds to Twisted's HTTP/2 connection: guards against clients.

1. A bound h2 lacks: close on a frame header that announces too long a frame.

h2's frame buffer checks a frame's length against the maximum frame size
only once the whole frame has arrived, so a client whose frame header
announces 16 MiB (the largest a header can say) makes the server hold up to
16 MiB per connection before it refuses the frame.  RFC 9113, section 4.2:
an endpoint MUST send FRAME_SIZE_ERROR for a frame that exceeds the size it
advertised.  :class:`FrameLengths` walks the client's bytes header by
header (it never looks inside a frame) and says when one announces more::

    >>> from txcmux.matchers import PREFACE
    >>> lengths = FrameLengths()
    >>> lengths.feed(PREFACE + bytes.fromhex("000000 04 00 00000000"), 16384)
    >>> lengths.feed(bytes.fromhex("ffffff 00 00 00000001"), 16384)
    16777215

2. A response for a stream the client already reset.  When a client sends
   a request and resets its stream in the same read (the pattern of the
   Rapid Reset attack, CVE-2023-44487), h2 has closed and may have
   forgotten the stream by the time Twisted's Site renders the request:
   Twisted then calls h2 for it, h2 raises (``StreamIDTooLowError``,
   ``StreamClosedError``), and the error escapes the connection's
   ``dataReceived``, which logs two tracebacks and drops the connection
   (measured with Twisted 26.10 and h2 4.4.1).  Writes for a stream h2 no
   longer has open are dropped instead, as Twisted already does for some of
   them; its own reset rate limit (a token bucket, GOAWAY ENHANCE_YOUR_CALM)
   still applies.  The same holds for a request that arrives in the same
   read as the client's GOAWAY: h2 has closed the connection, and its
   ``ProtocolError`` was logged as a failed request.

3. A connection h2 refused that stays open, and broken HPACK called a
   protocol error.  h2 turns every HPACK decoding error into a
   ``ProtocolError`` with the code PROTOCOL_ERROR, where RFC 9113
   section 4.3 asks for COMPRESSION_ERROR; the guard has the decoder
   raise a :class:`CompressionError` instead, which h2 answers with a
   GOAWAY of that code.  For it, or another protocol error, h2 queues a
   GOAWAY and Twisted asks the transport to close; through a TLS
   route the transport waits for its producer (the H2Connection, which
   never unregisters) first, so the client waited until the idle timeout.
   The guard counts the error (``closed.compression_error`` for h2's
   ``ProtocolError`` with that code, broken HPACK; ``closed.protocol_error``
   for the rest), logs it, and unregisters once the transport
   is closing; the same after a client's GOAWAY.

4. A flow-control window made negative.  A client lowering
   SETTINGS_INITIAL_WINDOW_SIZE after a response started may make a
   stream's window negative (RFC 9113 section 6.9.2: the server must wait
   for WINDOW_UPDATE frames until it is positive again).  Twisted computes
   the frame to send as ``min(max frame size, window)``: with -1 it sends
   all but the last byte, h2 raises ``FlowControlError`` in a timed call,
   and that connection's send loop is gone: the response never ends.  The
   guard has h2 report a negative window as zero, where Twisted waits for
   the window to open (it polls, once per reactor turn, as it does for any
   exhausted window).

5. A header block that never ends.  A client may send a HEADERS frame
   without END_HEADERS and then CONTINUATION frames a byte at a time, or
   one HEADERS frame's payload a byte at a time: each byte restarts
   Twisted's idle timeout, and h2 has no deadline, so the connection was
   held for as long as the client liked.  With ``header_timeout`` set (the
   web target sets its route's), a header block still open that many
   seconds after its first frame header gets a GOAWAY (PROTOCOL_ERROR) and
   the connection is closed, counted as ``closed.header_timeout``.
   :class:`FrameLengths` already walks the frame headers, so this costs a
   timer only while a block stays open across reads.

:func:`guarded` makes the subclass of Twisted's H2Connection that the web
target uses: it feeds every read to a :class:`FrameLengths` before h2 sees
it, closes the connection with a GOAWAY (FRAME_SIZE_ERROR) on the header
of such a frame, and drops writes for streams (or a connection) h2 has
closed.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import h2.exceptions
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from hpack import HPACKError, OversizedHeaderListError

from .._compat import h2_blocked
from .._log import describe_peer, log

_PREFACE_LENGTH = 24
_HEADER = 9
#: HEADERS, PUSH_PROMISE and CONTINUATION carry header blocks.
_BLOCK_TYPES = frozenset((0x1, 0x5, 0x9))
_END_HEADERS = 0x4


class FrameLengths:
    """Where each frame of a client's HTTP/2 stream starts, and its length;
    and whether a header block is still open (``in_headers``): from the
    header of a HEADERS frame to the end of the frame that carries
    END_HEADERS, CONTINUATION frames included."""

    __slots__ = ("_block", "_header", "_preface_left", "_skip")

    def __init__(self) -> None:
        self._preface_left = _PREFACE_LENGTH
        self._skip = 0  # bytes of the current frame's payload still to come
        self._header = b""  # a frame header split over reads
        self._block = 0  # 1: a header block is open; 2: this frame ends it

    @property
    def in_headers(self) -> bool:
        """Whether the bytes so far end inside a header block."""
        return self._block != 0

    def feed(self, data: bytes, maximum: int) -> int | None:
        """Take the next bytes; the announced length if one is over ``maximum``."""
        at, size = 0, len(data)
        if self._preface_left:
            at = min(self._preface_left, size)
            self._preface_left -= at
        while at < size:
            if self._skip:
                step = min(self._skip, size - at)
                self._skip -= step
                at += step
                if not self._skip and self._block == 2:
                    self._block = 0
                continue
            if self._header:
                needed = _HEADER - len(self._header)
                self._header += data[at : at + needed]
                at += needed
                if len(self._header) < _HEADER:
                    return None
                header, self._header = self._header, b""
            elif size - at >= _HEADER:
                header = data[at : at + _HEADER]
                at += _HEADER
            else:
                self._header = data[at:]
                return None
            length = int.from_bytes(header[:3], "big")
            if length > maximum:
                return length
            if header[3] in _BLOCK_TYPES:
                self._block = 2 if header[4] & _END_HEADERS else 1
            self._skip = length
            if not length and self._block == 2:
                self._block = 0
        return None


class CompressionError(h2.exceptions.ProtocolError):
    """A field block HPACK cannot decode: a connection error of type
    COMPRESSION_ERROR (RFC 9113, section 4.3)."""

    error_code = ErrorCodes.COMPRESSION_ERROR


def strict_decoding(decoder: Any) -> None:
    """Have ``decoder`` (h2's HPACK decoder) raise :class:`CompressionError`
    for a block it cannot decode; an oversized header list stays h2's own
    denial-of-service error (ENHANCE_YOUR_CALM).

    >>> import hpack
    >>> decoder = hpack.Decoder()
    >>> strict_decoding(decoder)
    >>> decoder.decode(b"\\x80")
    Traceback (most recent call last):
      ...
    txcmux._web._h2guard.CompressionError: ...
    """
    decode = decoder.decode

    def strict(data: bytes, raw: bool = False) -> Any:
        try:
            return decode(data, raw=raw)
        except OversizedHeaderListError:
            raise
        except (HPACKError, IndexError) as problem:
            raise CompressionError(f"undecodable header block: {problem}") from None

    decoder.decode = strict


#: The guarded subclass of each connection class, made once.
_made: dict[type[Any], type[Any]] = {}


def guarded(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (Twisted's H2Connection) with the frame-size bound.

    ``stats``, set by the web target on each connection, counts
    ``closed.frame_too_large``.
    """
    made = _made.get(connection_class)
    if made is not None:
        return made

    class GuardedH2Connection(connection_class):  # type: ignore[misc]
        _lengths: FrameLengths | None = None
        _refused = False
        stats: Counter[str] | None = None
        #: Seconds a header block may stay open (0: no deadline); set by
        #: the web target on each connection, as ``stats`` is.
        header_timeout: float = 0
        _header_deadline: Any = None

        def connectionMade(self) -> None:
            super().connectionMade()
            receive = self.conn.receive_data

            def receive_data(data: bytes) -> Any:
                try:
                    return receive(data)
                except h2.exceptions.ProtocolError as problem:
                    self._protocol_error(problem)
                    raise  # Twisted's H2Connection sends h2's GOAWAY and closes

            self.conn.receive_data = receive_data
            strict_decoding(self.conn.decoder)
            # A window made negative by SETTINGS counts as an empty one, which
            # Twisted waits on (see 4. above) instead of sending into it.
            window = self.conn.local_flow_control_window
            self.conn.local_flow_control_window = lambda stream_id: max(
                0, window(stream_id)
            )

        def dataReceived(self, data: bytes) -> None:
            if self._refused:
                return
            lengths = self._lengths
            if lengths is None:
                lengths = self._lengths = FrameLengths()
            announced = lengths.feed(data, self.conn.max_inbound_frame_size)
            if announced is None:
                super().dataReceived(data)
                if self.conn.state_machine.state is ConnectionState.CLOSED:
                    self._let_close()
                elif lengths.in_headers:
                    if self._header_deadline is None and self.header_timeout:
                        self._header_deadline = self._reactor.callLater(
                            self.header_timeout, self._headers_timed_out
                        )
                elif self._header_deadline is not None:
                    self._stop_header_deadline()
                return
            self._refused = True
            if self.stats is not None:
                self.stats["closed.frame_too_large"] += 1
            maximum = self.conn.max_inbound_frame_size
            log.warn(
                "txcmux.web: closing HTTP/2 connection from {peer}: a frame"
                " header announces {announced} bytes, over the {maximum} this"
                " server allows (FRAME_SIZE_ERROR)",
                peer=describe_peer(self.transport.getPeer()),
                announced=announced,
                maximum=maximum,
            )
            self.conn.close_connection(error_code=ErrorCodes.FRAME_SIZE_ERROR)
            self.transport.write(self.conn.data_to_send())
            self.transport.loseConnection()
            self._let_close()

        def _stop_header_deadline(self) -> None:
            deadline, self._header_deadline = self._header_deadline, None
            if deadline is not None and deadline.active():
                deadline.cancel()

        def _headers_timed_out(self) -> None:
            """A header block stayed open ``header_timeout`` seconds: a GOAWAY
            (PROTOCOL_ERROR, the code nginx's ``ngx_http_v2_read_handler``
            sends when an HTTP/2 read times out) and close."""
            self._header_deadline = None
            if self._refused or self.transport is None:
                return
            self._refused = True
            if self.stats is not None:
                self.stats["closed.header_timeout"] += 1
            log.info(
                "txcmux.web: closing HTTP/2 connection from {peer}: a header"
                " block still open after {timeout:g} s (header_timeout;"
                " GOAWAY PROTOCOL_ERROR)",
                peer=describe_peer(self.transport.getPeer()),
                timeout=self.header_timeout,
            )
            self.conn.close_connection(error_code=ErrorCodes.PROTOCOL_ERROR)
            self.transport.write(self.conn.data_to_send())
            self.transport.loseConnection()
            self._let_close()

        def connectionLost(self, reason: Any, _cancelTimeouts: bool = True) -> None:
            self._stop_header_deadline()
            super().connectionLost(reason, _cancelTimeouts=_cancelTimeouts)

        def _protocol_error(self, problem: Exception) -> None:
            """Count and log a client's HTTP/2 protocol error (h2 sends GOAWAY)."""
            self._refused = True
            code = getattr(problem, "error_code", None)
            compression = code == ErrorCodes.COMPRESSION_ERROR
            reason = "compression_error" if compression else "protocol_error"
            if self.stats is not None:
                self.stats["closed." + reason] += 1
            log.info(
                "txcmux.web: closing HTTP/2 connection from {peer}: {problem}"
                " (GOAWAY {code})",
                peer=describe_peer(self.transport.getPeer()),
                problem=problem,
                code=reason.upper(),
            )

        def _let_close(self) -> None:
            """Unregister from a transport that is closing, so that it closes.

            h2 closed the connection (a protocol error, a GOAWAY) and Twisted
            asked the transport to close; Twisted's TLS transport waits for
            its producer to go first, and this connection never unregisters:
            the client would wait for the close until the idle timeout.
            """
            transport = self.transport
            if transport is None or not transport.disconnecting:
                return
            blocked = h2_blocked(self)
            if blocked is not None:  # paused: the GOAWAY waits; then unregister
                blocked.addCallback(lambda _: self._let_close())
                return
            with contextlib.suppress(Exception):
                transport.unregisterProducer()

        def _stream_closed(self, stream_id: int) -> bool:
            if self.conn.state_machine.state is ConnectionState.CLOSED:
                return True  # a GOAWAY came: h2 refuses to send anything
            stream = self.conn.streams.get(stream_id)
            return stream is None or bool(stream.closed)

        def writeHeaders(
            self,
            version: bytes,
            code: bytes,
            reason: bytes,
            headers: Any,
            streamID: int,
        ) -> None:
            if not self._stream_closed(streamID):
                super().writeHeaders(version, code, reason, headers, streamID)

        def writeDataToStream(self, streamID: int, data: bytes) -> None:
            if not self._stream_closed(streamID):
                super().writeDataToStream(streamID, data)

        def endRequest(self, streamID: int) -> None:
            if not self._stream_closed(streamID):
                super().endRequest(streamID)

    _made[connection_class] = GuardedH2Connection
    return GuardedH2Connection
