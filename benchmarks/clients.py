"""Load generators written in Python, for what wrk and h2load cannot do.

Each runs as its own process and prints one JSON line of results::

    python -m benchmarks.clients bulk 40123 1073741824      # MB/s through a relay
    python -m benchmarks.clients half-close 40123           # does it pass?
    python -m benchmarks.clients bidi 40123 --seconds 5      # gRPC bidi streaming
    python -m benchmarks.clients probe 40123 --kind http1 --count 500
    python -m benchmarks.clients idle 40123 10000            # silent sockets

``bulk`` sends an SSH identification line (so a txcmux port routes it to
its ``ssh`` relay), the length and then the bytes, and waits for the sink's
8-byte count; ``half-close`` checks whether a half-close gets through.
``idle`` opens the sockets, prints ``{"open": n}``, and holds them, silent,
until its stdin ends (or ``--hold`` seconds pass).  Every loop
is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import select
import socket
import ssl
import sys
import threading
import time
from typing import Any

SSH_BANNER = b"SSH-2.0-txcmux-bench\r\n"
#: The sink's length meaning "count until the end of input" (server.py).
UNTIL_EOF = (1 << 64) - 1
HTTP1_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def emit(result: dict[str, Any]) -> None:
    """Print the one JSON line of results."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# -- bulk ---------------------------------------------------------------------


def bulk(port: int, total: int, chunk: int = 1 << 20) -> dict[str, Any]:
    """Send ``total`` bytes (after the SSH line) and time until the sink's count.

    The length goes first, so the sink answers without waiting for a
    half-close (sslh does not pass one on; see :func:`half_close`).
    """
    payload = memoryview(b"\xa5" * chunk)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        started = time.perf_counter()
        connection.sendall(SSH_BANNER + total.to_bytes(8, "big"))
        left = total
        while left > 0:
            piece = payload[: min(chunk, left)]
            connection.sendall(piece)
            left -= len(piece)
        answer = _read_count(connection)
        seconds = time.perf_counter() - started
    counted = int.from_bytes(answer, "big") if len(answer) == 8 else -1
    return {
        "bytes": total,
        "seconds": seconds,
        "sink_counted": counted,
        "ok": counted == total,
    }


def _read_count(connection: socket.socket) -> bytes:
    """The sink's 8-byte answer, or what arrived of it before the end."""
    answer = b""
    while len(answer) < 8:
        data = connection.recv(8 - len(answer))
        if not data:
            break
        answer += data
    return answer


def half_close(port: int, size: int = 64 * 1024, wait: float = 5.0) -> dict[str, Any]:
    """Does a half-close pass through?  Send, shut down writing, await the count.

    The sink is told to count until the end of input, so it answers only if
    the client's end of stream reaches it while the way back stays open.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(SSH_BANNER + UNTIL_EOF.to_bytes(8, "big") + b"h" * size)
        connection.shutdown(socket.SHUT_WR)
        try:
            answer = _read_count(connection)
        except TimeoutError:
            return {"passed": False, "seen": f"no answer in {wait:g} s"}
        except ConnectionResetError:
            return {"passed": False, "seen": "reset without the answer"}
    if len(answer) < 8:
        return {"passed": False, "seen": "closed without the answer"}
    counted = int.from_bytes(answer, "big")
    if counted != size:
        return {"passed": False, "seen": f"the sink counted {counted} of {size} bytes"}
    return {"passed": True, "seen": "answer received"}


# -- gRPC bidi streaming --------------------------------------------------------


def bidi(port: int, seconds: float, size: int, streams: int) -> dict[str, Any]:
    """Echo ``size``-byte messages on ``streams`` bidi calls for ``seconds``."""
    import grpc

    from benchmarks.grpc_service import BIDI, OPTIONS

    message = b"\x5a" * size
    limit = int(seconds * 20_000) + 100  # messages per stream: a hard bound
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    call = channel.stream_stream(BIDI)
    grpc.channel_ready_future(channel).result(timeout=10)
    received = [0] * streams
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def requests() -> Any:
        for _ in range(limit):
            if time.perf_counter() >= deadline:
                return
            yield message

    def one(index: int) -> None:
        try:
            for reply in call(requests(), timeout=seconds + 30):
                received[index] += len(reply)
        except grpc.RpcError as error:
            errors.append(str(error))

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 40)
    elapsed = time.perf_counter() - started
    channel.close()
    return {"bytes": sum(received), "seconds": elapsed, "errors": errors[:3]}


# -- connection probes ------------------------------------------------------------


def _client_hello() -> bytes:
    """A real TLS ClientHello from Python's ssl module (ALPN h2, http/1.1)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _h2c_request() -> Any:
    """(first bytes, h2 connection) of an h2c GET / with prior knowledge."""
    import h2.config
    import h2.connection

    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="ascii")
    )
    connection.initiate_connection()
    connection.send_headers(
        1,
        [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
        ],
        end_stream=True,
    )
    return connection.data_to_send(), connection


