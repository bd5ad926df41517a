"""A web route's gRPC backend: pooled HTTP/2 client connections to grpcio.

A web route with ``grpc_backend`` forwards each gRPC stream of its HTTP/2
connections (and each gRPC-Web call) as a stream of its own on a
connection to the backend.  :class:`GrpcBackend` keeps those connections
(opened on the first call, reused by every later one until the backend
closes them or announces GOAWAY) and hands each call a
:class:`BackendStream`: the backend's half of one forwarded call.

Flow control holds end to end.  The bytes a call sends are acknowledged to
whoever sent them (``on_sent``) only once the backend's window took them,
and the bytes the backend sends are acknowledged to the backend (``ack``)
only once the client's side took them, so a slow reader on either side
stops the other within one HTTP/2 window (65,535 bytes per stream with h2's
defaults) instead of filling memory.

The front of a call (an HTTP/2 stream of a client, or a gRPC-Web request)
is a :class:`CallFront`; this module never looks at what it is.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from .._log import log

Headers = Sequence[tuple[bytes, bytes]]

#: Request headers a forwarded call never carries to the backend: the
#: connection-specific ones HTTP/2 forbids (RFC 9113, section 8.2.2); h2
#: refuses to receive them, so they matter only for gRPC-Web over HTTP/1.1.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


class CallFront(TypingProtocol):
    """The client's half of a forwarded call, as the backend half drives it."""

    def on_response(self, headers: Headers, end: bool) -> None:
        """The backend's response headers (``end``: a trailers-only response)."""

    def on_data(self, data: bytes, credit: int) -> None:
        """Response bytes; call the stream's ``ack(credit)`` once they are taken."""

    def on_trailers(self, trailers: Headers) -> None:
        """The backend's trailers; the call is over."""

    def on_end(self) -> None:
        """The backend ended the call without trailers."""

    def on_reset(self, error_code: int) -> None:
        """The backend reset the call's stream."""

    def on_failed(self, reason: str) -> None:
        """The call never reached the backend (it is unavailable)."""

    def on_sent(self, credit: int) -> None:
        """The backend's window took request bytes worth ``credit``."""


class DataQueue:
    """DATA waiting for one HTTP/2 stream's send window, each chunk with its credit.

    ``credit`` is what sending a chunk frees on the side it came from (the
    flow-controlled length h2 reported for it, padding included).
    ``end`` and ``trailers`` say how the stream ends once the queue is sent.

    >>> queue = DataQueue()
    >>> queue.add(b"abc", 3)
    >>> queue.size
    3
    """

    __slots__ = ("_chunks", "end", "size", "trailers")

    def __init__(self) -> None:
        self._chunks: deque[tuple[bytes, int]] = deque()
        self.size = 0
        self.end = False
        self.trailers: Headers | None = None

    def add(self, data: bytes, credit: int) -> None:
        """Queue ``data`` (possibly empty: padding only) worth ``credit``."""
        self._chunks.append((data, credit))
        self.size += len(data)

    def send(
        self, conn: h2.connection.H2Connection, stream_id: int
    ) -> tuple[int, bool]:
        """Send what ``stream_id``'s window allows on ``conn``.

        Returns the credit freed by the chunks sent whole, and whether the
        stream was ended (the queue was empty and ``end`` set).
        """
        freed = 0
        chunks = self._chunks
        while chunks:
            data, credit = chunks[0]
            if data:
                room = min(
                    conn.local_flow_control_window(stream_id),
                    conn.max_outbound_frame_size,
                )
                if room <= 0:
                    return freed, False
                if room < len(data):
                    conn.send_data(stream_id, data[:room])
                    chunks[0] = (data[room:], credit)
                    self.size -= room
                    continue
                conn.send_data(stream_id, data)
                self.size -= len(data)
            chunks.popleft()
            freed += credit
        if not self.end:
            return freed, False
        if self.trailers is not None:
            conn.send_headers(stream_id, self.trailers, end_stream=True)
        else:
            conn.end_stream(stream_id)
        return freed, True

    def credit(self) -> int:
        """The credit of everything still queued (what a reset gives back)."""
        return sum(credit for _, credit in self._chunks)

    def clear(self) -> None:
        """Forget what is queued (the stream was reset)."""
        self._chunks.clear()
        self.size = 0


