"""Many connections at once, of every kind, through one ``twistd cmux``.

A ``twistd -n cmux`` on 127.0.0.1 serves a port with a ``tls`` route (the
``grpc`` and ``web`` routes behind it), a ``grpc`` route (the demo's
services in-process), a relay route (``ECHO `` to an echo server) and a
``web`` route.  An asyncio client opens connections in batches, cycling
through HTTP/1.1, h2c, gRPC (a health check by hand over h2), HTTP/1.1
over TLS and the relay, until ``COUNT`` are open at once, each answered
once on the way; then every one of them is asked again while all are open,
and grpcio makes unary calls meanwhile.  Every answer must be the right
one, no connection may fail, the server's log must have no traceback, and
once the client has closed everything the server's descriptors come back
to where they were.  The server's RSS per open connection is printed.

2,000 connections in CI; 10,000 with ``TXCMUX_FULL=1``, or as many as
``TXCMUX_LOAD_CONNECTIONS`` says.  The descriptor limit is raised to the
hard limit, and the test is skipped where that is too low for the size
asked (``EXTRA`` says what the server holds beyond a descriptor per
connection).
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.test_twistd import clean_environment, twistd_command
from tests.tls_support import pki
from txcmux._relay._splice import _PIPES

FULL = os.environ.get("TXCMUX_FULL") == "1"
#: How many at once: 2,000 in CI, 10,000 with TXCMUX_FULL=1, or
#: TXCMUX_LOAD_CONNECTIONS (where the descriptor limit allows less).
COUNT = int(os.environ.get("TXCMUX_LOAD_CONNECTIONS", "0")) or (
    10_000 if FULL else 2_000
)
BATCH = 200
KINDS = ("http1", "h2c", "grpc", "tls", "relay")
TIMEOUT = 30.0
#: The server's descriptors beyond one per connection: a relayed connection
#: has its backend's, a gRPC one its relay to the in-process server over a
#: unix socket and that server's end of it.  (A spliced relay holds a pipe
#: only while bytes pass through it.)
EXTRA = COUNT // len(KINDS) * 3

CONFIG = """
listen = ["tcp:0:interface=127.0.0.1:backlog=1024"]
max_connections = 0
max_sniffing = 0
sniff_timeout = 120

[[route]]
name = "tls"
match = ["tls"]
tls = {{ certificate = "server.pem", key = "server.key", routes = ["grpc", "web"] }}

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "echo"
match = [{{ type = "prefix", value = "ECHO " }}]
proxy = "tcp:host=127.0.0.1:port={echo}"

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
"""

REQUEST = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
HEALTH_REQUEST = health_pb2.HealthCheckRequest().SerializeToString()
HEALTH_SERVING = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.SERVING
).SerializeToString()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    found = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert found is not None
    return int(found.group(1))


@pytest.fixture(scope="module")
def descriptor_limit() -> int:
    """This process's (and so twistd's) limit, raised to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The server's: one per connection, one more per relayed one, two more
    # per gRPC one, and its kept empty pipes (more than the client's, which
    # are one per connection and one per echoed one).
    needed = COUNT + EXTRA + 2 * _PIPES.keep + 500
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(
            f"{COUNT} connections need {needed} descriptors; the hard limit is"
            f" {hard} (set TXCMUX_LOAD_CONNECTIONS lower)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- the client ------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response with a Content-Length: its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
    assert length is not None, head
    return await reader.readexactly(int(length.group(1)))


class H2c:
    """A prior-knowledge HTTP/2 client on one connection, with h2."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()

    async def get(self) -> bytes:
        """GET /hello: the body."""
        return await self.exchange(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/hello"),
             (b":authority", b"localhost")],
            None,
        )  # fmt: skip

    async def check_health(self) -> bytes:
        """A gRPC health check, unary, by hand: the response message.

        The grpc-status trailer must say OK.
        """
        self.trailers: list[tuple[bytes, bytes]] = []
        body = await self.exchange(
            [(b":method", b"POST"), (b":scheme", b"http"),
             (b":path", b"/grpc.health.v1.Health/Check"),
             (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
             (b"te", b"trailers")],
            b"\x00" + len(HEALTH_REQUEST).to_bytes(4, "big") + HEALTH_REQUEST,
        )  # fmt: skip
        assert (b"grpc-status", b"0") in self.trailers, self.trailers
        assert body[:1] == b"\x00" and int.from_bytes(body[1:5], "big") == len(body) - 5
        return body[5:]

    async def exchange(
        self, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> bytes:
        """One request on a new stream: the response body once it ends."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream, body, end_stream=True)
        self.writer.write(self.conn.data_to_send())
        received = b""
        while True:
            data = await self.reader.read(65536)
            assert data, "closed before the response ended"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, stream
                    )
                elif isinstance(event, h2.events.TrailersReceived):
                    self.trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    self.writer.write(self.conn.data_to_send())
                    return received
            self.writer.write(self.conn.data_to_send())


