"""The servers the benchmarks measure, one per process.

::

    python -m benchmarks.server web mux          # the Site behind txcmux
    python -m benchmarks.server web direct       # the same Site on its own port
    python -m benchmarks.server grpc direct      # a grpcio server alone
    python -m benchmarks.server relay mux --backend 40123

The process listens on 127.0.0.1, port 0, and prints one JSON line with its
``port`` and ``pid``.  It then reads commands, one per line, on stdin:
``stats`` answers one JSON line (resident memory, the switch's counters,
handoff latencies); end of input stops the server.  Twisted servers run one
reactor; ``grpc direct`` and ``relay sink`` run no reactor at all.

The "mux" side is always the same realistic txcmux port: routes ``grpc``
(gRPC to a grpcio server), ``tls`` (TLS termination with ``grpc`` and
``web`` behind it), ``ssh`` (relayed) and ``web`` (HTTP/1.1 and HTTP/2 to
one twisted.web Site), in that priority order; only the scenario's
backends are real, the others point at a closed port and stay unused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: The scenarios' server kinds and the modes each one has.
MODES = {
    "web": ("direct", "mux"),
    "h2c": ("direct", "mux", "mux-per-stream"),
    "https": ("direct", "mux"),
    "grpc": ("direct", "mux", "mux-inprocess", "mux-per-stream"),
    "relay": ("sink", "mux"),
    "handoff": ("direct", "mux"),
}
#: Responses of the benchmark Site: small, fixed.
BODY = b"hello, world\n"
#: The listen backlog of every server, direct or not (the memory scenario
#: opens thousands of connections at once).
BACKLOG = 1024
#: A port nothing listens on: backends of routes a scenario does not use.
UNUSED_BACKEND = "tcp:host=127.0.0.1:port=9"
#: The sink's length meaning "count until the end of input".
UNTIL_EOF = (1 << 64) - 1


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib() -> int:
    """This process's resident set size, in KiB (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost: (cert path, key path)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "server.pem")
    key_path = os.path.join(directory, "server.key")
    Path(cert_path).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    Path(key_path).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def announce(port: int) -> None:
    """Tell the parent where we listen: one JSON line on stdout."""
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


# -- servers without a reactor ------------------------------------------------


def serve_until_eof(stats: Callable[[], dict[str, Any]]) -> None:
    """Answer ``stats`` lines on stdin until it ends."""
    for line in sys.stdin:
        if line.strip() == "stats":
            sys.stdout.write(json.dumps(stats()) + "\n")
            sys.stdout.flush()


def run_grpc_direct(workers: int) -> None:
    """A grpcio server on 127.0.0.1 (the gRPC scenarios' direct side)."""
    import grpc

    from benchmarks.grpc_service import OPTIONS, add_to

    server = grpc.server(ThreadPoolExecutor(workers), options=OPTIONS)
    add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(port)
    serve_until_eof(lambda: {"rss_kib": rss_kib()})
    server.stop(None)


