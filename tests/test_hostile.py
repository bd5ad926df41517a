"""Hostile clients against a running ``twistd cmux``: each is closed promptly,
logged and counted, while a normal client goes on being served.

One server for the module (routes ``grpc``, ``https`` (TLS, then ``grpc`` and
``web``), ``web``; ``sniff_timeout = 1``, ``max_sniff_bytes = 4096``, a TLS
``handshake_timeout`` of 1 s, a web ``header_timeout`` of 1 s, the admin site
on a unix socket).  Each test sends one kind of bad input from a raw socket,
checks how and how fast the connection ended, and that ``curl`` still gets
the demo page; the last one reads the counters from ``/metrics``.  The
sizes are cut to fit CI: each attack is bounded in bytes and time and stops
by itself.
"""

from __future__ import annotations

import re
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection

from tests.captures import capture
from tests.test_twistd import clean_environment, twistd_command
from tests.tls_support import pki
from txcmux.matchers import PREFACE

CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1"]
sniff_timeout = 1.0
max_sniff_bytes = 4096
routes = ["grpc", "https", "web"]

[admin]
listen = "unix:{admin}"

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "https"
match = ["tls"]
tls.certificate = "server.pem"
tls.key = "server.key"
tls.routes = ["grpc", "web"]
tls.handshake_timeout = 1.0

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
header_timeout = 1.0
"""

PROMPTLY = 3.0  # seconds within which a bad connection must be gone
REQUEST = [
    (":method", "GET"),
    (":path", "/hello"),
    (":scheme", "http"),
    (":authority", "x"),
]


class Server:
    """The twistd process the tests share."""

    def __init__(self, directory: Path) -> None:
        shutil.copy(pki().server_certificate, directory / "server.pem")
        shutil.copy(pki().server_key, directory / "server.key")
        self.admin = directory / "admin.sock"
        config = directory / "hostile.toml"
        config.write_text(CONFIG.format(admin=self.admin), encoding="utf-8")
        ports = directory / "ports"
        self.log = directory / "twistd.log"
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                [
                    *twistd_command(),
                    "-n",
                    "--pidfile=",
                    "cmux",
                    "--config",
                    str(config),
                    "--port-file",
                    str(ports),
                ],
                cwd=directory,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=clean_environment(),
            )
        deadline = time.monotonic() + 30
        while not ports.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"twistd did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.port = int(ports.read_text().split()[0])

    def served(self) -> None:
        """A normal client is answered, and quickly."""
        started = time.monotonic()
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{self.port}/hello"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout == "Hello from txcmux over HTTP/1.1\n", result.stderr
        assert time.monotonic() - started < 2.0

    def metrics(self) -> str:
        result = subprocess.run(
            ["curl", "-sS", "--unix-socket", str(self.admin), "http://admin/metrics"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.log.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("hostile"))
    yield running
    output = running.stop()
    assert "Traceback" not in output, output


def attack(server: Server, data: bytes) -> tuple[bytes, float]:
    """Send ``data``; read until the server closes.  What came back, and after
    how many seconds the connection was gone."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        try:
            client.sendall(data)
        except OSError:  # closed while we were still sending
            return b"", time.monotonic() - started
        received = b""
        client.settimeout(PROMPTLY + 2)
        try:
            while chunk := client.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"still open after {time.monotonic() - started:.1f} s")
    return received, time.monotonic() - started


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    size = struct.pack(">I", len(payload))[1:]
    return size + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def goaway_code(received: bytes) -> int | None:
    at, code = 0, None
    while at + 9 <= len(received):
        length = int.from_bytes(received[at : at + 3], "big")
        if received[at + 3] == 7:
            code = int.from_bytes(received[at + 13 : at + 17], "big")
        at += 9 + length
    return code


# -- before the decision -----------------------------------------------------


def test_garbage_is_closed_at_once(server: Server) -> None:
    _, took = attack(server, b"\x00\x01\x02 not a protocol \xff\r\n" * 4)
    assert took < 1.0  # no route can match: no need to wait for the timeout
    server.served()


def test_undecidable_bytes_past_max_sniff_bytes(server: Server) -> None:
    # A TLS record announcing a 16 KiB ClientHello: the tls matcher waits for
    # all of it, and the buffer reaches max_sniff_bytes (4096) first.
    record = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03" + b"\x00" * 5000
    _, took = attack(server, record)
    assert took < PROMPTLY
    server.served()


