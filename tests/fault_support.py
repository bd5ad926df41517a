"""Helpers for the fault, leak, load and byte-exact relay tests.

* :class:`Backend`: a stand-in backend in threads on 127.0.0.1 that echoes,
  resets mid-stream, stalls (never reads), accepts slowly or checksums what
  it gets (the ``sink`` protocol below), and records how each of its
  connections ended (``fin``, ``rst``).
* :func:`refused_port`, :class:`DyingBackend` (an echo server in a process
  of its own, to SIGKILL).
* :class:`Mux`: a txcmux service built from a config file by
  :func:`txcmux.config.make_service`, run in a process of its own
  (``python -m tests.fault_support serve DIR``) with a probe on a unix
  socket that answers what only the process itself can see: open file
  descriptors, resident memory, live Python objects, pending DelayedCalls.
* :func:`reset` (close with SO_LINGER 0, so the peer gets a RST) and
  :func:`how_it_ends` (read until the peer closes: FIN or RST, and when).
* The sink protocol for byte-exact relaying: the client sends the line
  ``SINK <seed> <up> <down>\\n`` and ``up`` random bytes; the backend
  checksums the bytes after the line and sends ``down`` bytes of
  ``random.Random(seed)`` at once, in random sizes, then half-closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


# -- waiting ---------------------------------------------------------------------


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- clients ---------------------------------------------------------------------


def reset(sock: socket.socket) -> None:
    """Close ``sock`` so that the peer gets a RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def how_it_ends(sock: socket.socket, timeout: float = 10) -> tuple[str, bytes, float]:
    """Read until the peer closes: (``fin`` | ``rst`` | ``open``, what came,
    seconds it took).  ``open``: still open after ``timeout`` seconds."""
    started = time.monotonic()
    received = bytearray()
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if time.monotonic() - started > timeout:
                return "open", bytes(received), time.monotonic() - started
    except ConnectionResetError:
        return "rst", bytes(received), time.monotonic() - started
    except TimeoutError:
        return "open", bytes(received), time.monotonic() - started
    return "fin", bytes(received), time.monotonic() - started


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


# -- stand-in backends -----------------------------------------------------------


def refused_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connecting is refused)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def _end_of(sock: socket.socket, keep: Callable[[bytes], None]) -> str:
    try:
        while chunk := sock.recv(65536):
            keep(chunk)
    except ConnectionResetError:
        return "rst"
    except OSError:
        return "error"
    return "fin"


class Backend:
    """A backend on 127.0.0.1 in threads, one per connection.

    ``behaviour``: ``echo``; ``reset`` (read the first chunk, answer
    ``partial`` and reset); ``stall`` (accept, never read); ``slow``
    (accept each connection ``delay`` seconds late, then echo); ``late``
    (accept ``delay`` seconds late, read to the end, keep what came in
    ``received``); ``sink``.
    ``tls``: a server context, for a TLS backend.  ``ends`` lists how each
    connection ended as this side saw it, in order; ``digests`` maps a sink
    seed to the sha256 of what arrived and whether the end was a clean EOF.
    """

    def __init__(
        self,
        behaviour: str,
        delay: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.tls = tls
        self.ends: list[str] = []
        self.digests: dict[int, tuple[str, int, bool]] = {}
        self.received: list[bytes] = []
        self.accepted = 0
        self.held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server((LOOPBACK, 0), backlog=1024)
        self.port: int = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket) -> None:
        if self.behaviour in ("slow", "late"):
            time.sleep(self.delay)  # the slowness being simulated
        if self.behaviour == "stall":
            with self._lock:
                self.held.append(client)
            return
        try:
            if self.tls is not None:
                client = self.tls.wrap_socket(client, server_side=True)
            getattr(self, "_" + self.behaviour.replace("slow", "echo"))(client)
        except OSError:
            with self._lock:
                self.ends.append("error")
        finally:
            client.close()

    def _echo(self, client: socket.socket) -> None:
        end = _end_of(client, client.sendall)
        with self._lock:
            self.ends.append(end)

    def _late(self, client: socket.socket) -> None:
        received = bytearray()
        end = _end_of(client, received.extend)
        with self._lock:
            self.received.append(bytes(received))
            self.ends.append(end)

    def _reset(self, client: socket.socket) -> None:
        client.recv(65536)
        client.sendall(b"partial")
        reset(client)
        with self._lock:
            self.ends.append("reset")

    def _sink(self, client: socket.socket) -> None:
        line = bytearray()
        while not line.endswith(b"\n"):
            chunk = client.recv(1)
            if not chunk:
                return
            line += chunk
        _, seed_text, _, down_text = line.split()
        seed, down = int(seed_text), int(down_text)
        sender = threading.Thread(target=send_random, args=(client, seed, down, True))
        sender.start()
        digest = hashlib.sha256()
        count = 0
        rng = random.Random(seed + 1)
        clean = True
        try:
            while chunk := client.recv(rng.randint(1, 65536)):
                digest.update(chunk)
                count += len(chunk)
        except (ConnectionResetError, ssl.SSLError):
            clean = False
        sender.join()
        if isinstance(client, ssl.SSLSocket):
            with contextlib.suppress(OSError):
                client.unwrap()  # close_notify back
        with self._lock:
            self.digests[seed] = (digest.hexdigest(), count, clean)
            self.ends.append("fin" if clean else "rst")

    def wait_ends(self, count: int, timeout: float = 10) -> list[str]:
        """Wait until ``count`` connections have ended; how they did."""
        wait_for(lambda: len(self.ends) >= count, f"{count} backend ends", timeout)
        return list(self.ends)

    def close_held(self) -> None:
        """Close the stalled connections held so far."""
        with self._lock:
            held, self.held = self.held, []
        for sock in held:
            sock.close()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self.held:
                sock.close()
            self.held.clear()


