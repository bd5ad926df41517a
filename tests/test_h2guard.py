"""The guards in front of Twisted's HTTP/2: a frame header announcing more
than the maximum frame size closes the connection on the header, and a
header block left open past ``header_timeout`` gets a GOAWAY."""

from __future__ import annotations

import socket
import struct
from itertools import pairwise
from typing import Any

import hpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.test_twistd import Running, assert_clean_exit, start_twistd
from txcmux._web._h2guard import FrameLengths
from txcmux.matchers import PREFACE
from txcmux.web import WebFactory

__all__ = ["start_twistd"]  # the fixture, used by name

MAX = 16384


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + (struct.pack(">I", stream) + payload)
    )


def header(length: int, kind: int = 0, stream: int = 1) -> bytes:
    return struct.pack(">I", length)[1:] + bytes([kind, 0]) + struct.pack(">I", stream)


SETTINGS = frame(4, 0, 0)
PING = frame(6, 0, 0, b"12345678")
FULL = frame(0, 0, 1, b"x" * MAX)  # exactly the maximum: allowed


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, payload) of each whole frame in what a server wrote."""
    found, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        found.append((data[at + 3], data[at + 9 : at + 9 + length]))
        at += 9 + length
    return found


def last_goaway_error(data: bytes) -> int:
    kind, payload = frames(data)[-1]
    assert kind == 7, frames(data)  # GOAWAY
    return int.from_bytes(payload[4:8], "big")


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


def first_refusal(pieces: list[bytes]) -> int | None:
    lengths = FrameLengths()
    for piece in pieces:
        found = lengths.feed(piece, MAX)
        if found is not None:
            return found
    return None


def test_frames_up_to_the_maximum_pass() -> None:
    stream = PREFACE + SETTINGS + PING + FULL + SETTINGS
    assert first_refusal([stream]) is None


def test_an_overlong_header_is_refused_before_its_payload() -> None:
    stream = PREFACE + SETTINGS + header(MAX + 1)
    assert first_refusal([stream]) == MAX + 1
    assert first_refusal([PREFACE + SETTINGS + header(0xFFFFFF)]) == 0xFFFFFF


def test_the_length_inside_a_payload_is_not_a_header() -> None:
    # A DATA payload whose bytes look like a huge frame header.
    stream = PREFACE + frame(0, 0, 1, header(0xFFFFFF) * 10) + PING
    assert first_refusal([stream]) is None


@given(
    st.lists(st.integers(min_value=0, max_value=MAX + 64), max_size=6),
    st.lists(st.integers(min_value=0, max_value=40_000), max_size=12),
    st.booleans(),
)
def test_any_split_gives_the_same_answer(
    lengths: list[int], cuts: list[int], bad_end: bool
) -> None:
    stream = PREFACE + b"".join(frame(0, 0, 1, b"p" * n) for n in lengths)
    if bad_end:
        stream += header(MAX + 1)
    whole = first_refusal([stream])
    expected = next((n for n in lengths if n > MAX), MAX + 1 if bad_end else None)
    assert whole == expected
    assert first_refusal(splits(stream, cuts)) == whole


def web(clock: Clock | None = None, header_timeout: float = 60) -> WebFactory:
    root = Resource()
    root.putChild(b"hello", Data(b"hello", "text/plain"))
    return WebFactory(
        Site(root, reactor=clock or Clock()), header_timeout=header_timeout
    )


def test_the_web_target_sends_goaway_and_closes_on_the_header() -> None:
    factory = web()
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(PREFACE + SETTINGS + header(0xFFFFFF))
    assert transport.disconnecting
    assert last_goaway_error(transport.value()) == 6  # FRAME_SIZE_ERROR
    assert factory.stats["closed.frame_too_large"] == 1
    # What comes after the header is not read.
    connection.dataReceived(b"x" * 100_000)
    assert factory.stats["closed.frame_too_large"] == 1


def test_a_real_connection_is_closed_on_the_header(start_twistd: object) -> None:
    """Against the demo: the preface, SETTINGS, then 9 bytes announcing 16 MiB."""
    running: Running = start_twistd(  # type: ignore[operator]
        "--listen", "tcp:0:interface=127.0.0.1"
    )
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as client:
        client.sendall(PREFACE + SETTINGS + header(0xFFFFFF))
        received = b""
        while chunk := client.recv(65536):  # the server closes: recv ends
            received += chunk
    assert last_goaway_error(received) == 6  # FRAME_SIZE_ERROR, then the close
    output = running.stop()
    assert_clean_exit(running, output)
    assert "a frame header announces 16777215 bytes, over the 16384" in output


def test_requests_reset_in_the_same_read_raise_nothing() -> None:
    """HEADERS then RST_STREAM, for many streams, all in one read (Rapid Reset's
    pattern): no error escapes, and the connection goes on serving."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, StreamEnded

    clock = Clock()
    factory = web(clock)
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    request = [(":method", "GET"), (":path", "/hello"), (":scheme", "http")]
    request.append((":authority", "x"))
    for _ in range(30):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, request, end_stream=True)
        client.reset_stream(stream)
    connection.dataReceived(client.data_to_send())  # raised before the guard
    clock.advance(0)
    assert not transport.disconnecting
    # A normal request on the same connection is answered.
    client.receive_data(transport.value())
    transport.clear()
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, request, end_stream=True)
    connection.dataReceived(client.data_to_send())
    clock.advance(0)  # Twisted's HTTP/2 sends from a loop the reactor runs
    events = client.receive_data(transport.value())
    body = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert body == b"hello"
    assert any(isinstance(e, StreamEnded) and e.stream_id == stream for e in events)