def _read_reply(sock: socket.socket, kind: str, connection: Any) -> int:
    """Read what the server answers to one probe; return the bytes read."""
    from h2.events import StreamEnded

    total = 0
    while True:
        data = sock.recv(65536)
        if not data:
            return total
        total += len(data)
        if kind == "tls":
            return total  # the ServerHello's first bytes: the route answered
        if kind == "h2c":
            for event in connection.receive_data(data):
                if isinstance(event, StreamEnded):
                    return total
            pending = connection.data_to_send()
            if pending:
                sock.sendall(pending)


def probe(port: int, kind: str, count: int, pause: float) -> dict[str, Any]:
    """``count`` connections one after another, each timed connect to reply."""
    latencies: list[int] = []
    failures = 0
    hello = _client_hello() if kind == "tls" else b""
    for _ in range(count):
        h2_client = None
        if kind == "h2c":
            first, h2_client = _h2c_request()
        elif kind == "tls":
            first = hello
        else:
            first = HTTP1_REQUEST
        started = time.perf_counter_ns()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(first)
                got = _read_reply(sock, kind, h2_client)
        except OSError:
            got = 0
        if got:
            latencies.append(time.perf_counter_ns() - started)
        else:
            failures += 1
        if pause:
            time.sleep(pause)
    return {"latency_ns": latencies, "failures": failures}


# -- silent connections -------------------------------------------------------------


def idle(port: int, count: int, hold: float) -> None:
    """Open ``count`` silent connections; hold them until stdin ends."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sockets: list[socket.socket] = []
    deadline = time.monotonic() + 120
    try:
        while len(sockets) < count and time.monotonic() < deadline:
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sockets.append(sock)
        emit({"open": len(sockets)})
        select.select([sys.stdin], [], [], hold)
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("bulk")
    p.add_argument("port", type=int)
    p.add_argument("bytes", type=int)
    p = commands.add_parser("half-close")
    p.add_argument("port", type=int)
    p = commands.add_parser("bidi")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--size", type=int, default=64 * 1024)
    p.add_argument("--streams", type=int, default=4)
    p = commands.add_parser("probe")
    p.add_argument("port", type=int)
    p.add_argument("--kind", choices=("http1", "h2c", "tls"), default="http1")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--pause", type=float, default=0.0)
    p = commands.add_parser("idle")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--hold", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.command == "bulk":
        emit(bulk(args.port, args.bytes))
    elif args.command == "half-close":
        emit(half_close(args.port))
    elif args.command == "bidi":
        emit(bidi(args.port, args.seconds, args.size, args.streams))
    elif args.command == "probe":
        emit(probe(args.port, args.kind, args.count, args.pause))
    else:
        idle(args.port, args.count, args.hold)


if __name__ == "__main__":
    main()