def test_a_client_that_dribbles_before_deciding(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        started = time.monotonic()
        client.sendall(b"\x16\x03")  # could still become TLS
        client.settimeout(PROMPTLY + 2)
        assert client.recv(100) == b""  # closed by sniff_timeout (1 s)
        took = time.monotonic() - started
    assert 0.9 < took < PROMPTLY
    server.served()


# -- HTTP/1.1, after the decision ----------------------------------------------


def test_an_oversized_request_line(server: Server) -> None:
    received, took = attack(server, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    assert took < PROMPTLY
    assert received == b"" or received.startswith(b"HTTP/1.1 4"), received[:100]
    server.served()


def test_too_many_headers(server: Server) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
    received, took = attack(server, b"GET /hello HTTP/1.1\r\nHost: x\r\n" + headers)
    assert took < PROMPTLY
    assert received.startswith(b"HTTP/1.1 400"), received[:100]
    server.served()


def test_headers_trickled_a_byte_at_a_time_get_408(server: Server) -> None:
    """A "slowloris": each byte comes well within Twisted's idle timeout,
    but the header block as a whole has header_timeout (1 s here)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        started = time.monotonic()
        client.sendall(b"GET /hello HTTP/1.1\r\n")
        received = b""
        for byte in b"X-Slow: " + b"y" * 40:  # at most 8 s: stops by itself
            # Read before each send: a byte sent after the server closed
            # would draw a reset, which discards the answer unread.
            readable, _, _ = select.select([client], [], [], 0.2)
            if readable:
                while chunk := client.recv(65536):
                    received += chunk
                break
            client.sendall(bytes([byte]))
        took = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408 Request Timeout"), received[:100]
    assert 0.9 < took < 1.0 + PROMPTLY
    server.served()


# -- HTTP/2, after the decision ------------------------------------------------


def h2_opening() -> bytes:
    return PREFACE + frame(4, 0, 0)


def test_a_frame_larger_than_announced_is_refused_on_its_header(server: Server) -> None:
    received, took = attack(
        server, h2_opening() + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01"
    )
    assert took < PROMPTLY
    assert goaway_code(received) == 6  # FRAME_SIZE_ERROR
    server.served()


def test_a_malformed_settings_frame(server: Server) -> None:
    # SETTINGS whose length is not a multiple of 6.  As the client's first
    # frame, no HTTP/2 matcher takes it: the detector closes the connection.
    _, took = attack(server, PREFACE + frame(4, 0, 0, b"\x00\x01\x00"))
    assert took < PROMPTLY
    # After a request has chosen the web route, Twisted's HTTP/2 answers it
    # with GOAWAY (FRAME_SIZE_ERROR) and closes.
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, REQUEST, end_stream=True)
    opening = client.data_to_send()
    received, took = attack(server, opening + frame(4, 0, 0, b"\x00\x01\x00"))
    assert took < PROMPTLY
    assert goaway_code(received) == 6
    server.served()


def test_a_continuation_flood_is_cut(server: Server) -> None:
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    headers = client.data_to_send() + frame(1, 0, 1, b"\x82")  # no END_HEADERS
    flood = frame(9, 0, 1, b"\x00" * 16000) * 2000  # 32 MB of CONTINUATION
    _, took = attack(server, headers + flood)
    assert took < PROMPTLY + 5
    server.served()


def test_a_header_block_trickled_in_continuations_gets_goaway(server: Server) -> None:
    """HTTP/2's slowloris, after the decision: a whole first request (the
    detector needs its headers to choose the route), then a HEADERS frame
    without END_HEADERS and a CONTINUATION frame's bytes one at a time.
    Each byte restarts Twisted's idle timeout; the block as a whole has
    header_timeout (1 s here)."""
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, REQUEST, end_stream=True)
    opening = client.data_to_send() + frame(1, 0x1, 3, b"\x82")  # no END_HEADERS
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(opening)
        received, closed = b"", False
        for byte in frame(9, 0, 3, b"\x00" * 40):  # at most 10 s: stops by itself
            while not closed and select.select([sock], [], [], 0.2)[0]:
                chunk = sock.recv(65536)
                received += chunk
                closed = not chunk
            if closed or goaway_code(received) is not None:
                break
            sock.sendall(bytes([byte]))
        took = time.monotonic() - started
    assert goaway_code(received) == 1  # PROTOCOL_ERROR
    assert 0.9 < took < 1.0 + PROMPTLY
    server.served()


def test_requests_reset_at_once_do_not_break_the_server(server: Server) -> None:
    """The Rapid Reset pattern: HEADERS then RST_STREAM, many times, in bulk."""
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    for _ in range(3000):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, REQUEST, end_stream=True)
        client.reset_stream(stream)
    data = client.data_to_send()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    # Twisted's token bucket (a burst of 1000) answers with GOAWAY
    # ENHANCE_YOUR_CALM; no traceback (checked when the module ends).
    assert goaway_code(received) in (0, 11), goaway_code(received)
    server.served()


# -- TLS ---------------------------------------------------------------------


def test_a_malformed_client_hello(server: Server) -> None:
    hello = bytearray(capture("curl-tls-clienthello.bin"))
    hello[11:43] = b"\xff" * 32  # keep the framing
    hello[44:] = b"\xee" * (len(hello) - 44)  # and spoil everything after
    _, took = attack(server, bytes(hello))
    assert took < PROMPTLY
    server.served()


def test_a_handshake_abandoned_midway(server: Server) -> None:
    hello = capture("curl-tls-clienthello.bin")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(hello)  # then never answers the server's flight
        client.settimeout(PROMPTLY + 2)
        try:
            while client.recv(65536):
                pass
        except ConnectionResetError:
            pass
    assert 0.9 < time.monotonic() - started < PROMPTLY
    server.served()


# -- what was counted ----------------------------------------------------------


def counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(f"txcmux_{name}{{") and line.split(" ")[0] != (
            f"txcmux_{name}"
        ):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_each_kind_was_counted(server: Server) -> None:
    metrics = server.metrics()
    assert counter(metrics, "rejections_total", reason="no_match") >= 1
    assert counter(metrics, "rejections_total", reason="too_long") >= 1
    assert counter(metrics, "rejections_total", reason="timeout") >= 1
    assert counter(metrics, "tls_failures_total", reason="handshake_timeout") >= 1
    assert counter(metrics, "tls_failures_total", reason="handshake_failed") >= 1
    assert counter(metrics, "web_closed_total", reason="header_timeout") >= 1
    assert counter(metrics, "web_closed_total", reason="frame_too_large") >= 1
    log = server.log.read_text(encoding="utf-8")
    assert re.search(r"a frame header announces 16777215 bytes", log)
    assert re.search(r"a header block still open after 1 s \(header_timeout", log)
