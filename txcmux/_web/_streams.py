"""Per-stream routing on a web route's HTTP/2 connections: gRPC streams to a backend.

With ``grpc_backend`` set, every HTTP/2 connection of a web route (h2c, or
h2 after TLS ALPN) looks at each stream's request headers on its own.  A
stream whose ``content-type`` is ``application/grpc`` (or
``application/grpc+proto`` and the like, but not gRPC-Web) is forwarded as
a stream of its own to the gRPC backend (:mod:`._grpc_backend`): headers,
messages, trailers, ``grpc-timeout`` and other metadata, and RST_STREAM
pass through, with flow control end to end.  Every other stream is a
twisted.web request to the Site, as without the setting.

Twisted's HTTP/2 connection sends no trailers (Twisted issue 9296), which
gRPC needs, so a forwarded stream never becomes a Twisted request: the
connection class :func:`per_stream` makes takes those streams' events
before Twisted sees them and writes their frames with h2 directly, beside
Twisted's own streams on the same h2 connection.

>>> from txcmux import _compat
>>> from txcmux._web._h2guard import guarded
>>> cls = per_stream(guarded(_compat.h2_connection_class()))
>>> is_grpc([(b":method", b"POST"), (b"content-type", b"application/grpc+proto")])
True
>>> is_grpc([(b"content-type", b"application/grpc-web+proto")])
False
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import h2.exceptions
import priority  # type: ignore[import-untyped]
from h2.errors import ErrorCodes

from .._log import describe_peer, log
from ..matchers._http2 import _is_grpc_content_type
from ._grpc_backend import (
    BackendStream,
    DataQueue,
    GrpcBackend,
    Headers,
    forwarded_headers,
    grpc_headers,
)

_UNAVAILABLE = 14


def is_grpc(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether request ``headers`` are a gRPC call (not gRPC-Web).

    The same test as the ``grpc`` matcher's, on the content type.
    """
    for name, value in headers:
        if name == b"content-type":
            return _is_grpc_content_type(value.lower())
    return False


