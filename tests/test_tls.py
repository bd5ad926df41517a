"""TLS termination and SNI pass-through on one real port, with real clients.

One listener on 127.0.0.1 serves, at the same time: plaintext HTTP/1.1, HTTPS
(HTTP/1.1 and HTTP/2 by ALPN, certificates chosen by SNI), gRPC over TLS
relayed to a grpcio server, SNI pass-through to a TLS backend that keeps its
own certificate, and two routes that ask for client certificates.  Clients:
curl, openssl s_client, grpcio, Python's ssl module, and a Twisted client
that writes its ClientHello one byte per reactor turn.

Construction errors and the handshake gate's bookkeeping are tested without
sockets at the end.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import ssl
from collections.abc import Callable, Coroutine
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, task, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import implementer

from txcmux import ConfigurationError, ProtocolSwitchingFactory, Route, matchers
from txcmux.grpcserver import GrpcServer
from txcmux.matchers import FunctionMatcher, Verdict
from txcmux.relay import RelayFactory
from txcmux.tls import (
    TLSTerminationFactory,
    peer_certificate,
    protocols_for_routes,
    server_name,
)
from txcmux.web import WebFactory

from .captures import capture
from .grpc_support.net import RawClient, wait_until
from .tls_support import pki

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


# -- what runs behind TLS ------------------------------------------------------


class WhoAmI(resource.Resource):
    """Answers with what a twisted.web resource can learn about its request."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        client = peer_certificate(request)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "version": request.clientproto.decode(),
                "secure": request.isSecure(),
                "server_name": server_name(request),
                "client": client.subject.rfc4514_string() if client else None,
            }
        ).encode()


class Info(protocol.Protocol):
    """A raw protocol behind TLS: reports what its transport tells it."""

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        negotiated = transport.negotiatedProtocol
        client = peer_certificate(transport)
        x509_peer = transport.getPeerCertificate()
        report = {
            "got": data.decode(),
            "alpn": negotiated.decode() if negotiated else None,
            "ssl_transport": ISSLTransport.providedBy(transport),
            "server_name": server_name(transport),
            "client": client.subject.rfc4514_string() if client else None,
            "x509_client": (
                x509_peer.to_cryptography().subject.rfc4514_string()
                if x509_peer
                else None
            ),
        }
        transport.write(json.dumps(report).encode())
        transport.loseConnection()


class HalfClose(protocol.Protocol):
    """Answers ``bye``, half-closes, and keeps what the client sends after."""

    def __init__(self, after: list[bytes]) -> None:
        self.after = after
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        if self.answered:
            self.after.append(data)
            return
        self.answered = True
        transport.write(b"bye")
        transport.loseWriteConnection()


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@implementer(IOpenSSLServerConnectionCreator)
class BackendTLS:
    """A plain pyOpenSSL server setup for the pass-through backend.

    It keeps its own certificate (``pass.example``) and speaks ALPN ``h2``
    itself, so a client reaching it through the relay sees both.
    """

    def __init__(self, certificate: Path, key: Path) -> None:
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate_chain_file(str(certificate))
        self.context.use_privatekey_file(str(key))
        self.context.set_alpn_select_callback(
            lambda connection, offered: (
                b"h2" if b"h2" in offered else SSL.NO_OVERLAPPING_PROTOCOLS
            )
        )

    def serverConnectionForTLS(self, tls: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


def _start_grpc_server() -> tuple[grpc.Server, int]:
    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"echo:" + request

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
            ),
        )
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    return grpc_server, port