def test_a_request_in_the_same_read_as_goaway_logs_no_failure() -> None:
    """h2 closes the connection on the client's GOAWAY; the Site's answer to
    the request before it is dropped instead of failing in h2."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from twisted.logger import LogEvent, globalLogPublisher

    clock = Clock()
    connection = web(clock).buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    request = [(":method", "GET"), (":path", "/hello"), (":scheme", "http")]
    client.send_headers(1, [*request, (":authority", "x")], end_stream=True)
    client.close_connection()
    failures: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        connection.dataReceived(client.data_to_send())
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [e["log_failure"].value for e in failures] == []
    assert transport.disconnecting


# -- the header block deadline ---------------------------------------------------

END_STREAM, END_HEADERS = 0x1, 0x4
BLOCK = hpack.Encoder().encode(
    [(":method", "GET"), (":scheme", "http"), (":path", "/hello"),
     (":authority", "localhost")]
)  # fmt: skip


def test_a_header_block_is_open_until_the_frame_that_ends_it() -> None:
    lengths = FrameLengths()
    lengths.feed(PREFACE + SETTINGS, MAX)
    assert not lengths.in_headers
    lengths.feed(frame(1, END_STREAM, 1, BLOCK[:3]), MAX)  # no END_HEADERS
    assert lengths.in_headers
    ending = frame(9, END_HEADERS, 1, BLOCK[3:])
    lengths.feed(ending[:5], MAX)  # a frame header split over reads: still in it
    assert lengths.in_headers
    lengths.feed(ending[5:-1], MAX)  # the last frame, all but its last byte
    assert lengths.in_headers
    lengths.feed(ending[-1:], MAX)
    assert not lengths.in_headers
    lengths.feed(frame(1, END_HEADERS, 3, b""), MAX)  # empty, and ended at once
    assert not lengths.in_headers
    lengths.feed(frame(0, 0, 1, b"body"), MAX)
    assert not lengths.in_headers


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1, 6, 9]), st.booleans(), st.integers(0, 40)),
        max_size=12,
    ),
    st.lists(st.integers(0, 400), max_size=8),
)
def test_in_headers_does_not_depend_on_how_the_bytes_are_split(
    spec: list[tuple[int, bool, int]], cuts: list[int]
) -> None:
    stream = PREFACE + b"".join(
        frame(kind, END_HEADERS if ends else 0, 1, b"p" * n) for kind, ends, n in spec
    )
    pieces = splits(stream, cuts)
    split = FrameLengths()
    for at, piece in enumerate(pieces):
        split.feed(piece, MAX)
        whole = FrameLengths()
        whole.feed(b"".join(pieces[: at + 1]), MAX)
        assert split.in_headers == whole.in_headers


def connected(header_timeout: float) -> tuple[Any, StringTransport, Clock, WebFactory]:
    """An HTTP/2 connection of the web target, in memory, on a Clock."""
    clock = Clock()
    factory = web(clock, header_timeout)
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(PREFACE + SETTINGS)
    return connection, transport, clock, factory


def test_a_header_block_left_open_gets_goaway_at_the_deadline() -> None:
    connection, transport, clock, factory = connected(header_timeout=5)
    connection.dataReceived(frame(1, END_STREAM, 1, BLOCK[:3]))
    continuation = frame(9, END_HEADERS, 1, BLOCK[3:])
    for at in range(8):  # its header a byte at a time: no restart
        clock.advance(0.6)
        connection.dataReceived(continuation[at : at + 1])
    clock.advance(0.19)
    assert not transport.disconnecting
    clock.advance(0.01)
    assert transport.disconnecting
    assert last_goaway_error(transport.value()) == 1  # PROTOCOL_ERROR
    assert factory.stats["closed.header_timeout"] == 1


class CountingClock(Clock):
    """A Clock that counts the header deadlines started on it."""

    deadlines = 0

    def callLater(self, delay: float, function: Any, *a: Any, **kw: Any) -> Any:
        if getattr(function, "__name__", "") == "_headers_timed_out":
            self.deadlines += 1
        return super().callLater(delay, function, *a, **kw)


def test_a_header_block_in_one_read_starts_no_timer() -> None:
    clock = CountingClock()
    connection = web(clock, header_timeout=5).buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(PREFACE + SETTINGS)
    for stream in range(1, 20, 2):
        connection.dataReceived(frame(1, END_STREAM | END_HEADERS, stream, BLOCK))
    clock.advance(0)  # Twisted sends the bodies on the next turn
    assert [kind for kind, _ in frames(transport.value())].count(0) >= 10  # DATA
    assert clock.deadlines == 0
    connection.dataReceived(frame(1, END_STREAM, 21, BLOCK[:3]))  # spans reads
    assert clock.deadlines == 1


def test_finished_header_blocks_leave_no_deadline() -> None:
    connection, transport, clock, factory = connected(header_timeout=5)
    for stream in (1, 3):
        connection.dataReceived(frame(1, END_STREAM, stream, BLOCK[:3]))
        clock.advance(4)  # each block within the bound, together beyond it
        connection.dataReceived(frame(9, END_HEADERS, stream, BLOCK[3:]))
    assert [kind for kind, _ in frames(transport.value())].count(0) >= 2  # DATA
    # The clock.getDelayedCalls() left are Twisted's own idle timeout.
    assert not [
        call for call in clock.getDelayedCalls() if "headers" in repr(call.func)
    ]
    clock.advance(30)  # (Twisted's idle timeout here is 60 s)
    assert not transport.disconnecting
    assert factory.stats["closed.header_timeout"] == 0


def test_a_header_timeout_of_zero_is_no_deadline() -> None:
    connection, transport, clock, factory = connected(header_timeout=0)
    connection.dataReceived(frame(1, END_STREAM, 1, BLOCK[:3]))
    clock.advance(59)  # just short of Twisted's idle timeout here
    assert factory.stats["closed.header_timeout"] == 0
    assert 7 not in [kind for kind, _ in frames(transport.value())]  # no GOAWAY