def payload(seed: int, size: int) -> bytes:
    """The ``size`` random bytes the sink protocol derives from ``seed``."""
    return random.Random(seed).randbytes(size)


def send_random(sock: Any, seed: int, size: int, half_close: bool) -> None:
    """Send :func:`payload` in random write sizes, then half-close."""
    data = memoryview(payload(seed, size))
    rng = random.Random(seed + 2)
    sent = 0
    try:
        while sent < size:
            step = rng.choice((1, 7, 100, 1460, 4096, 65536, 262144))
            sock.sendall(data[sent : sent + step])
            sent += len(data[sent : sent + step])
        if half_close:
            if isinstance(sock, ssl.SSLSocket):
                return  # TLS has no half-close to give
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        return


class DyingBackend:
    """An echo server in a process of its own, for :meth:`kill` to SIGKILL."""

    def __init__(self, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ECHO_PROCESS, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


_ECHO_PROCESS = """
import socket, sys, threading
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print(server.getsockname()[1], flush=True)
def echo(client):
    while data := client.recv(65536):
        client.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""


# -- the sink protocol from the client's side -------------------------------------


@dataclass
class Transfer:
    """One byte-exact transfer's outcome, as the client saw it."""

    seed: int
    up: int
    down: int
    received: int = 0
    digest: str = ""
    eof: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def transfer(
    sock: socket.socket | ssl.SSLSocket,
    seed: int,
    up: int,
    down: int,
    slow: bool = False,
    half_close: bool = True,
    timeout: float = 60,
) -> Transfer:
    """Run the sink protocol on ``sock`` (connected to the mux) in one thread:
    send the header and ``up`` bytes in random sizes while reading in random
    sizes (``slow``: small reads, pausing now and then), half-close after
    the last byte if the socket can; return what arrived."""
    result = Transfer(seed, up, down)
    started = time.monotonic()
    rng = random.Random(seed + 3)
    out = memoryview(f"SINK {seed} {up} {down}\n".encode() + payload(seed, up))
    digest = hashlib.sha256()
    sent = 0
    shut = False
    sock.setblocking(False)
    is_tls = isinstance(sock, ssl.SSLSocket)
    deadline = started + timeout
    while True:
        if time.monotonic() > deadline:
            result.errors.append("timed out")
            break
        writing = [sock] if sent < len(out) else []
        if not writing and (result.eof or (is_tls and result.received >= down)):
            # No half-close over TLS: the byte count says it is done.
            result.eof = True
            break
        if not writing and half_close and not shut and not is_tls:
            sock.shutdown(socket.SHUT_WR)
            shut = True
        pending = is_tls and sock.pending()  # type: ignore[union-attr]
        if pending:
            readable, writable = [sock], []
        else:
            readable, writable, _ = select.select([sock], writing, [], 1.0)
        if writable:
            step = rng.choice((1, 13, 1000, 4096, 65536, 262144))
            with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent += sock.send(out[sent : sent + step])
        if readable:
            size = rng.choice((1, 17, 512)) if slow else rng.choice((1, 4096, 262144))
            try:
                chunk = sock.recv(size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                continue
            except OSError as error:
                result.errors.append(repr(error))
                break
            if not chunk:
                result.eof = True
                if sent >= len(out):
                    break
                continue
            digest.update(chunk)
            result.received += len(chunk)
            if slow and rng.random() < 0.01:
                time.sleep(0.002)  # the slow reader being simulated
    if is_tls:
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            sock.unwrap()  # type: ignore[union-attr]  # close_notify, not a truncation
    result.digest = digest.hexdigest()
    result.seconds = time.monotonic() - started
    return result


def expected_digest(seed: int, size: int) -> str:
    return hashlib.sha256(payload(seed, size)).hexdigest()


# -- the mux in a process of its own ----------------------------------------------


class Mux:
    """A txcmux service from ``config`` (a TOML text; ``{admin}`` is replaced
    by the admin socket's path) in a child process, with its probe."""

    def __init__(
        self,
        directory: Path,
        config: str,
        env: dict[str, str] | None = None,
        no_splice: bool = False,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        from tests.tls_support import pki

        self.directory = directory
        shutil.copy(pki().server_certificate, directory / "server.pem")
        shutil.copy(pki().server_key, directory / "server.key")
        self.admin = directory / "admin.sock"
        self.probe_path = directory / "probe.sock"
        path = directory / "cmux.toml"
        path.write_text(config.replace("{admin}", str(self.admin)), encoding="utf-8")
        ports = directory / "ports"
        self.log = directory / "mux.log"
        environment = {**os.environ, "PYTHONPATH": str(HERE), **(env or {})}
        argv = [sys.executable, "-m", "tests.fault_support", "serve", str(directory)]
        if no_splice:
            argv.append("--no-splice")
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                argv,
                cwd=directory,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                preexec_fn=preexec,
            )
        deadline = time.monotonic() + 30
        while not (ports.exists() and self.probe_path.exists()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the mux did not start:\n{self.output()}")
            time.sleep(0.05)
        self.port = int(ports.read_text().split()[0])

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def probe(self, command: str = "stats") -> dict[str, Any]:
        """Ask the process; a JSON answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(self.probe_path))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        result: dict[str, Any] = json.loads(answer)
        return result

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the admin site's ``/metrics``."""
        from prometheus_client.parser import text_string_to_metric_families

        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(self.admin))
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        text = answer.split(b"\r\n\r\n", 1)[1].decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def counter(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.metrics().get(key, 0.0)

    def stop(self) -> str:
        """SIGTERM, wait; everything it printed (checked for tracebacks)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.output()


@contextlib.contextmanager
def running(directory: Path, config: str, **options: Any) -> Iterator[Mux]:
    mux = Mux(directory, config, **options)
    try:
        yield mux
    finally:
        output = mux.stop()
    assert "Traceback" not in output, output
    assert mux.process.returncode == 0, output


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _malloc_trim() -> None:
    """Give the C allocator's free memory back to the system (glibc), so that
    memory still held can be told from memory merely not returned."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is not None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def _serve(directory: Path, no_splice: bool) -> None:
    import gc

    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from txcmux._relay import _splice
    from txcmux.config import load, make_service

    if no_splice:
        _splice._SPLICE = None
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = make_service(
        load(str(directory / "cmux.toml")), port_file=str(directory / "ports")
    )

    class Probe(Protocol):
        def dataReceived(self, data: bytes) -> None:
            command = data.strip().decode()
            if command == "stop-grpc":
                server = service.grpc_server
                assert server is not None
                done = server.stopService()
                done.addCallback(lambda _: self._answer({"stopped": True}))
                return
            gc.collect()
            rss = _rss_kib()
            _malloc_trim()
            kept = len(_splice._PIPES.free)
            self._answer(
                {
                    # Less the empty pipes the relay keeps for reuse (a
                    # cache of at most _PIPES.keep, counted on its own).
                    "fds": len(os.listdir("/proc/self/fd")) - 2 * kept,
                    "kept_pipes": kept,
                    "rss_kib": rss,
                    "trimmed_rss_kib": _rss_kib(),
                    "objects": len(gc.get_objects()),
                    "delayed": len(reactor.getDelayedCalls()),  # type: ignore[attr-defined]
                    "threads": threading.active_count(),
                }
            )

        def _answer(self, answer: dict[str, Any]) -> None:
            assert self.transport is not None
            self.transport.write(json.dumps(answer).encode())
            self.transport.loseConnection()

    def start() -> None:
        service.startService()
        reactor.listenUNIX(  # type: ignore[attr-defined]
            str(directory / "probe.sock"), Factory.forProtocol(Probe)
        )

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", service.stopService
    )
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _serve(Path(sys.argv[2]), "--no-splice" in sys.argv)