class ForwardedStream:
    """One client stream forwarded to the backend: the front of the call."""

    __slots__ = ("backend", "connection", "down", "responded", "stream_id")

    def __init__(self, connection: Any, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.down = DataQueue()
        self.responded = False
        self.backend: BackendStream | None = None

    # -- CallFront: what the backend's half says --------------------------------

    def on_response(self, headers: Headers, end: bool) -> None:
        self.responded = True
        self.connection._forward_headers(self, headers, end)

    def on_data(self, data: bytes, credit: int) -> None:
        self.down.add(data, credit)
        self.connection._forward_pump(self)

    def on_trailers(self, trailers: Headers) -> None:
        self.down.trailers = trailers
        self.down.end = True
        self.connection._forward_pump(self)

    def on_end(self) -> None:
        self.down.end = True
        self.connection._forward_pump(self)

    def on_reset(self, error_code: int) -> None:
        self.connection._forward_reset(self, error_code)

    def on_failed(self, reason: str) -> None:
        if self.responded:
            self.connection._forward_reset(self, ErrorCodes.INTERNAL_ERROR)
            return
        self.responded = True
        self.connection._forward_headers(self, grpc_headers(_UNAVAILABLE, reason), True)

    def on_sent(self, credit: int) -> None:
        self.connection._forward_acknowledge(self, credit)


#: The routing subclass of each connection class, made once per class.
_made: dict[type[Any], type[Any]] = {}


def per_stream(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (a Twisted H2Connection) routing gRPC streams away.

    Each connection made needs ``grpc_backend`` (a :class:`GrpcBackend`)
    set before its first bytes; ``stats`` (the web target's counter) counts
    ``grpc_streams``.
    """
    made = _made.get(connection_class)
    if made is not None:
        return made

    class StreamRoutingH2Connection(connection_class):  # type: ignore[misc]
        grpc_backend: GrpcBackend
        forwarded: dict[int, ForwardedStream]
        _resetTokens: float
        _resetTokenTimestamp: float

        def connectionMade(self) -> None:
            self.forwarded = {}
            super().connectionMade()

        # -- the client's events, taken before Twisted's handlers ----------

        def _requestReceived(self, event: Any) -> None:
            if not is_grpc(event.headers):
                super()._requestReceived(event)
                return
            stream_id = event.stream_id
            stream = ForwardedStream(self, stream_id)
            self.forwarded[stream_id] = stream
            # A PRIORITY frame before these HEADERS put the stream in
            # Twisted's priority tree; it never sends for this stream.
            with contextlib.suppress(priority.MissingStreamError):
                self.priority.remove_stream(stream_id)
            stats = getattr(self, "stats", None)
            if stats is not None:
                stats["grpc_streams"] += 1
            peer = self.transport.getPeer() if self.transport is not None else None
            host = getattr(peer, "host", None)
            headers = forwarded_headers(event.headers, host)
            stream.backend = self.grpc_backend.call(headers, stream)

        # A stream in neither dict is a forwarded one already answered (a
        # trailers-only UNAVAILABLE, say) whose request was still arriving.

        def _requestDataReceived(self, event: Any) -> None:
            stream_id = event.stream_id
            stream = self.forwarded.get(stream_id)
            if stream is not None:
                if stream.backend is not None:
                    stream.backend.send(event.data, event.flow_controlled_length)
            elif stream_id in self.streams:
                super()._requestDataReceived(event)
            else:  # nobody wants it; the connection's window still does
                self._forward_acknowledge(
                    stream, event.flow_controlled_length, stream_id
                )

        def _requestEnded(self, event: Any) -> None:
            stream = self.forwarded.get(event.stream_id)
            if stream is not None:
                if stream.backend is not None and not stream.backend.up.end:
                    stream.backend.end()
            elif event.stream_id in self.streams:
                super()._requestEnded(event)

        def _requestAborted(self, event: Any) -> None:
            stream = self.forwarded.pop(event.stream_id, None)
            if stream is None and event.stream_id in self.streams:
                super()._requestAborted(event)
                return
            if stream is not None and stream.backend is not None:
                stream.backend.reset(event.error_code)
            self._spend_reset_token()

        def _handleWindowUpdate(self, event: Any) -> None:
            stream_id = event.stream_id
            if stream_id:
                stream = self.forwarded.get(stream_id)
                if stream is not None:
                    self._forward_pump(stream)
                    return
                super()._handleWindowUpdate(event)
                return
            super()._handleWindowUpdate(event)
            for stream in list(self.forwarded.values()):
                self._forward_pump(stream)

        def _handlePriorityUpdate(self, event: Any) -> None:
            if event.stream_id not in self.forwarded:
                super()._handlePriorityUpdate(event)

        def resumeProducing(self) -> None:
            super().resumeProducing()
            for stream in list(self.forwarded.values()):
                self._forward_pump(stream)

        def timeoutConnection(self) -> None:
            if self.forwarded:
                # A gRPC call may be quiet for longer than the Site's
                # timeOut (a server-streaming call waiting for news);
                # grpcio's own server does not time out a connection with
                # calls open either.
                self.resetTimeout()
                return
            super().timeoutConnection()

        def connectionLost(self, reason: Any, _cancelTimeouts: bool = True) -> None:
            forwarded, self.forwarded = getattr(self, "forwarded", {}), {}
            for stream in forwarded.values():
                if stream.backend is not None:
                    stream.backend.reset(ErrorCodes.CANCEL)
            super().connectionLost(reason, _cancelTimeouts=_cancelTimeouts)

        # -- writing the backend's answers to the client -------------------

        def _writable(self) -> bool:
            return (
                self.transport is not None
                and self._consumerBlocked is None
                and not self._bufferedControlFrames
            )

        def _forward_headers(
            self, stream: ForwardedStream, headers: Headers, end: bool
        ) -> None:
            if self.forwarded.get(stream.stream_id) is not stream:
                return
            try:
                self.conn.send_headers(stream.stream_id, headers, end_stream=end)
            except h2.exceptions.ProtocolError:
                self._forget(stream)  # the client reset it meanwhile
                return
            if end:
                self._forget(stream)
            self._tryToWriteControlData()

        def _forward_pump(self, stream: ForwardedStream) -> None:
            if (
                self.forwarded.get(stream.stream_id) is not stream
                or not self._writable()
            ):
                return
            try:
                freed, ended = stream.down.send(self.conn, stream.stream_id)
            except h2.exceptions.ProtocolError:
                freed, ended = stream.down.credit(), True
            data = self.conn.data_to_send()
            if data:
                self.resetTimeout()
                self.transport.write(data)
            if freed and stream.backend is not None:
                stream.backend.ack(freed)
            if ended:
                self._forget(stream)

        def _forward_reset(self, stream: ForwardedStream, error_code: int) -> None:
            if self.forwarded.get(stream.stream_id) is not stream:
                return
            self._forget(stream)
            try:
                self.conn.reset_stream(stream.stream_id, error_code)
            except h2.exceptions.ProtocolError:
                return
            self._tryToWriteControlData()

        def _forward_acknowledge(
            self, stream: ForwardedStream | None, credit: int, stream_id: int = 0
        ) -> None:
            if self.transport is None:
                return
            if stream is not None:
                stream_id = stream.stream_id
            try:
                self.conn.acknowledge_received_data(credit, stream_id)
            except h2.exceptions.ProtocolError:
                return
            self._tryToWriteControlData()

        def _forget(self, stream: ForwardedStream) -> None:
            if self.forwarded.get(stream.stream_id) is stream:
                del self.forwarded[stream.stream_id]
            if stream.down.size:
                credit = stream.down.credit()
                stream.down.clear()
                if stream.backend is not None:
                    stream.backend.ack(credit)
            if stream.backend is not None and not stream.backend.done:
                # The client's side is over (a trailers-only answer, or the
                # stream closed): the backend's call is not wanted.
                stream.backend.reset(ErrorCodes.CANCEL)

        def _spend_reset_token(self) -> None:
            """Twisted's Rapid Reset bucket, spent for a forwarded stream too.

            Twisted refills ``_resetTokens`` at ``_resetTokenRate`` per
            second up to ``_resetTokenBurst`` and sends GOAWAY
            ENHANCE_YOUR_CALM when it is empty (CVE-2023-44487); resets of
            forwarded streams count against the same bucket.
            """
            now = self._reactor.seconds()
            elapsed = max(0.0, now - self._resetTokenTimestamp)
            self._resetTokens = min(
                self._resetTokenBurst,
                self._resetTokens + elapsed * self._resetTokenRate,
            )
            self._resetTokenTimestamp = now
            if self._resetTokens >= 1:
                self._resetTokens -= 1
                return
            log.warn(
                "txcmux.web: closing HTTP/2 connection from {peer}: too many"
                " stream resets (ENHANCE_YOUR_CALM)",
                peer=describe_peer(self.transport.getPeer()),
            )
            self.conn.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
            self.transport.write(self.conn.data_to_send())
            self.transport.loseConnection()

    _made[connection_class] = StreamRoutingH2Connection
    return StreamRoutingH2Connection
