"""gRPC through txcmux: in-process GrpcServer and external backends, real clients.

grpcio clients run in threads (deferToThread); h2load and curl run as
subprocesses; everything listens on 127.0.0.1 on free ports.
"""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.wire import Echo
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.server import Request

import txcmux._errors
from txcmux import (
    ConfigurationError,
    ProtocolSwitchingFactory,
    Route,
    TxcmuxError,
    matchers,
)
from txcmux.grpcserver import GrpcServer, GrpcServerError, client_address
from txcmux.matchers import EMPTY_SETTINGS, PREFACE
from txcmux.relay import RelayFactory, RelayProtocol

from .captures import SETTINGS_ACK
from .grpc_support import service
from .grpc_support.net import RawClient, listen, tool, wait_until
from .grpc_support.service import MESSAGE_OPTIONS, MIB, Stub
from .grpc_support.strict_h2 import StrictGrpcFactory
from .logs import captured_logs

T = TypeVar("T")
SERVICE_SCRIPT = Path(service.__file__)


def channel(port: IListeningPort | int) -> grpc.Channel:
    """A grpcio channel with its own connection (no subchannel sharing)."""
    number = port if isinstance(port, int) else port.getHost().port  # type: ignore[attr-defined]
    return grpc.insecure_channel(
        f"127.0.0.1:{number}",
        options=[*MESSAGE_OPTIONS, ("grpc.use_local_subchannel_pool", 1)],
    )


def in_thread(function: Callable[[], T]) -> defer.Deferred[T]:
    """Run a blocking grpcio client function off the reactor thread."""
    return threads.deferToThread(function)


GOAWAY = 0x7


def frame_types(data: bytes) -> list[int]:
    """The types of the complete HTTP/2 frames in a server's byte stream."""
    types, position = [], 0
    while len(data) - position >= 9:
        length = int.from_bytes(data[position : position + 3], "big")
        types.append(data[position + 3])
        position += 9 + length
    return types


def server_connections(port: IListeningPort) -> list[object]:
    """The accepted connections of ``port`` the reactor still watches."""
    selectables = [*reactor.getReaders(), *reactor.getWriters()]  # type: ignore[attr-defined]
    return [s for s in selectables if getattr(s, "server", None) is port]


