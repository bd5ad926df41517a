"""Per-stream routing: gRPC streams to grpcio, the rest to the Site, on one connection.

A web route with ``grpc_backend`` looks at each HTTP/2 stream's headers:
gRPC streams are forwarded to a grpcio server, every other request is
served by the Site.  Real grpcio clients (in threads), curl and h2load run
against 127.0.0.1; tests that need REST and gRPC on exactly one connection
use the h2-library client in tests/grpc_support/h2_client.py.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from twisted.internet import defer, reactor, task, threads
from twisted.internet.interfaces import IListeningPort
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.static import Data

from txcmux import ConfigurationError, ProtocolSwitchingFactory, Route, matchers
from txcmux.grpcserver import GrpcServer
from txcmux.tls import TLSTerminationFactory
from txcmux.web import WebFactory

from .grpc_support import service
from .grpc_support.h2_client import H2Client, connect, grpc_messages
from .grpc_support.net import listen, tool, wait_until
from .grpc_support.service import MESSAGE_OPTIONS, MIB, Stub
from .tls_support import pki

T = TypeVar("T")
H2_WINDOW = 65535


def in_thread(function: Callable[[], T]) -> defer.Deferred[T]:
    return threads.deferToThread(function)


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[*MESSAGE_OPTIONS, ("grpc.use_local_subchannel_pool", 1)],
    )


def site() -> server.Site:
    root = resource.Resource()
    root.putChild(b"hello", Data(b"hello from the Site\n", "text/plain"))
    root.putChild(b"big", Data(b"b" * (3 * MIB), "application/octet-stream"))
    return server.Site(root)


class PerStreamTests(unittest.TestCase):
    timeout = 60

    async def serve(
        self, backend: object = None, *, tls: bool = False
    ) -> tuple[WebFactory, int, GrpcServer | None]:
        """A port whose one route is web, its gRPC streams to ``backend``.

        The default backend is an in-process GrpcServer with the test service.
        """
        grpc_server = None
        if backend is None:
            grpc_server = GrpcServer(
                [service.add_to], options=MESSAGE_OPTIONS, max_workers=16, grace=1
            )
            grpc_server.startService()
            self.addCleanup(grpc_server.stopService)
            backend = grpc_server
        web = WebFactory(site(), grpc_backend=backend)
        route = Route("web", [matchers.http1(), matchers.http2()], web)
        if tls:
            files = pki()
            terminate = TLSTerminationFactory(
                files.server_certificate, files.server_key, [route]
            )
            routes = [Route("tls", matchers.tls(), terminate)]
        else:
            routes = [route]
        mux = ProtocolSwitchingFactory(routes)
        port: IListeningPort = await listen(self, mux)
        return web, port.getHost().port, grpc_server  # type: ignore[attr-defined]

    async def client(self, port: int, auto_ack: bool = True) -> H2Client:
        client = await connect(port, auto_ack)

        def close() -> defer.Deferred[None] | None:
            if client.lost.called or client.transport is None:
                return None
            client.transport.loseConnection()
            return client.lost

        self.addCleanup(close)
        return client

    # -- one connection, both kinds of stream ----------------------------------

    async def test_rest_and_grpc_interleaved_on_one_connection(self) -> None:
        web, port, _ = await self.serve()
        client = await self.client(port)
        calls = [
            client.request("/hello"),
            client.grpc("Unary", b"first"),
            client.request("/hello"),
            client.grpc("ServerStream", b"3 10"),
            client.grpc("Unary", b"second"),
            client.request("/big"),
        ]
        replies = [await waiting for _, waiting in calls]
        rest = [replies[0], replies[2]]
        for reply in rest:
            self.assertEqual(reply.status, b"200")
            self.assertEqual(reply.body, b"hello from the Site\n")
            self.assertNotIn(b"grpc-status", reply.trailers)
        self.assertEqual(len(replies[5].body), 3 * MIB)
        unary = replies[1]
        self.assertEqual(unary.headers[b"content-type"], b"application/grpc")
        self.assertEqual(grpc_messages(unary.body), [b"first"])
        self.assertEqual(unary.trailers[b"grpc-status"], b"0")
        self.assertEqual(
            grpc_messages(replies[3].body), [b"0" * 10, b"1" * 10, b"2" * 10]
        )
        self.assertEqual(replies[3].grpc_status, b"0")
        self.assertEqual(grpc_messages(replies[4].body), [b"second"])
        # One client connection, one backend connection, every stream counted.
        self.assertEqual(web.stats["h2c"], 1)
        self.assertEqual(web.stats["grpc_streams"], 3)
        assert web.grpc_backend is not None
        self.assertEqual(web.grpc_backend.stats["calls"], 3)
        self.assertEqual(web.grpc_backend.stats["connections"], 1)
        self.assertFalse(client.lost.called)

    async def test_a_grpc_call_after_rest_on_the_same_connection(self) -> None:
        """cmux issues 62 and 91: the first request must not decide for the rest."""
        _web, port, _ = await self.serve()
        client = await self.client(port)
        first = await client.request("/hello")[1]
        self.assertEqual(first.status, b"200")
        call = await client.grpc("Unary", b"after rest")[1]
        self.assertEqual(grpc_messages(call.body), [b"after rest"])
        self.assertEqual(call.grpc_status, b"0")
        again = await client.request("/hello")[1]
        self.assertEqual(again.body, b"hello from the Site\n")

    async def test_metadata_trailers_and_errors_pass_through(self) -> None:
        _, port, _ = await self.serve()
        client = await self.client(port)
        reply = await client.grpc(
            "Metadata", b"", metadata=[("x-custom", "value one")]
        )[1]
        lines = grpc_messages(reply.body)[0].decode().splitlines()
        self.assertIn("x-custom=value one", lines)
        # The backend sees txcmux as its peer; the client's address comes as
        # the header HTTP proxies add.
        self.assertIn("x-forwarded-for=127.0.0.1", lines)
        self.assertEqual(reply.trailers[b"x-trailer"], b"yes")
        self.assertEqual(reply.trailers[b"grpc-status"], b"0")
        failed = await client.grpc("Metadata", b"fail")[1]
        self.assertEqual(failed.grpc_status, b"5")  # NOT_FOUND
        self.assertEqual(
            failed.trailers.get(b"grpc-message", failed.headers.get(b"grpc-message")),
            b"no such thing",
        )

    # -- grpcio, every kind of call --------------------------------------------

    async def test_grpcio_calls_of_every_kind(self) -> None:
        web, port, _ = await self.serve()

        def calls() -> list[Any]:
            with channel(port) as ch:
                stub = Stub(ch)
                big = b"m" * (4 * MIB)
                with concurrent.futures.ThreadPoolExecutor(10) as pool:
                    many = list(
                        pool.map(
                            lambda i: stub.unary(b"%d" % i, timeout=20), range(100)
                        )
                    )
                return [
                    stub.unary(b"one", timeout=10),
                    [len(m) for m in stub.server_stream(b"4 300000", timeout=10)],
                    stub.client_stream(iter([b"x" * 100000] * 7), timeout=10),
                    list(stub.bidi(iter([b"a", b"b", b"c"]), timeout=10)),
                    stub.unary(big, timeout=20) == big,
                    many == [b"%d" % i for i in range(100)],
                ]

        unary, streamed, client_streamed, bidi, big_ok, many_ok = await in_thread(calls)
        self.assertEqual(unary, b"one")
        self.assertEqual(streamed, [300000] * 4)
        self.assertEqual(client_streamed, b"7 700000")
        self.assertEqual(bidi, [b"a", b"b", b"c"])
        self.assertTrue(big_ok)
        self.assertTrue(many_ok)
        assert web.grpc_backend is not None
        self.assertEqual(web.grpc_backend.stats["unavailable"], 0)

    async def test_deadline_and_cancellation_reach_the_servicer(self) -> None:
        _, port, _ = await self.serve()
        service.ENDED_EARLY.clear()

        def call() -> tuple[Any, float]:
            with channel(port) as ch:
                started = time.monotonic()
                try:
                    Stub(ch).wait(b"", timeout=0.5)
                except grpc.RpcError as error:
                    return error.code(), time.monotonic() - started
                return None, 0.0

        code, took = await in_thread(call)
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(took, 5)
        # grpc-timeout (or the client's RST_STREAM) reached the servicer.
        await wait_until(
            lambda: service.ENDED_EARLY and service.ENDED_EARLY[-1].is_set(),
            what="the servicer to see its call end",
        )

    async def test_a_client_reset_resets_the_backend_stream(self) -> None:
        web, port, _ = await self.serve()
        service.ENDED_EARLY.clear()
        client = await self.client(port)
        stream_id, _waiting = client.grpc("Wait", b"")
        await wait_until(lambda: service.ENDED_EARLY, what="the call to start")
        client.conn.reset_stream(stream_id)
        client.flush()
        await wait_until(lambda: service.ENDED_EARLY[-1].is_set(), what="the cancel")
        assert web.grpc_backend is not None
        self.assertEqual(web.grpc_backend.stats["reset_by_client"], 1)
        # The connection goes on serving both kinds.
        self.assertEqual((await client.request("/hello")[1]).status, b"200")
        self.assertEqual((await client.grpc("Unary", b"x")[1]).grpc_status, b"0")

    # -- the backend away ------------------------------------------------------

    async def test_an_unreachable_backend_gives_unavailable_and_rest_goes_on(
        self,
    ) -> None:
        closed = await listen(self, server.Site(resource.Resource()))
        number = closed.getHost().port  # type: ignore[attr-defined]
        await closed.stopListening()
        web, port, _ = await self.serve(f"tcp:host=127.0.0.1:port={number}")
        client = await self.client(port)
        call = await client.grpc("Unary", b"x")[1]
        self.assertEqual(call.status, b"200")
        self.assertEqual(call.grpc_status, b"14")  # UNAVAILABLE
        self.assertEqual((await client.request("/hello")[1]).status, b"200")

        def grpcio_call() -> Any:
            with channel(port) as ch:
                try:
                    Stub(ch).unary(b"x", timeout=10)
                except grpc.RpcError as error:
                    return error.code()
            return None

        self.assertEqual(await in_thread(grpcio_call), grpc.StatusCode.UNAVAILABLE)
        assert web.grpc_backend is not None
        self.assertEqual(web.grpc_backend.stats["unavailable"], 2)
        self.assertEqual(web.grpc_backend.stats["connect_failed"], 2)

    async def test_an_external_backend_over_tcp(self) -> None:
        backend, number = service.serve_tcp()
        self.addCleanup(backend.stop, None)
        _web, port, _ = await self.serve(f"tcp:host=127.0.0.1:port={number}")

        def calls() -> list[Any]:
            with channel(port) as ch:
                stub = Stub(ch)
                return [
                    stub.unary(b"tcp", timeout=10),
                    len(list(stub.server_stream(b"20 1000", timeout=10))),
                ]

        self.assertEqual(await in_thread(calls), [b"tcp", 20])

    # -- flow control ------------------------------------------------------------

    async def test_a_slow_reader_holds_at_most_a_window(self) -> None:
        """A client that stops reading stops the backend within one window."""
        web, port, _ = await self.serve()
        client = await self.client(port, auto_ack=False)
        stream_id, waiting = client.grpc("ServerStream", b"16 1048576")
        connection = await self.forwarding_connection(web)
        stream = connection.forwarded[stream_id]
        # Let the backend run: it can send at most one window ahead.
        await wait_until(
            lambda: (
                stream.down.size > 0
                or len(client.responses[stream_id].body) >= H2_WINDOW
            ),
            what="the first window",
        )
        for _ in range(20):
            await task.deferLater(reactor, 0.01, lambda: None)
        received = len(client.responses[stream_id].body)
        self.assertLessEqual(received, H2_WINDOW)
        self.assertLessEqual(stream.down.size, H2_WINDOW)
        # Now read everything.
        while not waiting.called:
            client.acknowledge(stream_id)
            await task.deferLater(reactor, 0.005, lambda: None)
        reply = await waiting
        self.assertEqual([len(m) for m in grpc_messages(reply.body)], [MIB] * 16)
        self.assertEqual(reply.grpc_status, b"0")

    async def forwarding_connection(self, web: WebFactory) -> Any:
        """The server's HTTP/2 connection that forwards streams (there is one)."""
        from txcmux._drain import http_channel_of

        found: list[Any] = []

        def find() -> bool:
            for selectable in [*reactor.getReaders(), *reactor.getWriters()]:  # type: ignore[attr-defined]
                protocol = http_channel_of(getattr(selectable, "protocol", None))
                if getattr(protocol, "forwarded", None):
                    found.append(protocol)
                    return True
            return False

        await wait_until(find, what="a forwarding connection")
        return found[0]

    # -- TLS, curl and h2load --------------------------------------------------

    async def test_over_tls_grpcio_and_curl_on_one_route(self) -> None:
        web, port, _ = await self.serve(tls=True)
        files = pki()
        credentials = grpc.ssl_channel_credentials(files.ca.read_bytes())

        def call() -> bytes:
            with grpc.secure_channel(
                f"127.0.0.1:{port}",
                credentials,
                options=[("grpc.ssl_target_name_override", "localhost")],
            ) as ch:
                result: bytes = Stub(ch).unary(b"over tls", timeout=10)
                return result

        self.assertEqual(await in_thread(call), b"over tls")
        out, err, code = await getProcessOutputAndValue(
            tool("curl"),
            [
                "-sS",
                "--http2",
                "--cacert",
                str(files.ca),
                "--resolve",
                f"localhost:{port}:127.0.0.1",
                f"https://localhost:{port}/hello",
            ],
        )
        self.assertEqual((code, out), (0, b"hello from the Site\n"), err)
        self.assertEqual(web.stats["h2"], 2)
        self.assertEqual(web.stats["grpc_streams"], 1)

    async def test_h2load_grpc_calls_per_stream(self) -> None:
        web, port, _ = await self.serve()
        message = b"load test message"
        handle, body = tempfile.mkstemp(suffix=".grpc")
        self.addCleanup(os.unlink, body)
        os.write(handle, b"\x00" + len(message).to_bytes(4, "big") + message)
        os.close(handle)
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
                f"http://127.0.0.1:{port}/{service.SERVICE}/Unary",
            ],
        )
        report = out.decode()
        self.assertEqual(code, 0, report + err.decode())
        self.assertIn("400 succeeded, 0 failed, 0 errored, 0 timeout", report)
        self.assertIn(f"({400 * (5 + len(message))}) data", report)
        self.assertEqual(web.stats["grpc_streams"], 400)
        self.assertEqual(web.stats["h2c"], 4)

    async def test_curl_rest_and_grpcio_share_the_port(self) -> None:
        _, port, _ = await self.serve()
        out, err, code = await getProcessOutputAndValue(
            tool("curl"),
            ["-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/hello"],
        )
        self.assertEqual((code, out), (0, b"hello from the Site\n"), err)

        def call() -> bytes:
            with channel(port) as ch:
                result: bytes = Stub(ch).unary(b"grpcio", timeout=10)
                return result

        self.assertEqual(await in_thread(call), b"grpcio")

    # -- configuration ---------------------------------------------------------

    def test_python_api_errors(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            WebFactory(site(), grpc_backend=42)
        self.assertIn("grpc_backend is 42", str(caught.exception))
        with self.assertRaises(ConfigurationError) as caught:
            WebFactory(site(), grpc_backend="nonsense:x")
        self.assertIn("grpc_backend: cannot use 'nonsense:x'", str(caught.exception))
        with self.assertRaises(ConfigurationError) as caught:
            WebFactory(site(), grpc_backend="tcp:host=127.0.0.1:port=1", http2=False)
        self.assertIn("needs HTTP/2", str(caught.exception))


class RealClientTests(unittest.TestCase):
    """Clients that share one connection for everything, and a drain."""

    timeout = 60

    async def test_node_http2_one_session_rest_and_grpc(self) -> None:
        import json
        from pathlib import Path

        web, port, _ = await PerStreamTests.serve(self)  # type: ignore[arg-type]
        script = Path(__file__).parent / "js" / "shared_session.js"
        out, err, code = await getProcessOutputAndValue(
            tool("timeout"), ["30", tool("node"), str(script), str(port)]
        )
        self.assertEqual(code, 0, out + err)
        results = json.loads(out)["results"]
        rest = [r for r in results if r["kind"] == "rest"]
        calls = [r for r in results if r["kind"] == "grpc"]
        self.assertEqual([r["body"] for r in rest], ["hello from the Site\n"] * 3)
        self.assertEqual([r["grpcStatus"] for r in calls], ["0"] * 3)
        self.assertEqual(
            [r["messages"] for r in calls], [["one"], ["000", "111"], ["two"]]
        )
        self.assertEqual(web.stats["h2c"], 1)  # one session: one connection
        self.assertEqual(web.stats["grpc_streams"], 3)

    async def test_a_drain_lets_forwarded_calls_finish(self) -> None:
        from txcmux._drain import finish

        web, port, _ = await PerStreamTests.serve(self)  # type: ignore[arg-type]
        client = await PerStreamTests.client(self, port)  # type: ignore[arg-type]
        _, streaming = client.grpc("ServerStream", b"5 10 0.1")
        connection = await PerStreamTests.forwarding_connection(self, web)  # type: ignore[arg-type]
        self.assertEqual(finish(connection), "h2")
        await wait_until(lambda: client.goaway is not None, what="the first GOAWAY")
        self.assertFalse(client.lost.called)
        # The drain asks again and again; the call still runs meanwhile.
        self.assertEqual(finish(connection), "h2")
        self.assertFalse(client.lost.called)
        reply = await streaming
        self.assertEqual(len(grpc_messages(reply.body)), 5)
        self.assertEqual(reply.grpc_status, b"0")
        finish(connection)  # now idle: closed with the final GOAWAY
        await client.lost

    async def test_a_backend_stopping_gracefully_lets_calls_finish(self) -> None:
        """grpcio's stop(grace) sends GOAWAY; the calls it took still complete."""
        web, port, grpc_server = await PerStreamTests.serve(self)  # type: ignore[arg-type]
        assert grpc_server is not None
        client = await PerStreamTests.client(self, port)  # type: ignore[arg-type]
        _, streaming = client.grpc("ServerStream", b"6 10 0.1")
        await PerStreamTests.forwarding_connection(self, web)  # type: ignore[arg-type]
        grpc_server.grace = 5
        stopped = grpc_server.stopService()
        reply = await streaming
        self.assertEqual(len(grpc_messages(reply.body)), 6)
        self.assertEqual(reply.grpc_status, b"0")
        await stopped
        # The server is gone: a new call is UNAVAILABLE, and REST goes on.
        after = await client.grpc("Unary", b"late")[1]
        self.assertEqual(after.grpc_status, b"14")
        self.assertEqual((await client.request("/hello")[1]).status, b"200")