class BackendStream:
    """The backend's half of one forwarded call.

    Made by :meth:`GrpcBackend.call` with the request headers; it waits for
    a connection, then opens its stream there.  The front calls
    :meth:`send`, :meth:`end`, :meth:`reset` and :meth:`ack`.
    """

    __slots__ = (
        "_connection",
        "_reset_code",
        "done",
        "front",
        "headers",
        "stream_id",
        "up",
    )

    def __init__(self, headers: Headers, front: CallFront) -> None:
        self.headers = headers
        self.front = front
        self.up = DataQueue()
        self.stream_id: int | None = None
        self._connection: _BackendConnection | None = None
        self._reset_code: int | None = None
        self.done = False

    def send(self, data: bytes, credit: int) -> None:
        """Forward request bytes; ``front.on_sent(credit)`` once they are sent."""
        if self.done:
            self.front.on_sent(credit)
            return
        self.up.add(data, credit)
        if self._connection is not None:
            self._connection.pump(self)

    def end(self) -> None:
        """The client ended its request: end the stream after what is queued."""
        self.up.end = True
        if self._connection is not None and not self.done:
            self._connection.pump(self)

    def reset(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """The client reset its stream (or went away): reset the backend's."""
        if self.done:
            return
        self.done = True
        self.up.clear()
        if self._connection is not None:
            self._connection.reset(self, error_code)
        else:
            self._reset_code = error_code  # before a connection: never opened

    def ack(self, credit: int) -> None:
        """The front took response bytes worth ``credit``: open the backend's window."""
        if self._connection is not None and credit:
            self._connection.acknowledge(self, credit)


class GrpcBackend:
    """Pooled HTTP/2 connections to one grpcio server, for forwarded calls.

    ``endpoint`` is where the backend listens (any ``IStreamClientEndpoint``).
    ``name`` names it in log lines.  A connection that does not connect in
    ``connect_timeout`` seconds fails its calls with UNAVAILABLE, as every
    call that cannot reach the backend does.

    ``stats`` counts ``calls``, ``unavailable`` (calls that never reached
    the backend), ``reset_by_client``, ``reset_by_backend``, ``connections``
    (opened) and ``connect_failed``.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        *,
        clock: IReactorTime,
        name: str = "grpc_backend",
        connect_timeout: float = 10,
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self.connect_timeout = connect_timeout
        self._clock = clock
        self._ready: list[_BackendConnection] = []
        self._connecting: _Connecting | None = None
        self._closed = False
        self.stats: Counter[str] = Counter()

    def call(self, headers: Headers, front: CallFront) -> BackendStream:
        """Start forwarding a call with request ``headers``; its backend half."""
        stream = BackendStream(headers, front)
        self.stats["calls"] += 1
        if self._closed:
            self._unavailable(stream, "the route is stopping")
            return stream
        for connection in self._ready:
            if connection.has_room():
                connection.start(stream)
                return stream
        connecting = self._connecting
        if connecting is not None:
            connecting.waiting.append(stream)
            return stream
        connecting = self._connecting = _Connecting(self)
        connecting.waiting.append(stream)
        connecting.start()  # may connect at once (a unix socket)
        return stream

    def close(self) -> None:
        """Close every connection (the route stops); later calls are unavailable."""
        self._closed = True
        for connection in list(self._ready):
            connection.close()
        if self._connecting is not None:
            self._connecting.cancel()

    @property
    def connections(self) -> int:
        """How many backend connections are open."""
        return len(self._ready)

    # -- for the connections -------------------------------------------------

    def _connected(
        self, connection: _BackendConnection, waiting: list[BackendStream]
    ) -> None:
        self._connecting = None
        self.stats["connections"] += 1
        if self._closed:
            connection.close()
            for stream in waiting:
                self._unavailable(stream, "the route is stopping")
            return
        self._ready.append(connection)
        for stream in waiting:
            if not stream.done:
                connection.start(stream)

    def _connect_failed(self, reason: str, waiting: list[BackendStream]) -> None:
        self._connecting = None
        self.stats["connect_failed"] += 1
        log.warn(
            "txcmux: gRPC backend {name} ({endpoint!r}) unavailable: {reason}",
            name=self.name,
            endpoint=self.endpoint,
            reason=reason,
        )
        for stream in waiting:
            self._unavailable(stream, f"gRPC backend unavailable: {reason}")

    def _gone(self, connection: _BackendConnection) -> None:
        if connection in self._ready:
            self._ready.remove(connection)

    def _unavailable(self, stream: BackendStream, reason: str) -> None:
        if stream.done:
            return
        stream.done = True
        self.stats["unavailable"] += 1
        stream.front.on_failed(reason)


class _Connecting:
    """One connection attempt, and the calls waiting for it."""

    def __init__(self, backend: GrpcBackend) -> None:
        self.backend = backend
        self.waiting: list[BackendStream] = []
        # The connection built, kept here: some endpoints hand back a
        # wrapper of it (the in-process server's named unix sockets do).
        self._built: _BackendConnection | None = None
        self._attempt: Deferred[IProtocol] | None = None
        self._timer: IDelayedCall | None = None
        self._timed_out_already = False

    def start(self) -> None:
        """Connect; the waiting calls start or fail when that ends."""
        backend = self.backend
        factory = Factory.forProtocol(self._build)
        factory.noisy = False
        self._timer = backend._clock.callLater(backend.connect_timeout, self._timed_out)
        self._attempt = backend.endpoint.connect(factory)
        self._attempt.addCallbacks(self._made, self._failed)
        self._attempt.addErrback(
            lambda failure: log.failure("txcmux: gRPC backend connection", failure)
        )

    def _build(self) -> _BackendConnection:
        self._built = _BackendConnection(self.backend)
        return self._built

    def _made(self, protocol: IProtocol) -> None:
        self._stop_timer()
        assert self._built is not None
        self.backend._connected(self._built, self.waiting)

    def _failed(self, failure: Failure) -> None:
        self._stop_timer()
        if self._timed_out_already:
            reason = f"no connection within {self.backend.connect_timeout:g} s"
        else:
            reason = failure.getErrorMessage() or repr(failure.value)
        self.backend._connect_failed(reason, self.waiting)

    def _timed_out(self) -> None:
        self._timer = None
        self._timed_out_already = True
        self.cancel()

    def cancel(self) -> None:
        if self._attempt is not None:
            self._attempt.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


#: h2's settings for backend connections.  The request headers sent were
#: checked by h2 when the client's connection received them, and the
#: response headers received are checked again when they are sent to the
#: client, so h2 is not asked to check each of them twice (measured: a
#: third of the CPU a forwarded unary call costs went to header checks).
_CLIENT_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)


class _GoingAwayConnection(h2.connection.H2Connection):
    """h2's client connection, letting a graceful GOAWAY's streams finish.

    h2 refuses to send or receive anything once a GOAWAY arrived, even for
    the streams the GOAWAY lets finish (RFC 9113, section 6.8: streams up to
    ``last_stream_id`` "might still complete"), and grpcio's graceful stop
    is exactly such a GOAWAY, followed by the answers of the calls it runs.
    A GOAWAY with NO_ERROR is reported here as h2 reports it
    (``ConnectionTerminated``) but leaves the connection open; any other
    GOAWAY is h2's own.  ``_receive_goaway_frame`` is h2's dispatch method
    for the frame (h2 4.x; tests/test_grpc_streams.py checks a graceful
    stop end to end).
    """

    def _receive_goaway_frame(self, frame: Any) -> Any:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


@implementer(IPushProducer)
class _BackendConnection(Protocol):
    """One HTTP/2 client connection to the backend, carrying many calls."""

    def __init__(self, backend: GrpcBackend) -> None:
        self.backend = backend
        self.conn = _GoingAwayConnection(config=_CLIENT_CONFIG)
        self.streams: dict[int, BackendStream] = {}
        self._paused = False
        self._going_away = False
        self._lost = False

    # -- the pool's view -----------------------------------------------------

    def has_room(self) -> bool:
        """Whether another call may open a stream here."""
        if self._going_away or self._lost:
            return False
        limit = self.conn.remote_settings.max_concurrent_streams
        return self.conn.open_outbound_streams < limit

    def start(self, stream: BackendStream) -> None:
        """Open ``stream`` on this connection: its headers, then what it queued."""
        stream_id = self.conn.get_next_available_stream_id()
        stream.stream_id = stream_id
        stream._connection = self
        self.streams[stream_id] = stream
        self.conn.send_headers(stream_id, stream.headers)
        self.pump(stream)
        self._flush()

    def pump(self, stream: BackendStream) -> None:
        """Send what ``stream`` has queued, as far as the windows allow."""
        if self._paused or self._lost or stream.done or stream.stream_id is None:
            return
        try:
            freed, ended = stream.up.send(self.conn, stream.stream_id)
        except h2.exceptions.ProtocolError:
            freed, ended = stream.up.credit(), True  # the backend closed its side
            stream.up.clear()
        self._flush()
        if freed:
            stream.front.on_sent(freed)
        if ended:
            stream.up.end = False  # sent: nothing more to end

    def reset(self, stream: BackendStream, error_code: int) -> None:
        """Reset ``stream`` (the client did)."""
        self.backend.stats["reset_by_client"] += 1
        stream_id = stream.stream_id
        if stream_id is None:
            return
        self.streams.pop(stream_id, None)
        if not self._lost:
            # ProtocolError: already closed on both sides.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(stream_id, error_code)
            self._flush()

    def acknowledge(self, stream: BackendStream, credit: int) -> None:
        """Give the backend back ``credit`` bytes of ``stream``'s window."""
        if self._lost or stream.stream_id is None:
            return
        self.conn.acknowledge_received_data(credit, stream.stream_id)
        self._flush()

    def close(self) -> None:
        """Close the connection with GOAWAY; its calls end as the backend's do."""
        if self._lost or self.transport is None:
            return
        self._going_away = True
        self.conn.close_connection()
        self._flush()
        self.transport.loseConnection()

    # -- IProtocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.conn.initiate_connection()
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            log.warn(
                "txcmux: gRPC backend {name} broke HTTP/2 ({error}); closing it",
                name=self.backend.name,
                error=error,
            )
            self._flush()
            if self.transport is not None:
                self.transport.loseConnection()
            self._fail_all("the backend broke HTTP/2")
            return
        for event in events:
            self._event(event)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self.backend._gone(self)
        self._fail_all("the backend connection closed")

    # -- IPushProducer: the backend's transport pauses us ---------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        for stream in list(self.streams.values()):
            self.pump(stream)

    def stopProducing(self) -> None:
        self._paused = True

    # -- events ----------------------------------------------------------------

    def _event(self, event: Any) -> None:
        stream_id = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.WindowUpdated):
            if stream_id:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    self.pump(stream)
            else:
                for stream in list(self.streams.values()):
                    self.pump(stream)
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)
            return
        if isinstance(event, h2.events.RemoteSettingsChanged):
            # A larger initial window can unblock queued request bytes.
            for stream in list(self.streams.values()):
                self.pump(stream)
            return
        stream = self.streams.get(stream_id) if stream_id else None
        if stream is None:
            return
        front = stream.front
        if isinstance(event, h2.events.ResponseReceived):
            front.on_response(event.headers, event.stream_ended is not None)
            if event.stream_ended is not None:
                self._finished(stream)
        elif isinstance(event, h2.events.DataReceived):
            front.on_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            self._finished(stream)
            front.on_trailers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            if stream.stream_id in self.streams:  # not ended with trailers
                self._finished(stream)
                front.on_end()
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(stream_id, None)
            stream.done = True
            self.backend.stats["reset_by_backend"] += 1
            front.on_reset(event.error_code)

    def _finished(self, stream: BackendStream) -> None:
        """The backend ended ``stream``: stop sending on it, forget it."""
        assert stream.stream_id is not None
        self.streams.pop(stream.stream_id, None)
        stream.done = True
        stream.up.clear()
        if self.conn.streams.get(stream.stream_id) is not None and not self._lost:
            h2_stream = self.conn.streams[stream.stream_id]
            if not h2_stream.closed:
                # The call is over; a request still being sent is not wanted.
                self.conn.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)

    def _goaway(self, event: Any) -> None:
        """The backend sent GOAWAY: no new calls here; refuse the ones it did not take.

        For a graceful GOAWAY (NO_ERROR) the streams it took go on (see
        :class:`_GoingAwayConnection`) and no new stream is opened here.
        """
        self._going_away = True
        self.backend._gone(self)
        last = event.last_stream_id or 0
        for stream_id in [sid for sid in self.streams if sid > last]:
            stream = self.streams.pop(stream_id)
            stream.done = True
            self.backend.stats["unavailable"] += 1
            stream.front.on_failed("the backend is going away (GOAWAY)")
        if event.error_code == ErrorCodes.NO_ERROR and self.streams:
            return  # _GoingAwayConnection kept the connection open for them
        self._fail_all("the backend closed the connection (GOAWAY)")
        if self.transport is not None:
            self.transport.loseConnection()

    def _fail_all(self, reason: str) -> None:
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            if stream.done:
                continue
            stream.done = True
            if stream.stream_id is None:
                self.backend._unavailable(stream, reason)
            else:
                self.backend.stats["reset_by_backend"] += 1
                stream.front.on_reset(ErrorCodes.INTERNAL_ERROR)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self._lost:
            self.transport.write(data)


