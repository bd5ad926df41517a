"""Faults on either side of a relay, and of TLS, against a running mux.

One mux process for the module, with relay routes chosen by a prefix to
stand-in backends (:mod:`tests.fault_support`): ``ECHO`` (echoes), ``RSET``
(answers ``partial`` and resets), ``STAL`` (accepts and never reads),
``SLOW`` (accepts one second late), ``DEAD`` (a port nothing listens on) and
``KILL`` (an echo server in its own process, killed mid-stream); a ``tls``
route terminating TLS in front of the echo route and the demo site; the demo
site and the in-process gRPC server.  Each test makes one fault and checks
how fast, and with which kind of close (FIN or RST), the other side was
closed, that the listener still serves, and what ``/metrics`` counted.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from OpenSSL import SSL

from tests.fault_support import (
    Backend,
    DyingBackend,
    Mux,
    connect,
    how_it_ends,
    refused_port,
    reset,
    wait_for,
)
from tests.tls_support import pki
from txcmux.demo import Message

pytestmark = pytest.mark.timeout(120)

PROMPTLY = 2.0  # seconds within which the other side must be closed

CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1:backlog=1024"]
sniff_timeout = 1.0
routes = [
  "grpc", "https", "echo", "reset", "stall", "slow", "late", "dead", "kill", "idle",
  "stuck", "web",
]

[admin]
listen = "unix:{{admin}}"

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "https"
match = ["tls"]
tls.certificate = "server.pem"
tls.key = "server.key"
tls.routes = ["echo", "late", "web"]
tls.handshake_timeout = 1.0

[[route]]
name = "echo"
match = [{{ type = "prefix", value = "ECHO" }}]
proxy = "tcp:host=127.0.0.1:port={echo}"

[[route]]
name = "reset"
match = [{{ type = "prefix", value = "RSET" }}]
proxy = "tcp:host=127.0.0.1:port={reset}"

[[route]]
name = "stall"
match = [{{ type = "prefix", value = "STAL" }}]
proxy = "tcp:host=127.0.0.1:port={stall}"

[[route]]
name = "slow"
match = [{{ type = "prefix", value = "SLOW" }}]
proxy = "tcp:host=127.0.0.1:port={slow}"

[[route]]
name = "late"
match = [{{ type = "prefix", value = "LATE" }}]
proxy = "tcp:host=127.0.0.1:port={late}"

[[route]]
name = "dead"
match = [{{ type = "prefix", value = "DEAD" }}]
proxy = "tcp:host=127.0.0.1:port={dead}"

[[route]]
name = "kill"
match = [{{ type = "prefix", value = "KILL" }}]
proxy = "tcp:host=127.0.0.1:port={kill}"

[[route]]
name = "idle"
match = [{{ type = "prefix", value = "IDLE" }}]
proxy = "tcp:host=127.0.0.1:port={echo}"
idle_timeout = 1.0

[[route]]
name = "stuck"
match = [{{ type = "prefix", value = "STUK" }}]
proxy = "tcp:host=127.0.0.1:port={stall}"
idle_timeout = 1.0

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
"""


class Backends:
    """The stand-ins the module's mux relays to."""

    def __init__(self, dying: bool = True) -> None:
        self.echo = Backend("echo")
        self.reset = Backend("reset")
        self.stall = Backend("stall")
        self.slow = Backend("slow", delay=1.0)
        self.late = Backend("late", delay=1.0)
        self.dead = refused_port()
        self._kill = DyingBackend() if dying else None

    @property
    def kill(self) -> DyingBackend:
        assert self._kill is not None
        return self._kill

    def config(self) -> str:
        return CONFIG.format(
            echo=self.echo.port,
            reset=self.reset.port,
            stall=self.stall.port,
            slow=self.slow.port,
            late=self.late.port,
            dead=self.dead,
            kill=self.dead if self._kill is None else self._kill.port,
        )

    def close(self) -> None:
        for backend in (self.echo, self.reset, self.stall, self.slow, self.late):
            backend.close()
        if self._kill is not None and self._kill.process.poll() is None:
            self._kill.kill()


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    stand_ins = Backends()
    yield stand_ins
    stand_ins.close()