def run_sink() -> None:
    """A byte sink: counts what each connection sends, answers the count.

    A connection starts with one line (the client's SSH identification, so
    that a multiplexer routes it to a relay) and an 8-byte big-endian length
    N; the sink answers the count of the bytes after them, as 8 bytes, once
    N have arrived or at end of input, whichever comes first.  A length of
    :data:`UNTIL_EOF` waits for the end (a half-close).  Plain blocking
    sockets, one thread per connection, so that the direct side of the relay
    benchmark runs at the speed of the loopback itself.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    totals: list[int] = []

    def drain(connection: socket.socket) -> None:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        head = b""
        total = 0
        wanted: int | None = None
        with connection:
            while wanted is None or total < wanted:
                count = connection.recv_into(view)
                if not count:
                    break
                if wanted is not None:
                    total += count
                    continue
                head += bytes(view[:count])
                end = head.find(b"\n")
                if end < 0 or len(head) < end + 9:
                    if len(head) > 4096:
                        break  # not a benchmark client
                    continue
                wanted = int.from_bytes(head[end + 1 : end + 9], "big")
                total = len(head) - end - 9
            with contextlib.suppress(OSError):
                connection.sendall(total.to_bytes(8, "big"))
        totals.append(total)

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drain, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    announce(listener.getsockname()[1])
    serve_until_eof(lambda: {"rss_kib": rss_kib(), "connections": len(totals)})
    listener.close()


# -- Twisted servers ----------------------------------------------------------


def _quiet_site() -> Any:
    """A twisted.web Site answering every GET with :data:`BODY`, no access log.

    The access log would cost the same on both sides of every comparison;
    it is left out so the numbers show the serving, not the logging.
    """
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            request.setHeader(b"content-type", b"text/plain")  # type: ignore[no-untyped-call]
            return BODY

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            pass

    return QuietSite(Hello())  # type: ignore[no-untyped-call]


def _start_logging() -> None:
    """Warnings and errors to stderr; the rest (debug, info) is dropped."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class _Stamps:
    """Handoff latencies, from the detector's first read of a connection.

    ``decided``: to the route factory's ``buildProtocol`` call (the matching
    alone); ``delivered``: to the route target's first ``dataReceived`` (the
    matching, building the target and its ``makeConnection``, the replay).
    """

    def __init__(self) -> None:
        self.first_in = 0
        self.decided: dict[str, list[int]] = {}
        self.delivered: dict[str, list[int]] = {}

    def stamping(self, name: str, factory: Any) -> Any:
        """``factory``, with each protocol's first dataReceived timed."""
        from twisted.internet.protocol import Factory

        decided = self.decided.setdefault(name, [])
        delivered = self.delivered.setdefault(name, [])
        stamps = self

        class Stamping(Factory):
            def buildProtocol(self, addr: Any) -> Any:
                started = stamps.first_in
                decided.append(time.perf_counter_ns() - started)
                protocol = factory.buildProtocol(addr)
                if protocol is None:
                    return None
                original = protocol.dataReceived

                def first(data: bytes) -> None:
                    delivered.append(time.perf_counter_ns() - started)
                    del protocol.dataReceived  # the class's method again
                    original(data)

                protocol.dataReceived = first
                return protocol

            def startFactory(self) -> None:
                factory.doStart()

            def stopFactory(self) -> None:
                factory.doStop()

        return Stamping()

    def switch_class(self) -> Any:
        """A ProtocolSwitchingFactory whose detectors note their first read."""
        from txcmux import ProtocolSwitchingFactory
        from txcmux._detector import Detector

        stamps = self

        class StampingDetector(Detector):
            _first_in = 0

            def dataReceived(self, data: bytes) -> None:
                if not self._first_in:
                    self._first_in = time.perf_counter_ns()
                stamps.first_in = self._first_in
                super().dataReceived(data)

        class StampingSwitch(ProtocolSwitchingFactory):
            def buildProtocol(self, addr: Any) -> Any:
                return StampingDetector(self, addr)

        return StampingSwitch


def build_mux(
    site: Any,
    certificate: tuple[str, str],
    grpc_factory: Any,
    ssh_backend: str,
    sniff_timeout: float | None,
    stamps: _Stamps | None = None,
    per_stream: str | None = None,
) -> Any:
    """The txcmux port every "mux" mode serves (see the module docstring).

    ``per_stream`` (mode ``mux-per-stream``) is the web route's
    ``grpc_backend``; that port has no ``grpc`` route in front, so every
    gRPC call is a stream the web route forwards.
    """
    from txcmux import ProtocolSwitchingFactory, Route, matchers
    from txcmux.relay import RelayFactory
    from txcmux.tls import TLSTerminationFactory
    from txcmux.web import WebFactory

    web = (
        WebFactory(site)
        if per_stream is None
        else WebFactory(site, grpc_backend=per_stream)
    )
    https = TLSTerminationFactory(
        certificate[0],
        certificate[1],
        [
            Route("grpc", matchers.grpc(), grpc_factory),
            Route("web", [matchers.http1(), matchers.http2()], web),
        ],
    )
    targets = {
        "grpc": grpc_factory,
        "tls": https,
        "ssh": RelayFactory(ssh_backend),
        "web": web,
    }
    if stamps is not None:
        targets = {name: stamps.stamping(name, f) for name, f in targets.items()}
    routes = [
        Route("grpc", matchers.grpc(), targets["grpc"]),
        Route("tls", matchers.tls(), targets["tls"]),
        Route("ssh", matchers.ssh(), targets["ssh"]),
        Route("web", [matchers.http1(), matchers.http2()], targets["web"]),
    ]
    if per_stream is not None:
        routes = routes[1:]
    switch_class = ProtocolSwitchingFactory if stamps is None else stamps.switch_class()
    return switch_class(routes, sniff_timeout=sniff_timeout)