class Server:
    """The one port under test, its routes, and the backends behind them."""

    def __init__(self, case: unittest.TestCase) -> None:
        files = self.files = pki()
        self.site = server.Site(WhoAmI())
        backend = reactor.listenSSL(  # type: ignore[attr-defined]
            0,
            protocol.Factory.forProtocol(Echo),
            BackendTLS(files.pass_certificate, files.pass_key),
            interface="127.0.0.1",
        )
        case.addCleanup(backend.stopListening)
        grpc_server, grpc_port = _start_grpc_server()
        case.addCleanup(grpc_server.stop, None)
        self.after_half_close: list[bytes] = []
        self.tls = TLSTerminationFactory(
            files.server_certificate,
            files.server_key,
            [
                Route(
                    "half",
                    matchers.prefix(b"HALF"),
                    protocol.Factory.forProtocol(
                        lambda: HalfClose(self.after_half_close)  # type: ignore[arg-type]
                    ),
                ),
                Route(
                    "info", matchers.prefix(b"INFO"), protocol.Factory.forProtocol(Info)
                ),
                Route(
                    "grpc",
                    matchers.grpc(),
                    RelayFactory(f"tcp:host=127.0.0.1:port={grpc_port}"),
                ),
                Route("web", [matchers.http1(), matchers.http2()], self.site),
            ],
            sni={
                "a.example": (files.a_certificate, files.a_key),
                "*.wild.example": (files.wild_certificate, files.wild_key),
            },
        )
        web_only = [
            Route("info", matchers.prefix(b"INFO"), protocol.Factory.forProtocol(Info)),
            Route("web", [matchers.http1(), matchers.http2()], self.site),
        ]
        self.mtls = TLSTerminationFactory(
            files.server_certificate,
            files.server_key,
            web_only,
            client_ca=files.ca,
            client_certificates="required",
        )
        self.optional = TLSTerminationFactory(
            files.server_certificate,
            files.server_key,
            web_only,
            client_ca=files.ca,
            client_certificates="optional",
        )
        self.passthrough = RelayFactory(
            f"tcp:host=127.0.0.1:port={backend.getHost().port}"
        )
        self.mux = ProtocolSwitchingFactory(
            [
                Route("pass", matchers.tls(sni="pass.example"), self.passthrough),
                Route("mtls", matchers.tls(sni="mtls.example"), self.mtls),
                Route("optional", matchers.tls(sni="opt.example"), self.optional),
                Route("tls", matchers.tls(), self.tls),
                Route("web", matchers.http1(), self.site),
            ]
        )
        self._case = case
        self._ports: set[int] = set()
        self.port = self.listen(self.mux)
        case.addCleanup(
            lambda: defer.ensureDeferred(
                wait_until(lambda: not self._open(), what="server connections closed")
            )
        )

    def listen(self, factory: protocol.Factory) -> int:
        """Listen on 127.0.0.1 with ``factory``; the port number."""
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self._case.addCleanup(port.stopListening)
        number: int = port.getHost().port
        self._ports.add(number)
        return number

    def _open(self) -> list[object]:
        """Our server-side connections still open (the clients may be gone)."""
        selectables = reactor.getReaders() + reactor.getWriters()  # type: ignore[attr-defined]
        return [
            s
            for s in selectables
            if isinstance(s, tcp.Server) and s.getHost().port in self._ports
        ]


# -- clients -------------------------------------------------------------------


async def run(*argv: str) -> tuple[str, str, int]:
    out, err, code = await getProcessOutputAndValue(argv[0], argv[1:])
    return out.decode(), err.decode(), code


async def curl(
    port: int, host: str, *options: str, scheme: str = "https"
) -> tuple[dict[str, Any] | None, str, int]:
    """GET /whoami with curl; the JSON body, the HTTP version used, exit code."""
    assert CURL is not None
    out, err, code = await run(
        CURL,
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        f"{host}:{port}:127.0.0.1",
        "--cacert",
        str(pki().ca),
        "-w",
        "\n%{http_version}",
        *options,
        f"{scheme}://{host}:{port}/whoami",
    )
    if code != 0:
        return None, err, code
    body, _, version = out.rpartition("\n")
    return json.loads(body), version, code


async def s_client(port: int, *options: str) -> str:
    """openssl s_client's report of one handshake (stdin empty: it then quits)."""
    assert OPENSSL is not None
    out, err, _ = await run(
        "/bin/sh",
        "-c",
        f'exec "$0" s_client -connect 127.0.0.1:{port} "$@" </dev/null',
        OPENSSL,
        "-CAfile",
        str(pki().ca),
        *options,
    )
    return out + err