@pytest.fixture(scope="module")
def mux(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[Mux]:
    running = Mux(tmp_path_factory.mktemp("faults"), backends.config())
    yield running
    output = running.stop()
    assert "Traceback" not in output, output
    assert running.process.returncode == 0, output


def relay(mux: Mux, route: str, outcome: str) -> float:
    return mux.counter("txcmux_relay_connections_total", route=route, outcome=outcome)


def send_until_blocked(sock: socket.socket, blocked_for: float) -> int:
    """Send from non-blocking ``sock`` until its sends have been blocked
    for ``blocked_for`` seconds (at most 20 s, 256 MiB); how much went."""
    sock.setblocking(False)
    sent, chunk = 0, b"x" * 65536
    deadline = time.monotonic() + 20
    blocked_since = None
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > blocked_for:
                break
            time.sleep(0.01)
        assert sent < 256 << 20, "no back-pressure from a stalled backend"
    return sent


def served(mux: Mux) -> None:
    """The listener still accepts and the demo page answers, quickly."""
    started = time.monotonic()
    with connect(mux.port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.endswith(b"Hello from txcmux over HTTP/1.1\n"), answer
    assert time.monotonic() - started < 1.0


def test_a_refusing_backend_closes_the_client_with_a_fin(mux: Mux) -> None:
    """Backend refuses: the client's connection is closed cleanly at once,
    and counted as backend_failed."""
    before = relay(mux, "dead", "backend_failed")
    with connect(mux.port, b"DEAD hello") as sock:
        how, data, seconds = how_it_ends(sock)
    assert (how, data) == ("fin", b"")
    assert seconds < PROMPTLY
    assert relay(mux, "dead", "backend_failed") == before + 1
    assert "backend" in mux.output() and "refused" in mux.output()
    served(mux)


def test_a_backend_reset_mid_stream_resets_the_client(
    mux: Mux, backends: Backends
) -> None:
    """Backend resets after answering: the client gets what was sent, then a
    RST (an error is passed on as an error), counted as closed_error."""
    before = relay(mux, "reset", "closed_error")
    with connect(mux.port, b"RSET hello") as sock:
        how, data, seconds = how_it_ends(sock)
    assert how == "rst", (how, data)
    assert data in (b"", b"partial")  # a RST may overtake unread bytes
    assert seconds < PROMPTLY
    wait_for(lambda: relay(mux, "reset", "closed_error") == before + 1, "the count")
    served(mux)


def test_a_client_reset_mid_stream_resets_the_backend(
    mux: Mux, backends: Backends
) -> None:
    """Client resets mid-stream: the backend's connection is aborted (RST),
    not closed as if the client had finished."""
    ended = len(backends.echo.ends)
    sock = connect(mux.port, b"ECHO one")
    sock.settimeout(5)
    assert sock.recv(100) == b"ECHO one"
    reset(sock)
    started = time.monotonic()
    assert backends.echo.wait_ends(ended + 1, PROMPTLY)[ended] == "rst"
    assert time.monotonic() - started < PROMPTLY
    served(mux)


def test_a_client_fin_becomes_a_backend_fin_and_the_answer_still_arrives(
    mux: Mux, backends: Backends
) -> None:
    """The contrast to a reset: a client's half-close reaches the backend as a
    FIN, the backend's last bytes still reach the client, then a FIN."""
    ended = len(backends.echo.ends)
    with connect(mux.port, b"ECHO two") as sock:
        sock.shutdown(socket.SHUT_WR)
        how, data, _ = how_it_ends(sock)
    assert (how, data) == ("fin", b"ECHO two")
    assert backends.echo.wait_ends(ended + 1)[ended] == "fin"


def test_a_stalled_backend_pauses_the_client_and_a_reset_frees_both(
    mux: Mux, backends: Backends
) -> None:
    """Backend stops reading: the relay stops reading the client (its sends
    block instead of filling the mux's memory); when the client resets, the
    backend's connection is aborted at once."""
    held = len(backends.stall.held)
    rss_before = mux.probe()["rss_kib"]
    sock = connect(mux.port, b"STAL")
    send_until_blocked(sock, 0.5)
    # The kernel buffers on both sides hold most of it; the mux holds little.
    assert mux.probe()["rss_kib"] - rss_before < 32 << 10
    wait_for(lambda: len(backends.stall.held) > held, "the stalled accept")
    backend_side = backends.stall.held[-1]
    reset(sock)
    backend_side.settimeout(PROMPTLY)
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        while backend_side.recv(1 << 20):
            pass
    assert time.monotonic() - started < PROMPTLY
    served(mux)


def test_an_idle_relay_is_closed_cleanly_at_its_idle_timeout(
    mux: Mux, backends: Backends
) -> None:
    """No byte either way for idle_timeout (1 s here): both sides get a FIN
    within a quarter more, counted as idle_timeout; bytes before that keep
    the connection open."""
    before = relay(mux, "idle", "idle_timeout")
    ended = len(backends.echo.ends)
    with connect(mux.port, b"IDLE one") as sock:
        sock.settimeout(5)
        assert sock.recv(100) == b"IDLE one"
        for word in (b"two", b"three"):  # 0.6 s apart: not idle yet
            time.sleep(0.6)
            sock.sendall(word)
            assert sock.recv(100) == word
        started = time.monotonic()
        how, data, seconds = how_it_ends(sock)
    assert (how, data) == ("fin", b"")
    assert 1.0 - 0.1 < seconds < 1.25 + PROMPTLY
    assert backends.echo.wait_ends(ended + 1)[ended] == "fin"
    assert time.monotonic() - started < 1.25 + PROMPTLY
    wait_for(lambda: relay(mux, "idle", "idle_timeout") == before + 1, "the count")
    assert "idle for 1 s; closing both sides" in mux.output()
    served(mux)


def test_a_relay_stuck_on_a_stalled_backend_is_reset_at_its_idle_timeout(
    mux: Mux, backends: Backends
) -> None:
    """The backend stops reading and the client's sends block: nothing moves,
    so at the idle timeout both sides are reset (a clean close would wait
    for ever to flush), and the mux lets go of both."""
    before = relay(mux, "stuck", "idle_timeout")
    held = len(backends.stall.held)
    sock = connect(mux.port, b"STUK")
    # The buffers are full: the relay holds bytes it cannot write.
    send_until_blocked(sock, 0.25)
    started = time.monotonic()
    wait_for(lambda: len(backends.stall.held) > held, "the stalled accept")
    backend_side = backends.stall.held[-1]
    # Reading the backend's side would end the stall: wait for the count.
    wait_for(
        lambda: relay(mux, "stuck", "idle_timeout") == before + 1,
        "the idle timeout",
        timeout=1.25 + PROMPTLY,
    )
    assert time.monotonic() - started < 1.25 + PROMPTLY
    backend_side.settimeout(PROMPTLY)
    with pytest.raises(ConnectionResetError):
        while backend_side.recv(1 << 20):
            pass
    sock.setblocking(True)
    how, _, _ = how_it_ends(sock, timeout=PROMPTLY)
    assert how == "rst"
    served(mux)


def test_a_slow_backend_gets_everything_sent_while_it_was_accepting(
    mux: Mux,
) -> None:
    """Backend accepts a second late: what the client sent meanwhile is held
    (the client's reading paused) and arrives, in order, once it does."""
    with connect(mux.port, b"SLOW " + b"y" * 100_000) as sock:
        sock.shutdown(socket.SHUT_WR)
        how, data, seconds = how_it_ends(sock)
    assert how == "fin"
    assert data == b"SLOW " + b"y" * 100_000
    assert 0.9 < seconds < 5


def test_a_backend_that_dies_closes_its_clients_and_later_ones_are_refused(
    mux: Mux, backends: Backends
) -> None:
    """Backend process killed mid-stream: its clients are closed promptly
    (the kernel closes a dead process's sockets with a FIN, so they get a
    FIN), then new clients of the route are closed as backend_failed while
    the listener serves the others."""
    clients = [connect(mux.port, b"KILL %d" % i) for i in range(3)]
    for i, sock in enumerate(clients):
        sock.settimeout(5)
        assert sock.recv(100) == b"KILL %d" % i
    backends.kill.kill()
    started = time.monotonic()
    for sock in clients:
        how, _, _ = how_it_ends(sock)
        sock.close()
        assert how == "fin"
    assert time.monotonic() - started < PROMPTLY
    wait_for(lambda: relay(mux, "kill", "closed_clean") >= 3, "the clean closes")
    failed = relay(mux, "kill", "backend_failed")
    with connect(mux.port, b"KILL again") as sock:
        assert how_it_ends(sock)[:2] == ("fin", b"")
    assert relay(mux, "kill", "backend_failed") == failed + 1
    served(mux)


def test_a_silent_client_is_closed_at_the_sniff_timeout(mux: Mux) -> None:
    """A client that connects and goes quiet (as one that vanished without a
    FIN looks) is closed at ``sniff_timeout`` and counted as a timeout."""

    def timeouts() -> float:
        return sum(
            value
            for (name, labels), value in mux.metrics().items()
            if name == "txcmux_rejections_total" and ("reason", "timeout") in labels
        )

    before = timeouts()
    with connect(mux.port) as sock:
        how, _, seconds = how_it_ends(sock)
    assert how == "fin" and 0.9 < seconds < 1.0 + PROMPTLY
    assert timeouts() == before + 1


def tls_client(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki().ca))
    return context.wrap_socket(connect(port), server_hostname="localhost")


def test_tls_close_notify_is_passed_on_as_a_clean_close(
    mux: Mux, backends: Backends
) -> None:
    """A TLS client that ends with close_notify: the backend behind the
    termination sees a FIN, the client gets close_notify back."""
    ended = len(backends.echo.ends)
    sock = tls_client(mux.port)
    sock.sendall(b"ECHO over tls")
    assert sock.recv(100) == b"ECHO over tls"
    sock.settimeout(PROMPTLY)
    plain = sock.unwrap()  # sends close_notify, waits for the peer's
    assert backends.echo.wait_ends(ended + 1, PROMPTLY)[ended] == "fin"
    assert how_it_ends(plain)[0] == "fin"


def test_bytes_then_close_notify_before_the_backend_accepts_all_arrive(
    mux: Mux, backends: Backends
) -> None:
    """A TLS client sends its bytes and close_notify in one segment, and
    leaves while the backend takes a second to accept: the bytes still
    reach the backend, then a FIN, as they would over plain TCP (Twisted's
    TLS reads both at once and reports a full close)."""
    ended = len(backends.late.ends)
    before = relay(mux, "late", "closed_clean")
    message = b"LATE last words"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context(cafile=str(pki().ca))
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with connect(mux.port) as sock:
        sock.settimeout(PROMPTLY)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(message)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # close_notify, behind the data record
        sock.sendall(outgoing.read())  # both in one send
        assert backends.late.wait_ends(ended + 1, 1.0 + PROMPTLY)[ended] == "fin"
    assert backends.late.received[-1] == message
    wait_for(lambda: relay(mux, "late", "closed_clean") == before + 1, "the count")
    served(mux)


def test_a_truncated_tls_stream_aborts_the_backend(
    mux: Mux, backends: Backends
) -> None:
    """A TLS client whose TCP connection ends without close_notify (a
    truncation attack looks the same): the backend's connection is aborted,
    not given a FIN it could take for a complete message."""
    ended = len(backends.echo.ends)
    sock = tls_client(mux.port)
    sock.sendall(b"ECHO truncated")
    assert sock.recv(100) == b"ECHO truncated"
    raw = socket.socket(fileno=sock.detach())
    raw.shutdown(socket.SHUT_WR)  # a FIN with no close_notify before it
    assert backends.echo.wait_ends(ended + 1, PROMPTLY)[ended] == "rst"
    raw.close()
    served(mux)


def test_a_tls_renegotiation_attempt_is_refused_and_closed(mux: Mux) -> None:
    """A TLS 1.2 client asking to renegotiate: the mux refuses and closes the
    connection promptly (Twisted's CertificateOptions turn renegotiation
    off), and the listener goes on serving."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    sock = connect(mux.port)
    sock.settimeout(None)  # pyOpenSSL wants a blocking socket; bound it so:
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(PROMPTLY), 0)
    )
    connection = SSL.Connection(context, sock)
    connection.set_tlsext_host_name(b"localhost")
    connection.set_connect_state()
    connection.do_handshake()
    connection.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connection.recv(65536).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    outcome = "served"
    try:
        connection.renegotiate()
        connection.do_handshake()
        connection.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = connection.recv(65536)
        if not answer.startswith(b"HTTP/1.1 200"):
            outcome = "closed"
    except (SSL.Error, OSError):
        outcome = "closed"
    assert outcome == "closed"
    assert time.monotonic() - started < PROMPTLY
    sock.close()
    served(mux)


def test_the_grpc_server_stopped_under_load(tmp_path: Path, backends: Backends) -> None:
    """The in-process gRPC server stops while calls run: calls either
    succeed or fail with UNAVAILABLE, or CANCELLED for those grpcio was
    given during its grace (none hangs or gets a wrong answer),
    calls after the stop fail fast and are counted as backend_failed, and
    the web routes go on serving."""
    mux = Mux(tmp_path, backends.config())
    try:
        results: list[str] = []
        stop = threading.Event()

        def caller() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{mux.port}") as channel:
                echo = channel.unary_unary(
                    "/txcmux.demo.Demo/Echo",
                    request_serializer=Message.SerializeToString,
                    response_deserializer=Message.FromString,
                )
                for i in range(2000):
                    if stop.is_set():
                        return
                    try:
                        answer = echo(Message(text=str(i)), timeout=5)
                        results.append("ok" if answer.text == str(i) else "wrong")
                    except grpc.RpcError as error:
                        results.append(error.code().name)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: results.count("ok") >= 40, "calls to be served")
        assert mux.probe("stop-grpc") == {"stopped": True}
        wait_for(lambda: results[-4:].count("UNAVAILABLE") == 4, "calls to fail")
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert set(results) <= {"ok", "UNAVAILABLE", "CANCELLED"}, set(results)
        assert relay(mux, "grpc", "backend_failed") >= 1
        served(mux)
    finally:
        output = mux.stop()
    assert "Traceback" not in output, output