def run_twisted(
    scenario: str, mode: str, backend: int | None, sniff_timeout: float | None
) -> None:
    """One reactor serving ``scenario`` in ``mode`` until stdin ends."""
    from twisted.internet import reactor as _reactor
    from twisted.internet import ssl, stdio
    from twisted.protocols.basic import LineReceiver

    reactor: Any = _reactor
    _start_logging()
    directory = tempfile.mkdtemp(prefix="txcmux-bench-")
    certificate = make_certificate(directory)
    site = _quiet_site()
    switch: Any = None
    stamps: _Stamps | None = None
    services: list[Any] = []
    if mode == "direct":
        if scenario == "https":
            from twisted.internet.ssl import PrivateCertificate

            pem = Path(certificate[0]).read_bytes() + Path(certificate[1]).read_bytes()
            private = PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]
            options = ssl.CertificateOptions(
                privateKey=private.privateKey.original,
                certificate=private.original,
                acceptableProtocols=[b"h2", b"http/1.1"],
            )
            port = reactor.listenSSL(
                0, site, options, interface="127.0.0.1", backlog=BACKLOG
            )
        elif scenario == "h2c":
            from txcmux.web import WebFactory

            port = reactor.listenTCP(
                0, WebFactory(site), interface="127.0.0.1", backlog=BACKLOG
            )
        else:
            port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=BACKLOG)
    else:
        grpc_factory: Any
        if mode == "mux-inprocess":
            from benchmarks.grpc_service import OPTIONS, add_to
            from txcmux.grpcserver import GrpcServer

            grpc_server = GrpcServer([add_to], max_workers=16, options=OPTIONS)
            grpc_server.startService()
            services.append(grpc_server)
            grpc_factory = grpc_server.factory()
        elif scenario == "grpc" and backend is not None:
            from txcmux.relay import RelayFactory

            grpc_factory = RelayFactory(f"tcp:host=127.0.0.1:port={backend}")
        else:
            from txcmux.relay import RelayFactory

            grpc_factory = RelayFactory(UNUSED_BACKEND)
        ssh_backend = UNUSED_BACKEND
        if scenario == "relay" and backend is not None:
            ssh_backend = f"tcp:host=127.0.0.1:port={backend}"
        if scenario == "handoff":
            stamps = _Stamps()
        per_stream = None
        if mode == "mux-per-stream":
            per_stream = UNUSED_BACKEND
            if scenario == "grpc" and backend is not None:
                per_stream = f"tcp:host=127.0.0.1:port={backend}"
        switch = build_mux(
            site, certificate, grpc_factory, ssh_backend, sniff_timeout, stamps,
            per_stream,
        )  # fmt: skip
        port = reactor.listenTCP(0, switch, interface="127.0.0.1", backlog=BACKLOG)

    def stats() -> dict[str, Any]:
        answer: dict[str, Any] = {"rss_kib": rss_kib()}
        if switch is not None:
            answer["switch"] = dict(switch.stats)
        if stamps is not None:
            answer["decided_ns"] = stamps.decided
            answer["delivered_ns"] = stamps.delivered
        return answer

    class Control(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.sendLine(  # type: ignore[no-untyped-call]
                json.dumps({"port": port.getHost().port, "pid": os.getpid()}).encode()
            )

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"stats":
                self.sendLine(  # type: ignore[no-untyped-call]
                    json.dumps(stats()).encode()
                )

        def connectionLost(self, reason: Any = None) -> None:
            for service in services:
                service.stopService()
            reactor.callLater(0.2, reactor.stop)

    stdio.StandardIO(Control())  # type: ignore[no-untyped-call]
    reactor.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(MODES))
    parser.add_argument("mode")
    parser.add_argument("--backend", type=int, help="the backend's port")
    parser.add_argument("--workers", type=int, default=16, help="grpcio threads")
    parser.add_argument(
        "--sniff-timeout",
        type=float,
        default=5.0,
        help="the switch's sniff_timeout; 0: none (the memory scenario needs minutes)",
    )
    args = parser.parse_args(argv)
    if args.mode not in MODES[args.scenario]:
        parser.error(f"{args.scenario} has modes {', '.join(MODES[args.scenario])}")
    raise_file_limit()
    if args.scenario == "grpc" and args.mode == "direct":
        run_grpc_direct(args.workers)
    elif args.scenario == "relay" and args.mode == "sink":
        run_sink()
    else:
        timeout = args.sniff_timeout if args.sniff_timeout > 0 else None
        run_twisted(args.scenario, args.mode, args.backend, timeout)


if __name__ == "__main__":
    main()
