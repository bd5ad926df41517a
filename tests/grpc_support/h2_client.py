"""A small HTTP/2 client on the h2 library, for tests that need one connection.

grpcio and curl open connections as they like; these tests need REST
requests and gRPC calls interleaved on exactly one connection, and control
over the client's flow-control window.  :class:`H2Client` is a Twisted
protocol: ``request()`` opens a stream and returns a Deferred of its
:class:`Response` (headers, body, trailers, or the reset code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_messages(body: bytes) -> list[bytes]:
    """The messages of a gRPC body."""
    messages, at = [], 0
    while at + 5 <= len(body):
        size = int.from_bytes(body[at + 1 : at + 5], "big")
        messages.append(body[at + 5 : at + 5 + size])
        at += 5 + size
    return messages


@dataclass
class Response:
    """What one stream got back."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    reset: int | None = None

    @property
    def status(self) -> bytes | None:
        return self.headers.get(b":status")

    @property
    def grpc_status(self) -> bytes | None:
        """``grpc-status`` from the trailers (or a trailers-only response)."""
        return self.trailers.get(b"grpc-status", self.headers.get(b"grpc-status"))


class H2Client(Protocol):
    """An HTTP/2 client connection; ``auto_ack=False`` leaves windows to the test."""

    def __init__(self, auto_ack: bool = True) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.auto_ack = auto_ack
        self.responses: dict[int, Response] = {}
        self.waiting: dict[int, defer.Deferred[Response]] = {}
        self.unacked: dict[int, int] = {}
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.goaway: Any = None
        self._buffer = b""

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes | None = None,
        end: bool = True,
    ) -> tuple[int, defer.Deferred[Response]]:
        """Open a stream; (its id, a Deferred of its response)."""
        stream_id = self.conn.get_next_available_stream_id()
        sent = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", path.encode()),
            *((k.encode(), v.encode()) for k, v in headers),
        ]
        self.conn.send_headers(stream_id, sent, end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.responses[stream_id] = Response()
        waiting: defer.Deferred[Response] = defer.Deferred()
        self.waiting[stream_id] = waiting
        self.flush()
        return stream_id, waiting

    def grpc(
        self, method: str, message: bytes, *, metadata: list[tuple[str, str]] = ()
    ) -> tuple[int, defer.Deferred[Response]]:  # type: ignore[assignment]
        """Open a gRPC call of ``txcmux.test.Echo`` sending one message."""
        return self.request(
            f"/txcmux.test.Echo/{method}",
            method="POST",
            headers=[
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ],
            body=grpc_frame(message),
        )

    def acknowledge(self, stream_id: int) -> None:
        """Open the windows by everything received on ``stream_id`` so far."""
        size = self.unacked.pop(stream_id, 0)
        if size:
            self.conn.acknowledge_received_data(size, stream_id)
            self.flush()

    def dataReceived(self, data: bytes) -> None:
        # Frame by frame: h2 refuses every frame after a GOAWAY, even those
        # of the streams the GOAWAY lets finish (RFC 9113, section 6.8), so
        # after a graceful one the state is put back to open, as a client
        # that lets its streams finish would.
        self._buffer += data
        while len(self._buffer) >= 9:
            size = 9 + int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < size:
                break
            frame, self._buffer = self._buffer[:size], self._buffer[size:]
            self._frame(frame)
        self.flush()

    def _frame(self, frame: bytes) -> None:
        for event in self.conn.receive_data(frame):
            stream_id = getattr(event, "stream_id", 0)
            response = self.responses.get(stream_id)
            if isinstance(event, h2.events.ResponseReceived) and response:
                response.headers.update(event.headers)
            elif isinstance(event, h2.events.DataReceived) and response:
                response.body += event.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, stream_id
                    )
                else:
                    self.unacked[stream_id] = (
                        self.unacked.get(stream_id, 0) + event.flow_controlled_length
                    )
            elif isinstance(event, h2.events.TrailersReceived) and response:
                response.trailers.update(event.headers)
            elif isinstance(event, h2.events.StreamEnded) and response:
                self._done(stream_id)
            elif isinstance(event, h2.events.StreamReset) and response:
                response.reset = event.error_code
                self._done(stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                if event.error_code == 0 and self.waiting:
                    self.conn.state_machine.state = (
                        h2.connection.ConnectionState.CLIENT_OPEN
                    )

    def _done(self, stream_id: int) -> None:
        waiting = self.waiting.pop(stream_id, None)
        if waiting is not None:
            waiting.callback(self.responses[stream_id])

    def connectionLost(self, reason: Any = None) -> None:
        for stream_id in list(self.waiting):
            self.responses[stream_id].reset = -1
            self._done(stream_id)
        self.lost.callback(None)


async def connect(port: int, auto_ack: bool = True) -> H2Client:
    """An H2Client connected to 127.0.0.1:``port`` (h2c, prior knowledge)."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client: H2Client = await endpoint.connect(
        Factory.forProtocol(lambda: H2Client(auto_ack))
    )
    return client