class Connection:
    """One client connection of one kind; ``ask()`` checks one exchange."""

    def __init__(self, kind: str, port: int, tls: ssl.SSLContext) -> None:
        self.kind, self.port, self.tls = kind, port, tls
        self.asked = 0

    async def open(self) -> None:
        secure = (
            {"ssl": self.tls, "server_hostname": "localhost"}
            if self.kind == "tls"
            else {}
        )
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, **secure
        )
        self.h2 = (
            H2c(self.reader, self.writer) if self.kind in ("h2c", "grpc") else None
        )

    async def ask(self) -> None:
        self.asked += 1
        if self.kind == "relay":
            line = f"ECHO {id(self)} {self.asked}\n".encode()
            self.writer.write(line)
            assert await self.reader.readexactly(len(line)) == line
        elif self.kind == "grpc":
            assert self.h2 is not None
            assert await self.h2.check_health() == HEALTH_SERVING
        elif self.h2 is not None:
            assert (await self.h2.get()).startswith(b"Hello from txcmux over HTTP/2")
        else:
            self.writer.write(REQUEST)
            assert (await read_response(self.reader)).startswith(b"Hello from txcmux")

    def close(self) -> None:
        self.writer.close()


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0, backlog=1024)


def grpc_calls(port: int, count: int) -> list[int]:
    """``count`` health checks on one grpcio channel: their statuses."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            int(stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status)
            for _ in range(count)
        ]


# -- the server ------------------------------------------------------------------


class Served:
    """``twistd -n cmux`` on the config, its port once it listens."""

    def __init__(self, directory: Path, echo: int) -> None:
        files = pki()
        (directory / "server.pem").write_bytes(files.server_certificate.read_bytes())
        (directory / "server.key").write_bytes(files.server_key.read_bytes())
        (directory / "load.toml").write_text(CONFIG.format(echo=echo))
        ports = directory / "ports"
        self.log = directory / "twistd.log"
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                [*twistd_command(), "-n", "--pidfile=", "cmux",
                 "--config", "load.toml", "--port-file", str(ports)],
                cwd=directory, stdout=output, stderr=subprocess.STDOUT,
                env=clean_environment(),
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while not ports.exists():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)  # waiting for another process to listen
        self.port = int(ports.read_text().split()[0])

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=TIMEOUT)
        return self.log.read_text()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(echo_server())
    echo = server.sockets[0].getsockname()[1]
    process = Served(tmp_path, echo)
    yield process, loop
    log = process.stop()
    server.close()
    loop.run_until_complete(server.wait_closed())
    # The echo handlers end as the relay's connections close with twistd.
    handlers = asyncio.all_tasks(loop)
    if handlers:
        loop.run_until_complete(asyncio.wait(handlers, timeout=TIMEOUT))
    loop.close()
    assert "Traceback" not in log, log[-5000:]
    assert process.process.returncode == 0, log[-5000:]


async def load(port: int, pid: int) -> dict[str, float]:
    context = ssl.create_default_context(cafile=str(pki().ca))
    connections = [
        Connection(KINDS[index % len(KINDS)], port, context) for index in range(COUNT)
    ]
    before = rss_kib(pid)

    async def first(connection: Connection) -> None:
        await asyncio.wait_for(connection.open(), TIMEOUT)
        await asyncio.wait_for(connection.ask(), TIMEOUT)

    started = time.monotonic()
    for at in range(0, COUNT, BATCH):
        await asyncio.gather(*(first(c) for c in connections[at : at + BATCH]))
    opened = time.monotonic() - started
    open_fds = descriptors(pid)
    grown = rss_kib(pid) - before
    # All open: each asked again, gRPC calls meanwhile.
    calls = asyncio.get_running_loop().run_in_executor(None, grpc_calls, port, 50)
    for at in range(0, COUNT, BATCH):
        await asyncio.gather(
            *(asyncio.wait_for(c.ask(), TIMEOUT) for c in connections[at : at + BATCH])
        )
    statuses = await calls
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 50
    for connection in connections:
        connection.close()
    await asyncio.sleep(0)
    return {
        "opened_s": opened,
        "open_fds": open_fds,
        "kib_per_connection": grown / COUNT,
    }


def test_every_kind_at_once_is_answered(
    descriptor_limit: int, served: tuple[Served, asyncio.AbstractEventLoop]
) -> None:
    process, loop = served
    pid = process.process.pid
    baseline = descriptors(pid)
    measured = loop.run_until_complete(load(process.port, pid))
    assert measured["open_fds"] >= baseline + COUNT + EXTRA
    print(
        f"\n{COUNT} connections ({', '.join(KINDS)}) opened in"
        f" {measured['opened_s']:.1f} s; server descriptors"
        f" {measured['open_fds']:.0f}, RSS"
        f" {measured['kib_per_connection']:.1f} KiB per open connection"
    )

    # The server closes its ends as it reads the clients' FINs; it may keep
    # some empty pipes for the next relays (at most _PIPES.keep).
    settle = baseline + 10 + 2 * _PIPES.keep

    async def settled() -> int:
        deadline = time.monotonic() + TIMEOUT
        while descriptors(pid) > settle and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # waiting for another process to close
        return descriptors(pid)

    assert loop.run_until_complete(settled()) <= settle