def grpc_headers(status: int, message: str) -> list[tuple[bytes, bytes]]:
    """A trailers-only gRPC response saying ``status`` (UNAVAILABLE is 14)."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(status).encode()),
        (b"grpc-message", _percent_encoded(message)),
    ]


def _percent_encoded(message: str) -> bytes:
    """``grpc-message`` as the gRPC HTTP/2 protocol spells it (percent-encoded)."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def forwarded_headers(
    headers: Iterable[tuple[bytes, bytes]], client: str | None
) -> list[tuple[bytes, bytes]]:
    """The request headers to send the backend: the client's, less hop-by-hop ones.

    ``client`` (the client's address) is appended to ``x-forwarded-for``,
    as HTTP proxies do, since the backend sees txcmux as its peer.

    >>> forwarded_headers([(b":path", b"/a.B/C"), (b"te", b"trailers")], "203.0.113.9")
    [(b':path', b'/a.B/C'), (b'te', b'trailers'), (b'x-forwarded-for', b'203.0.113.9')]
    """
    out: list[tuple[bytes, bytes]] = []
    forwarded: bytes | None = None
    for name, value in headers:
        if name in HOP_BY_HOP:
            continue
        if name == b"x-forwarded-for":
            forwarded = value
            continue
        out.append((name, value))
    if client is not None:
        mine = client.encode("ascii", "replace")
        forwarded = mine if forwarded is None else forwarded + b", " + mine
    if forwarded is not None:
        out.append((b"x-forwarded-for", forwarded))
    return out