def tls_exchange(
    port: int,
    hostname: str,
    payload: bytes,
    *,
    alpn: list[str] | None = None,
    client: tuple[Path, Path] | None = None,
) -> tuple[dict[str, Any], str | None, bytes]:
    """Blocking: connect, handshake, send, read to EOF (run it in a thread)."""
    context = ssl.create_default_context(cafile=str(pki().ca))
    if alpn:
        context.set_alpn_protocols(alpn)
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        tls.sendall(payload)
        received = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            received += chunk
            if payload == received:  # an echo: enough
                break
        return tls.getpeercert() or {}, tls.selected_alpn_protocol(), received


def subject_cn(peer: dict[str, Any]) -> str:
    return next(
        value for rdn in peer["subject"] for key, value in rdn if key == "commonName"
    )


class TrickleTLSClient(protocol.Protocol):
    """A TLS client that writes its ClientHello one byte per reactor turn."""

    def __init__(self, hostname: str, request: bytes, alpn: list[str]) -> None:
        context = ssl.create_default_context(cafile=str(pki().ca))
        context.set_alpn_protocols(alpn)
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=hostname
        )
        self._request = request
        self._handshaken = False
        self.hello_size = 0
        self.error: ssl.SSLError | None = None
        self.peer: dict[str, Any] = {}
        self.received = b""
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self._handshake()
        hello = self._outgoing.read()
        self.hello_size = len(hello)
        self._trickle(hello)

    def _trickle(self, rest: bytes) -> None:
        if rest and self.transport is not None:
            self.transport.write(rest[:1])
            reactor.callLater(0, self._trickle, rest[1:])  # type: ignore[attr-defined]

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as error:
            self.error = error
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self._handshaken = True
        self.peer = self._tls.getpeercert() or {}
        self.alpn = self._tls.selected_alpn_protocol()
        self._tls.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self._incoming.write(data)
        if not self._handshaken:
            self._handshake()
        if self._handshaken:
            try:
                while chunk := self._tls.read(65536):
                    self.received += chunk
                # read() gives b"" once the server's close_notify is in
                self.transport.loseConnection()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.transport.loseConnection()
        pending = self._outgoing.read()
        if pending:
            self.transport.write(pending)
        if self.received == self._request:  # the echo backend answered
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


async def raw_exchange(port: int, payload: bytes, close: bool = False) -> RawClient:
    """Send ``payload`` (then close, if asked) and wait for the connection to end."""
    client = RawClient(payload, close)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, client)
    await client.done
    return client