class GrpcTests(unittest.TestCase):
    timeout = 60

    async def serve(
        self, *extra: Route, max_workers: int = 16
    ) -> tuple[GrpcServer, RelayFactory, ProtocolSwitchingFactory, IListeningPort]:
        """A mux whose first route is gRPC to an in-process GrpcServer."""
        grpc_server = GrpcServer(
            [service.add_to], max_workers=max_workers, options=MESSAGE_OPTIONS, grace=1
        )
        grpc_server.startService()
        relay = grpc_server.factory(name="grpc")
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay), *extra])
        port = await listen(self, mux)
        self.addCleanup(
            lambda: defer.ensureDeferred(self.drain(port, relay, grpc_server))
        )
        return grpc_server, relay, mux, port

    async def drain(
        self, port: IListeningPort, relay: RelayFactory, grpc_server: GrpcServer | None
    ) -> None:
        """Stop the backend and wait until every connection is closed."""
        if grpc_server is not None and grpc_server.running:
            await grpc_server.stopService()
        await wait_until(lambda: relay.active == 0, what="relayed connections")
        await wait_until(lambda: not server_connections(port), what="connections")

    def record_relays(self, relay: RelayFactory) -> list[RelayProtocol]:
        """Keep every RelayProtocol ``relay`` builds."""
        built: list[RelayProtocol] = []
        build = relay.buildProtocol

        def recording(addr: Any) -> RelayProtocol:
            protocol = build(addr)
            built.append(protocol)
            return protocol

        relay.buildProtocol = recording  # type: ignore[method-assign]
        return built

    # -- the four kinds of call ------------------------------------------------

    async def test_unary_and_streaming_calls(self) -> None:
        _, relay, mux, port = await self.serve()

        def calls() -> list[Any]:
            with channel(port) as chan:
                stub = Stub(chan)
                return [
                    stub.unary(b"ping", timeout=10),
                    list(stub.server_stream(b"5 3", timeout=10)),
                    stub.client_stream(iter([b"ab", b"cde", b""]), timeout=10),
                    list(stub.bidi(iter([b"x", b"yy", b"zzz"]), timeout=10)),
                ]

        unary, streamed, counted, echoed = await in_thread(calls)
        self.assertEqual(unary, b"ping")
        self.assertEqual(streamed, [b"000", b"111", b"222", b"333", b"444"])
        self.assertEqual(counted, b"3 5")
        self.assertEqual(echoed, [b"x", b"yy", b"zzz"])
        self.assertEqual(mux.stats["routed.grpc"], 1)  # one connection, four calls
        self.assertEqual(relay.stats["connected"], 1)

    async def test_four_mib_messages_both_ways(self) -> None:
        _, relay, _, port = await self.serve()
        big = bytes(range(256)) * (4 * MIB // 256)

        def calls() -> list[Any]:
            with channel(port) as chan:
                stub = Stub(chan)
                return [
                    stub.unary(big, timeout=20),
                    [len(m) for m in stub.server_stream(b"2 4194304", timeout=20)],
                    stub.client_stream(iter([big, big]), timeout=20),
                    list(stub.bidi(iter([big]), timeout=20)),
                ]

        unary, streamed, counted, echoed = await in_thread(calls)
        self.assertEqual(unary, big)
        self.assertEqual(streamed, [4 * MIB, 4 * MIB])
        self.assertEqual(counted, f"2 {8 * MIB}".encode())
        self.assertEqual(echoed, [big])
        await self.drain(port, relay, None)  # count the bytes once closed
        self.assertGreater(relay.stats["bytes_up"], 4 * 4 * MIB)
        self.assertGreater(relay.stats["bytes_down"], 4 * 4 * MIB)

    async def test_hundred_concurrent_calls_on_one_channel(self) -> None:
        _, relay, _, port = await self.serve()

        def calls() -> list[bytes]:
            with channel(port) as chan:
                stub = Stub(chan)
                futures = [
                    stub.unary.future(b"call %d" % n, timeout=20) for n in range(100)
                ]
                return [future.result() for future in futures]

        results = await in_thread(calls)
        self.assertEqual(results, [b"call %d" % n for n in range(100)])
        self.assertEqual(relay.stats["connected"], 1)

    async def test_twenty_channels_at_once(self) -> None:
        _, relay, mux, port = await self.serve()

        def calls() -> list[bytes]:
            channels = [channel(port) for _ in range(20)]
            try:
                futures = [
                    Stub(chan).unary.future(b"channel %d" % n, timeout=20)
                    for n, chan in enumerate(channels)
                ]
                return [future.result() for future in futures]
            finally:
                for chan in channels:
                    chan.close()

        results = await in_thread(calls)
        self.assertEqual(results, [b"channel %d" % n for n in range(20)])
        self.assertEqual(mux.stats["routed.grpc"], 20)
        self.assertEqual(relay.stats["connected"], 20)

    async def test_deadline_exceeded_and_cancellation(self) -> None:
        _, _, _, port = await self.serve()
        already = len(service.ENDED_EARLY)

        def calls() -> tuple[Any, Any, float]:
            with channel(port) as chan:
                stub = Stub(chan)
                started = time.monotonic()
                try:
                    stub.wait(b"", timeout=0.3)
                except grpc.RpcError as problem:
                    deadline = problem.code()  # type: ignore[attr-defined]
                waited = time.monotonic() - started
                future = stub.wait.future(b"", timeout=20)
                while len(service.ENDED_EARLY) < already + 2:  # the call is running
                    time.sleep(0.01)
                future.cancel()
                try:
                    future.result()
                except grpc.FutureCancelledError:
                    cancelled = grpc.StatusCode.CANCELLED
                return deadline, cancelled, waited

        deadline, cancelled, waited = await in_thread(calls)
        self.assertEqual(deadline, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(cancelled, grpc.StatusCode.CANCELLED)
        self.assertLess(waited, 5)
        ended = service.ENDED_EARLY[already:]
        await wait_until(lambda: all(event.is_set() for event in ended))
        self.assertEqual(len(ended), 2)  # the servicer saw both clients go

    # -- one port, three protocols ---------------------------------------------

    async def test_grpc_web_and_echo_on_one_port_at_the_same_time(self) -> None:
        curl = tool("curl")
        site = server.Site(Hello())
        _, relay, mux, port = await self.serve(
            Route("web", matchers.http1(), site),
            Route("echo", matchers.prefix(b"ECHO "), Factory.forProtocol(Echo)),
        )
        number = port.getHost().port  # type: ignore[attr-defined]
        requests: queue.Queue[bytes | None] = queue.Queue()
        streaming, go_on = threading.Event(), threading.Event()

        def bidi() -> list[bytes]:
            def messages() -> Iterator[bytes]:
                while (message := requests.get(timeout=20)) is not None:
                    yield message

            with channel(port) as chan:
                replies = Stub(chan).bidi(messages(), timeout=30)
                requests.put(b"first")
                got = [next(replies)]
                streaming.set()
                go_on.wait(20)
                requests.put(b"second")
                got.append(next(replies))
                requests.put(None)
                got.extend(replies)
                return got

        grpc_call = in_thread(bidi)
        self.addCleanup(go_on.set)  # never leave the client thread waiting
        await in_thread(lambda: streaming.wait(20))

        web = getProcessOutputAndValue(
            curl,
            ["-sS", "--max-time", "10", "--http1.1", f"http://127.0.0.1:{number}/"],
        )
        echo_client = EchoClient(b"ECHO are you there?")
        await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", number), echo_client
        )
        (body, errors, code), echoed = await defer.gatherResults(
            [web, echo_client.done]
        )
        self.assertEqual((code, errors), (0, b""))
        self.assertEqual(body, b"hello from the web route")
        self.assertEqual(echoed, b"ECHO are you there?")
        self.assertEqual(relay.active, 1)  # the gRPC stream is still open
        go_on.set()
        self.assertEqual(await grpc_call, [b"first", b"second"])
        for route in ("grpc", "web", "echo"):
            self.assertEqual(mux.stats[f"routed.{route}"], 1)

    # -- the client-address helper ---------------------------------------------

    async def test_servicer_learns_the_real_client_address(self) -> None:
        grpc_server, relay, _, port = await self.serve()
        relays = self.record_relays(relay)

        def calls() -> list[bytes]:
            replies = []
            for _ in range(2):
                with channel(port) as chan:
                    replies.append(Stub(chan).peer(b"", timeout=10))
            with grpc.insecure_channel(f"unix:{grpc_server.socket_path}") as direct:
                replies.append(Stub(direct).peer(b"", timeout=10))
            return replies

        first, second, direct = await in_thread(calls)
        clients = [f"{r.peer.host}:{r.peer.port}".encode() for r in relays]  # type: ignore[union-attr]
        self.assertEqual(len(clients), 2)
        for reply, client in zip([first, second], clients, strict=True):
            shown, _, grpc_peer = reply.partition(b"|")
            self.assertEqual(shown, client)
            self.assertTrue(
                grpc_peer.startswith(f"unix:{grpc_server.directory}/c".encode()),
                grpc_peer,
            )
        self.assertNotEqual(clients[0], clients[1])
        self.assertEqual(direct.partition(b"|")[0], b"none")  # not relayed

    async def test_grpc_over_tls_terminated_on_the_shared_port(self) -> None:
        from txcmux.tls import TLSTerminationFactory

        from .tls_support import pki

        files = pki()
        grpc_server = GrpcServer([service.add_to], options=MESSAGE_OPTIONS, grace=0)
        grpc_server.startService()
        relay = grpc_server.factory(name="grpcs")
        relays = self.record_relays(relay)
        terminate = TLSTerminationFactory(
            files.server_certificate,
            files.server_key,
            [Route("grpc", matchers.grpc(), relay)],
            alpn=["h2"],
        )
        mux = ProtocolSwitchingFactory([Route("tls", matchers.tls(), terminate)])
        port = await listen(self, mux)
        self.addCleanup(
            lambda: defer.ensureDeferred(self.drain(port, relay, grpc_server))
        )
        number = port.getHost().port  # type: ignore[attr-defined]
        credentials = grpc.ssl_channel_credentials(files.ca.read_bytes())

        def calls() -> list[Any]:
            with grpc.secure_channel(
                f"127.0.0.1:{number}",
                credentials,
                options=[("grpc.use_local_subchannel_pool", 1)],
            ) as chan:
                stub = Stub(chan)
                return [
                    stub.unary(b"secret", timeout=10),
                    list(stub.bidi(iter([b"a", b"b"]), timeout=10)),
                    stub.peer(b"", timeout=10).partition(b"|")[0],
                ]

        unary, echoed, shown = await in_thread(calls)
        self.assertEqual(unary, b"secret")
        self.assertEqual(echoed, [b"a", b"b"])
        peer = relays[0].peer
        self.assertEqual(shown, f"{peer.host}:{peer.port}".encode())  # type: ignore[union-attr]
        self.assertEqual(terminate.stats["alpn.h2"], 1)

    # -- external backends ------------------------------------------------------

    async def test_external_backends_over_tcp_and_unix(self) -> None:
        tcp_server, tcp_port = service.serve_tcp()
        self.addCleanup(lambda: tcp_server.stop(0))
        unix_backend = GrpcServer([service.add_to], options=MESSAGE_OPTIONS, grace=0)
        unix_backend.startService()
        self.addCleanup(unix_backend.stopService)
        assert unix_backend.socket_path is not None
        over_tcp = RelayFactory(f"tcp:host=127.0.0.1:port={tcp_port}", name="tcp")
        over_unix = RelayFactory(f"unix:path={unix_backend.socket_path}", name="unix")
        mux = ProtocolSwitchingFactory(
            [
                Route("grpc-tcp", matchers.grpc(), over_tcp),
                Route("plain-tcp", matchers.prefix(b"TCP"), over_tcp),
            ]
        )
        unix_mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), over_unix)])
        port = await listen(self, mux)
        unix_port = await listen(self, unix_mux)
        self.addCleanup(lambda: defer.ensureDeferred(self.drain(port, over_tcp, None)))
        self.addCleanup(
            lambda: defer.ensureDeferred(self.drain(unix_port, over_unix, None))
        )
        relays = self.record_relays(over_tcp)

        def calls() -> list[Any]:
            results = []
            for target in (port, unix_port):
                with channel(target) as chan:
                    stub = Stub(chan)
                    results.append(
                        [
                            stub.unary(b"hi", timeout=10),
                            len(list(stub.server_stream(b"3 1000", timeout=10))),
                            stub.peer(b"", timeout=10).partition(b"|")[0],
                        ]
                    )
            return results

        via_tcp, via_unix = await in_thread(calls)
        self.assertEqual(via_tcp[:2], [b"hi", 3])
        self.assertEqual(via_unix[:2], [b"hi", 3])
        # Same process, tcp backend: the helper finds the client.
        peer = relays[0].peer
        self.assertEqual(via_tcp[2], f"{peer.host}:{peer.port}".encode())  # type: ignore[union-attr]
        # A plain unix client socket has no name: nobody to look up.
        self.assertEqual(via_unix[2], b"none")

    async def test_backend_killed_mid_stream_gives_unavailable(self) -> None:
        backend = subprocess.Popen(
            [sys.executable, str(SERVICE_SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
        )

        def stop_backend() -> None:
            backend.kill()
            backend.wait(10)
            assert backend.stdout is not None
            backend.stdout.close()

        self.addCleanup(stop_backend)
        assert backend.stdout is not None
        line = await in_thread(backend.stdout.readline)
        self.assertTrue(line.startswith("PORT "), line)
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={int(line.split()[1])}")
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay)])
        port = await listen(self, mux)
        self.addCleanup(lambda: defer.ensureDeferred(self.drain(port, relay, None)))
        streaming = threading.Event()

        def stream() -> tuple[Any, int, float]:
            got = 0
            with channel(port) as chan:
                try:
                    for _ in Stub(chan).server_stream(b"1000 10 0.02", timeout=30):
                        got += 1
                        if got == 3:
                            streaming.set()
                except grpc.RpcError as problem:
                    return problem.code(), got, time.monotonic()  # type: ignore[attr-defined]
            return None, got, time.monotonic()

        call = in_thread(stream)
        await in_thread(lambda: streaming.wait(20))
        backend.kill()
        killed = time.monotonic()
        code, got, ended = await call
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        self.assertLess(got, 1000)
        self.assertLess(ended - killed, 5)
        await wait_until(lambda: relay.active == 0)
        self.assertEqual(relay.stats["connected"], 1)

    # -- load -----------------------------------------------------------------

    async def test_h2load_with_grpc_framing(self) -> None:
        _, relay, mux, port = await self.serve()
        message = b"load test message"
        handle, body = tempfile.mkstemp(suffix=".grpc")
        self.addCleanup(os.unlink, body)
        os.write(handle, b"\x00" + len(message).to_bytes(4, "big") + message)
        os.close(handle)
        number = port.getHost().port  # type: ignore[attr-defined]
        out, err, code = await getProcessOutputAndValue(
            tool("timeout"),
            [
                "30",
                tool("h2load"),
                "-n",
                "400",
                "-c",
                "4",
                "-m",
                "10",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "-d",
                body,
                f"http://127.0.0.1:{number}/{service.SERVICE}/Unary",
            ],
        )
        report = out.decode()
        self.assertEqual(code, 0, report + err.decode())
        self.assertIn("400 succeeded, 0 failed, 0 errored, 0 timeout", report)
        self.assertIn("status codes: 400 2xx", report)
        # HTTP 200 alone would not show the calls worked (gRPC errors are
        # trailers): every response carried the echoed, framed message back.
        self.assertIn(f"({400 * (5 + len(message))}) data", report)
        self.assertEqual(mux.stats["routed.grpc"], 4)
        self.assertEqual(relay.stats["backend_failed"], 0)

    # -- the detector's SETTINGS and their ACK ----------------------------------

    async def test_settings_ack_never_reaches_a_strict_backend(self) -> None:
        strict = StrictGrpcFactory()
        strict_port = await listen(self, strict)
        number = strict_port.getHost().port  # type: ignore[attr-defined]
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={number}")
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay)])
        port = await listen(self, mux)
        self.addCleanup(lambda: defer.ensureDeferred(self.drain(port, relay, None)))

        def calls() -> list[bytes]:
            replies = []
            for target in (strict_port, port):  # directly, then through txcmux
                with channel(target) as chan:
                    replies.append(Stub(chan).unary(b"strict", timeout=10))
            return replies

        self.assertEqual(await in_thread(calls), [b"strict", b"strict"])
        await wait_until(lambda: len(strict.acks) == 2)
        # One SETTINGS frame from the backend, one ACK from the client, and
        # none of the ACK the client sent for the detector's SETTINGS.
        self.assertEqual(strict.acks, [1, 1])
        self.assertEqual(strict.protocol_errors, 0)

        # h2load sends its request before any SETTINGS arrive, so the
        # detector hands over first and removes the ACK on the way through.
        message = b"\x00\x00\x00\x00\x06strict"
        handle, body = tempfile.mkstemp(suffix=".grpc")
        self.addCleanup(os.unlink, body)
        os.write(handle, message)
        os.close(handle)
        url = f"http://127.0.0.1:{port.getHost().port}/x.Y/Z"  # type: ignore[attr-defined]
        grpc_headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        load = ["-n", "20", "-c", "2", "-m", "5", *grpc_headers, "-d", body, url]
        out, err, code = await getProcessOutputAndValue(
            tool("timeout"), ["30", tool("h2load"), *load]
        )
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"20 succeeded, 0 failed, 0 errored", out, out + err)
        await wait_until(lambda: len(strict.acks) == 4)
        self.assertEqual(strict.acks, [1, 1, 1, 1])
        self.assertEqual(strict.protocol_errors, 0)

    async def test_strict_backend_does_reject_a_stray_ack(self) -> None:
        """The control for the test above: a leaked ACK is caught."""
        strict = StrictGrpcFactory()
        strict_port = await listen(self, strict)
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={strict_port.getHost().port}")  # type: ignore[attr-defined]
        port = await listen(self, relay)  # the relay alone: nothing strips
        self.addCleanup(lambda: defer.ensureDeferred(self.drain(port, relay, None)))
        client = RawClient(PREFACE + EMPTY_SETTINGS + SETTINGS_ACK + SETTINGS_ACK)
        await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(
                reactor,
                "127.0.0.1",
                port.getHost().port,  # type: ignore[attr-defined]
            ),
            client,
        )
        await client.done
        self.assertEqual(strict.protocol_errors, 1)
        self.assertIn(GOAWAY, frame_types(client.received))

    # -- GrpcServer itself -------------------------------------------------------

    async def test_server_not_running_fails_fast_and_is_counted(self) -> None:
        grpc_server = GrpcServer([service.add_to])
        relay = grpc_server.factory(name="grpc", connect_timeout=5)
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay)])
        port = await listen(self, mux)
        self.addCleanup(lambda: defer.ensureDeferred(self.drain(port, relay, None)))

        def call() -> tuple[Any, float]:
            started = time.monotonic()
            with channel(port) as chan:
                try:
                    Stub(chan).unary(b"anyone?", timeout=10)
                except grpc.RpcError as problem:
                    return problem.code(), time.monotonic() - started  # type: ignore[attr-defined]
            return None, 0.0

        with captured_logs() as lines:
            code, took = await in_thread(call)
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        self.assertLess(took, 5)
        self.assertGreaterEqual(relay.stats["backend_failed"], 1)
        failures = [line for line in lines if "failed for 127.0.0.1:" in line]
        self.assertTrue(failures, lines)
        self.assertIn("route grpc", failures[0])
        self.assertIn("not running", failures[0])

    async def test_lifecycle_private_directory(self) -> None:
        grpc_server = GrpcServer([service.add_to], grace=0)
        self.assertIsNone(grpc_server.socket_path)
        grpc_server.startService()
        directory, path = grpc_server.directory, grpc_server.socket_path
        assert directory is not None and path is not None
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        grpc_server.startService()  # a second start changes nothing
        self.assertEqual(grpc_server.socket_path, path)
        await grpc_server.stopService()
        self.assertFalse(os.path.exists(directory))
        self.assertIsNone(grpc_server.socket_path)
        self.assertFalse(grpc_server.running)

    async def test_directory_goes_even_if_the_process_ends_unstopped(self) -> None:
        program = (
            "from txcmux.grpcserver import GrpcServer\n"
            "server = GrpcServer([], grace=0)\n"
            "server.startService()\n"
            "print(server.directory)\n"
        )
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-c", program], env=dict(os.environ)
        )
        self.assertEqual(code, 0, err)
        directory = out.decode().strip()
        self.assertTrue(directory.startswith(tempfile.gettempdir()), out + err)
        self.assertFalse(os.path.exists(directory))

    async def test_failing_add_services_leaves_nothing_behind(self) -> None:
        made: list[str] = []

        def broken(server: grpc.Server) -> None:
            made.append(tempfile.gettempdir())
            raise RuntimeError("servicer setup failed")

        before = set(os.listdir(tempfile.gettempdir()))
        grpc_server = GrpcServer([broken])
        with self.assertRaises(RuntimeError):
            grpc_server.startService()
        self.assertEqual(made, [tempfile.gettempdir()])
        self.assertFalse(grpc_server.running)
        left = {
            name
            for name in set(os.listdir(tempfile.gettempdir())) - before
            if name.startswith("txcmux-grpc-")
        }
        self.assertEqual(left, set())

    def test_configuration_errors(self) -> None:
        with self.assertRaises(ConfigurationError):
            GrpcServer(["module:add_things"])  # type: ignore[list-item]
        with self.assertRaises(ConfigurationError):
            GrpcServer([service.add_to], max_workers=0)
        for key, value in [
            ("maximum_concurrent_rpcs", 0),
            ("max_workers", "16"),
            ("grace", -1),
            ("grace", "5"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                GrpcServer([service.add_to], **{key: value})  # type: ignore[arg-type]
            self.assertIn(f"GrpcServer: {key} is {value!r}", str(caught.exception))
        self.assertTrue(issubclass(GrpcServerError, Exception))
        self.assertTrue(issubclass(GrpcServerError, TxcmuxError))
        self.assertIs(GrpcServerError, txcmux._errors.GrpcServerError)

    def test_client_address_outside_a_relay_is_none(self) -> None:
        class Context:
            def peer(self) -> str:
                return "ipv4:198.51.100.1:1234"

        self.assertIsNone(client_address(Context()))


class Hello(resource.Resource):
    """The web route's only page."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"hello from the web route"


class EchoClient(Protocol):
    """Sends one line to the echo route and waits for it to come back."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.message):
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)