class LogLines:
    """The text of every txcmux log event while installed."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "txcmux":
            self.lines.append(formatEvent(event))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def _requires(tool: str | None, name: str) -> None:
    if tool is None:
        raise unittest.SkipTest(f"{name} is not installed")


# -- the tests on one port -----------------------------------------------------


def as_deferred(
    method: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., defer.Deferred[None]]:
    """Let trial run an ``async def`` test method (it waits on the Deferred)."""

    @functools.wraps(method)
    def run_it(*args: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(method(*args))

    return run_it


class OnePortTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = Server(self)

    @as_deferred
    async def test_curl_http2_and_http1_over_tls_and_plaintext(self) -> None:
        _requires(CURL, "curl")
        port = self.server.port
        h2, h1, plain = await defer.gatherResults(
            [
                defer.ensureDeferred(curl(port, "localhost", "--http2")),
                defer.ensureDeferred(curl(port, "localhost", "--http1.1")),
                defer.ensureDeferred(curl(port, "localhost", scheme="http")),
            ]
        )
        assert h2[0] is not None and h1[0] is not None and plain[0] is not None, (
            h2,
            h1,
            plain,
        )
        self.assertEqual(h2[1], "2")
        self.assertEqual(
            h2[0],
            {
                "version": "HTTP/2",
                "secure": True,
                "server_name": "localhost",
                "client": None,
            },
        )
        self.assertEqual(h1[1], "1.1")
        self.assertEqual(
            h1[0],
            {
                "version": "HTTP/1.1",
                "secure": True,
                "server_name": "localhost",
                "client": None,
            },
        )
        self.assertEqual(plain[1], "1.1")
        self.assertEqual(
            plain[0],
            {
                "version": "HTTP/1.1",
                "secure": False,
                "server_name": None,
                "client": None,
            },
        )
        stats = self.server.mux.stats
        self.assertEqual((stats["routed.tls"], stats["routed.web"]), (2, 1))
        self.assertEqual(self.server.tls.stats["alpn.h2"], 1)
        self.assertEqual(self.server.tls.stats["alpn.http/1.1"], 1)

    @as_deferred
    async def test_sni_selects_certificate_and_alpn_is_negotiated(self) -> None:
        _requires(OPENSSL, "openssl")
        port = self.server.port
        reports = await defer.gatherResults(
            [
                defer.ensureDeferred(s_client(port, "-servername", name, "-alpn", alpn))
                for name, alpn in (
                    ("a.example", "h2"),
                    ("x.wild.example", "http/1.1"),
                    ("localhost", "h2,http/1.1"),
                    ("nobody.example", "spdy/3,http/1.1"),
                )
            ]
        )
        expected = [
            ("CN = a.example", "ALPN protocol: h2"),
            ("CN = *.wild.example", "ALPN protocol: http/1.1"),
            ("CN = localhost", "ALPN protocol: h2"),
            ("CN = localhost", "ALPN protocol: http/1.1"),
        ]
        for report, (subject, alpn) in zip(reports, expected, strict=True):
            self.assertIn(f"subject=O = txcmux tests, {subject}", report)
            self.assertIn(alpn, report)
            # the chain (leaf + intermediate) was sent: it verifies to the root
            self.assertIn("Verify return code: 0 (ok)", report)
        self.assertEqual(self.server.tls.stats["handshakes"], 4)

    @as_deferred
    async def test_client_offering_no_known_alpn_still_connects(self) -> None:
        port = self.server.port
        peer, chosen, body = await deferToThread(
            tls_exchange, port, "localhost", b"INFO please", alpn=["x-unknown"]
        )
        self.assertIsNone(chosen)
        self.assertEqual(subject_cn(peer), "localhost")
        report = json.loads(body)
        self.assertEqual(report["alpn"], None)
        self.assertEqual(report["got"], "INFO please")
        self.assertEqual(self.server.tls.stats["alpn.none"], 1)

    @as_deferred
    async def test_raw_handler_sees_tls_transport(self) -> None:
        port = self.server.port
        _, chosen, body = await deferToThread(
            tls_exchange, port, "a.example", b"INFO", alpn=["http/1.1"]
        )
        self.assertEqual(chosen, "http/1.1")
        self.assertEqual(
            json.loads(body),
            {
                "got": "INFO",
                "alpn": "http/1.1",
                "ssl_transport": True,
                "server_name": "a.example",
                "client": None,
                "x509_client": None,
            },
        )
        # Counted: what the client sent, encrypted (its ClientHello and the
        # rest), and what the handler wrote, before encryption.
        stats = self.server.tls.stats
        self.assertGreater(stats["bytes_in"], 200)
        self.assertEqual(stats["bytes_out"], len(body))

    @as_deferred
    async def test_grpc_over_tls(self) -> None:
        port = self.server.port
        ca = pki().ca.read_bytes()

        def call() -> bytes:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                method = channel.unary_unary("/test.Echo/Say")
                answer: bytes = method(b"over tls", timeout=10)
                return answer

        answers = await defer.gatherResults([deferToThread(call) for _ in range(3)])
        self.assertEqual(answers, [b"echo:over tls"] * 3)
        inner = self.server.tls.inner
        assert isinstance(inner, ProtocolSwitchingFactory)
        self.assertGreaterEqual(inner.stats["routed.grpc"], 1)
        self.assertEqual(inner.stats["routed.web"], 0)
        self.assertGreaterEqual(self.server.tls.stats["alpn.h2"], 1)

    @as_deferred
    async def test_sni_pass_through_keeps_backend_certificate(self) -> None:
        port = self.server.port
        peer, _, echoed = await deferToThread(
            tls_exchange, port, "pass.example", b"through the relay"
        )
        self.assertEqual(subject_cn(peer), "pass.example")
        self.assertEqual(echoed, b"through the relay")
        self.assertEqual(self.server.mux.stats["routed.pass"], 1)
        self.assertEqual(self.server.tls.stats["handshakes"], 0)

    @as_deferred
    async def test_one_byte_client_hello_routes_by_sni(self) -> None:
        port = self.server.port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        passing = TrickleTLSClient("pass.example", b"one byte at a time", ["h2"])
        terminated = TrickleTLSClient(
            "a.example",
            b"GET /whoami HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            ["http/1.1"],
        )
        for client in (passing, terminated):
            await connectProtocol(endpoint, client)
        await defer.gatherResults([passing.done, terminated.done])
        self.assertIsNone(passing.error)
        self.assertIsNone(terminated.error)
        self.assertGreater(passing.hello_size, 200)
        self.assertEqual(passing.alpn, "h2")  # chosen by the backend
        self.assertEqual(terminated.alpn, "http/1.1")
        self.assertEqual(subject_cn(passing.peer), "pass.example")
        self.assertEqual(passing.received, b"one byte at a time")
        self.assertEqual(subject_cn(terminated.peer), "a.example")
        head, _, body = terminated.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(json.loads(body)["server_name"], "a.example")
        self.assertEqual(self.server.mux.stats["routed.pass"], 1)
        self.assertEqual(self.server.mux.stats["routed.tls"], 1)

    @as_deferred
    async def test_everything_at_once(self) -> None:
        _requires(CURL, "curl")
        _requires(OPENSSL, "openssl")
        port = self.server.port
        ca = pki().ca.read_bytes()

        def grpc_call() -> bytes:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                answer: bytes = channel.unary_unary("/test.Echo/Say")(b"x", timeout=10)
                return answer

        results = await defer.gatherResults(
            [
                defer.ensureDeferred(curl(port, "localhost", "--http2")),
                defer.ensureDeferred(curl(port, "localhost", "--http1.1")),
                defer.ensureDeferred(curl(port, "localhost", scheme="http")),
                defer.ensureDeferred(
                    s_client(port, "-servername", "a.example", "-alpn", "h2")
                ),
                deferToThread(grpc_call),
                deferToThread(tls_exchange, port, "pass.example", b"pass"),
            ]
        )
        h2, h1, plain, report, answer, passed = results
        self.assertEqual((h2[1], h1[1], plain[1]), ("2", "1.1", "1.1"))
        self.assertIn("CN = a.example", report)
        self.assertIn("ALPN protocol: h2", report)
        self.assertEqual(answer, b"echo:x")
        self.assertEqual(passed[2], b"pass")
        self.assertEqual(
            {
                key: value
                for key, value in self.server.mux.stats.items()
                if key.startswith("routed.")
            },
            {"routed.tls": 4, "routed.web": 1, "routed.pass": 1},
        )

    @as_deferred
    async def test_half_close_sends_close_notify_and_keeps_reading(self) -> None:
        port = self.server.port

        def exchange() -> tuple[bytes, bytes]:
            context = ssl.create_default_context(cafile=str(pki().ca))
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(
                    raw, server_hostname="localhost", suppress_ragged_eofs=False
                ) as tls,
            ):
                tls.sendall(b"HALF")
                received = b""
                while chunk := tls.recv(100):  # an unclean end would raise
                    received += chunk
                end = tls.recv(100)
                tls.sendall(b"after the server's close_notify")
                tls.unwrap()
                return received, end

        received, end = await deferToThread(exchange)
        self.assertEqual((received, end), (b"bye", b""))
        await wait_until(lambda: bool(self.server.after_half_close), what="data after")
        self.assertEqual(
            self.server.after_half_close, [b"after the server's close_notify"]
        )

    @as_deferred
    async def test_helpers_work_on_twisted_tls_ports(self) -> None:
        files = self.server.files
        plain_tls = reactor.listenSSL(  # type: ignore[attr-defined]
            0,
            protocol.Factory.forProtocol(Info),
            BackendTLS(files.a_certificate, files.a_key),
            interface="127.0.0.1",
        )
        self.addCleanup(plain_tls.stopListening)
        _, _, body = await deferToThread(
            tls_exchange, plain_tls.getHost().port, "a.example", b"INFO"
        )
        report = json.loads(body)
        self.assertEqual(report["server_name"], "a.example")
        self.assertTrue(report["ssl_transport"])

    # -- client certificates -----------------------------------------------

    @as_deferred
    async def test_required_client_certificate(self) -> None:
        _requires(CURL, "curl")
        files = self.server.files
        logs = LogLines(self)
        port = self.server.port
        refused = await curl(port, "mtls.example")
        self.assertIsNone(refused[0])
        self.assertNotEqual(refused[2], 0)
        accepted = await curl(
            port,
            "mtls.example",
            "--cert",
            str(files.client_certificate),
            "--key",
            str(files.client_key),
        )
        self.assertEqual(
            accepted[0],
            {
                "version": "HTTP/2",
                "secure": True,
                "server_name": "mtls.example",
                "client": "CN=client-one,O=txcmux tests",
            },
        )
        await wait_until(
            lambda: self.server.mtls.stats["closed.handshake_failed"] == 1,
            what="the refused handshake is counted",
        )
        self.assertEqual(self.server.mtls.stats["handshakes"], 1)
        failures = logs.matching("TLS handshake failed")
        self.assertEqual(len(failures), 1, logs.lines)
        self.assertIn("certificate", failures[0])

    @as_deferred
    async def test_optional_client_certificate(self) -> None:
        files = self.server.files
        port = self.server.port
        _, _, without = await deferToThread(tls_exchange, port, "opt.example", b"INFO")
        _, _, with_one = await deferToThread(
            tls_exchange,
            port,
            "opt.example",
            b"INFO",
            client=(files.client_certificate, files.client_key),
        )
        self.assertEqual(json.loads(without)["client"], None)
        report = json.loads(with_one)
        self.assertEqual(report["client"], "CN=client-one,O=txcmux tests")
        self.assertEqual(report["x509_client"], "CN=client-one,O=txcmux tests")

    # -- bad clients -------------------------------------------------------

    @as_deferred
    async def test_plaintext_to_tls_route_is_logged_and_closed(self) -> None:
        logs = LogLines(self)
        tls_only = ProtocolSwitchingFactory(
            [Route("tls", matchers.any(), self.server.tls)]
        )
        client = await raw_exchange(
            self.server.listen(tls_only), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(client.received, b"")
        await wait_until(
            lambda: self.server.tls.stats["closed.not_tls"] == 1, what="counted"
        )
        lines = logs.matching("did not send a TLS ClientHello")
        self.assertEqual(len(lines), 1, logs.lines)
        self.assertIn("GET / ", lines[0])
        self.assertEqual(self.server.tls.stats["handshakes"], 0)

    @as_deferred
    async def test_broken_handshake_is_logged_and_closed(self) -> None:
        logs = LogLines(self)
        client_hello = capture("curl-tls-clienthello.bin")
        # a real ClientHello, then application data before any handshake
        client = await raw_exchange(
            self.server.port, client_hello + b"\x17\x03\x03\x00\x05hello"
        )
        self.assertTrue(client.received.startswith(b"\x16\x03\x03"))  # ServerHello
        await wait_until(
            lambda: self.server.tls.stats["closed.handshake_failed"] == 1,
            what="counted",
        )
        self.assertEqual(len(logs.matching("TLS handshake failed")), 1, logs.lines)

    @as_deferred
    async def test_client_leaving_mid_handshake_is_counted(self) -> None:
        logs = LogLines(self)
        tls_only = ProtocolSwitchingFactory(
            [Route("tls", matchers.any(), self.server.tls)]
        )
        half_a_hello = capture("curl-tls-clienthello.bin")[:100]
        client = await raw_exchange(
            self.server.listen(tls_only), half_a_hello, close=True
        )
        self.assertEqual(client.received, b"")
        await wait_until(
            lambda: self.server.tls.stats["closed.peer"] == 1, what="counted"
        )
        self.assertEqual(len(logs.matching("left during the TLS handshake")), 1)


# -- without sockets -----------------------------------------------------------


def _factory(**options: Any) -> TLSTerminationFactory:
    files = pki()
    inner = options.pop(
        "routes", [Route("web", matchers.http1(), server.Site(WhoAmI()))]
    )
    return TLSTerminationFactory(
        options.pop("certificate", files.server_certificate),
        options.pop("key", files.server_key),
        inner,
        **options,
    )


class GateTests(unittest.TestCase):
    def test_handshake_timeout(self) -> None:
        clock = task.Clock()
        logs = LogLines(self)
        factory = _factory(clock=clock, handshake_timeout=3)
        tls = factory.buildProtocol(None)
        transport = StringTransport()
        tls.makeConnection(transport)
        tls.dataReceived(capture("curl-tls-clienthello.bin")[:100])
        clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        tls.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(factory.stats["closed.handshake_timeout"], 1)
        # Nothing else was counted but the 100 bytes the client sent.
        self.assertEqual(
            +factory.stats, {"closed.handshake_timeout": 1, "bytes_in": 100}
        )
        self.assertEqual(len(logs.matching("no TLS handshake after 3")), 1)

    def test_doStart_and_doStop_reach_the_inner_factories(self) -> None:
        site = server.Site(WhoAmI())
        factory = _factory(routes=[Route("web", matchers.http1(), site)])
        self.assertEqual(site.numPorts, 0)
        factory.doStart()
        self.assertEqual(site.numPorts, 1)
        factory.doStop()
        self.assertEqual(site.numPorts, 0)

    def test_inner_factory_used_directly(self) -> None:
        site = server.Site(WhoAmI())
        factory = _factory(routes=site)
        self.assertIs(factory.inner, site)
        self.assertEqual(factory.alpn, ("h2", "http/1.1"))


# -- ALPN defaults -------------------------------------------------------------


def _route(name: str, matcher: Any, factory: Any = None) -> Route:
    return Route(name, matcher, factory or protocol.Factory.forProtocol(Echo))


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([_route("g", matchers.grpc())], ["h2"]),
        ([_route("w", matchers.http1())], ["http/1.1"]),
        ([_route("w", matchers.http1_fast())], ["http/1.1"]),
        (
            [
                _route("w", [matchers.http1(), matchers.http2()]),
                _route("g", matchers.grpc()),
            ],
            ["h2", "http/1.1"],
        ),
        (
            [
                _route("w", matchers.http1()),
                _route("h", matchers.http2_header("x", "y")),
            ],
            ["h2", "http/1.1"],
        ),
        ([_route("s", matchers.any(), server.Site(WhoAmI()))], ["h2", "http/1.1"]),
        ([_route("e", matchers.prefix(b"ECHO"))], []),
        # Routes whose matchers say nothing: what their factories announce.
        ([_route("w", matchers.any(), WebFactory(WhoAmI()))], ["h2", "http/1.1"]),
        (
            [_route("w", matchers.any(), WebFactory(WhoAmI(), http2=False))],
            ["http/1.1"],
        ),
        ([_route("g", matchers.any(), GrpcServer([]).factory())], ["h2"]),
        ([_route("r", matchers.any(), RelayFactory("tcp:127.0.0.1:1"))], []),
    ],
)
def test_alpn_from_routes(routes: list[Route], expected: list[str]) -> None:
    assert protocols_for_routes(routes) == expected
    assert list(_factory(routes=routes).alpn) == expected


class _NamelessMatcher:
    """A third-party matcher: a name and max_bytes, and no alpn attribute."""

    name = "http2_lookalike"  # the name alone no longer implies h2
    max_bytes = 4

    def __call__(self, data: bytes) -> Verdict:
        return matchers.prefix(b"PRI ")(data)


def test_alpn_is_what_custom_matchers_declare() -> None:
    imap = FunctionMatcher("imap", 4, matchers.prefix(b"A001"), alpn=(b"imap",))
    assert protocols_for_routes([_route("i", imap)]) == ["imap"]
    assert protocols_for_routes(
        [_route("i", imap), _route("w", matchers.http1()), _route("g", matchers.grpc())]
    ) == ["h2", "http/1.1", "imap"]
    named_like_http2 = FunctionMatcher("http2_custom", 4, matchers.prefix(b"PRI "))
    assert protocols_for_routes([_route("n", named_like_http2)]) == []
    assert protocols_for_routes([_route("t", _NamelessMatcher())]) == []
    site = server.Site(WhoAmI())
    assert protocols_for_routes([_route("t", _NamelessMatcher(), site)]) == [
        "h2",
        "http/1.1",
    ]
    assert _factory(routes=[_route("i", imap)]).alpn == ("imap",)


def test_explicit_alpn_wins() -> None:
    assert _factory(alpn=["http/1.1"]).alpn == ("http/1.1",)
    assert _factory(alpn=[]).alpn == ()
    assert _factory(alpn="h2").alpn == ("h2",)


# -- configuration errors ------------------------------------------------------


def _errors(tmp_path: Path) -> list[tuple[dict[str, Any], list[str]]]:
    pki_files = pki()
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki_files.server_key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    reversed_chain = tmp_path / "reversed.pem"
    certificates = x509.load_pem_x509_certificates(
        pki_files.server_certificate.read_bytes()
    )
    reversed_chain.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in reversed(certificates)
        )
    )
    missing = tmp_path / "missing.pem"
    return [
        ({"certificate": missing}, [str(missing), "TLS certificate", "No such file"]),
        (
            {"certificate": not_pem},
            [str(not_pem), "no PEM certificate", "BEGIN CERTIFICATE"],
        ),
        ({"key": missing}, [str(missing), "TLS key"]),
        ({"key": not_pem}, [str(not_pem), "unencrypted PEM private key"]),
        ({"key": encrypted}, [str(encrypted), "encrypted"]),
        (
            {"key": pki_files.other_key},
            [
                str(pki_files.other_key),
                str(pki_files.server_certificate),
                "does not match",
            ],
        ),
        ({"certificate": reversed_chain}, ["certificate number 2", "first"]),
        ({"client_ca": missing}, [str(missing), "client CA"]),
        ({"client_ca": not_pem}, [str(not_pem), "client CA"]),
        ({"client_certificates": "required"}, ["needs client_ca"]),
        (
            {"client_ca": pki_files.ca, "client_certificates": "sometimes"},
            ["'sometimes'", "'required' or 'optional'"],
        ),
        ({"alpn": [""]}, ["ALPN protocol ''"]),
        ({"alpn": 5}, ["alpn is 5", "expected a list"]),
        ({"alpn": [b"h2"]}, ["ALPN protocol b'h2'", "ASCII"]),
        ({"sni": ["a.example"]}, ["sni is ['a.example']", "mapping"]),
        ({"handshake_timeout": "10"}, ["handshake_timeout is '10'", "seconds"]),
        (
            {"sni": {"a.example": (pki_files.a_certificate,)}},
            ["sni['a.example']", "pair"],
        ),
        (
            {"sni": {"a.example": (pki_files.a_certificate, pki_files.server_key)}},
            ["does not match"],
        ),
        (
            {"sni": {"a.*.example": (pki_files.a_certificate, pki_files.a_key)}},
            ["a.*.example"],
        ),
        ({"handshake_timeout": 0}, ["handshake_timeout"]),
        ({"routes": 42}, ["42", "neither"]),
    ]


def test_configuration_errors(tmp_path: Path) -> None:
    for options, fragments in _errors(tmp_path):
        with pytest.raises(ConfigurationError) as raised:
            _factory(**options)
        for fragment in fragments:
            assert fragment in str(raised.value), (options, str(raised.value))


def test_certificate_and_key_in_one_file(tmp_path: Path) -> None:
    pki_files = pki()
    both = tmp_path / "both.pem"
    both.write_bytes(
        pki_files.server_key.read_bytes() + pki_files.server_certificate.read_bytes()
    )
    factory = _factory(certificate=both, key=both)
    assert factory.identity.subject == "CN=localhost,O=txcmux tests"
    assert len(factory.identity.chain) == 2


def test_expired_certificate_is_a_warning() -> None:
    pki_files = pki()
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _factory(certificate=pki_files.expired_certificate, key=pki_files.expired_key)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if e.get("log_namespace") == "txcmux"]
    assert len(warnings) == 1
    assert "expired" in warnings[0]
    assert str(pki_files.expired_certificate) in warnings[0]
    assert events[-1]["log_level"].name == "warn"


def test_server_name_of_plain_transport_is_none() -> None:
    assert server_name(StringTransport()) is None
    assert peer_certificate(StringTransport()) is None
    assert server_name(object()) is None
