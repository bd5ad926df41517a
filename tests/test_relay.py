"""The relay target: buffering, flow control, half-close, errors, backends.

Protocol-level tests drive RelayProtocol over StringTransports with a fake
endpoint and a task.Clock; the rest use real sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any

from twisted.internet import defer, endpoints, error, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import directlyProvides, implementer, providedBy

from txcmux import (
    ConfigurationError,
    Handoff,
    ProtocolSwitchingFactory,
    Route,
    matchers,
)
from txcmux._relay import _relay
from txcmux.relay import (
    IRelayedClients,
    NamedUNIXClientEndpoint,
    RelayFactory,
    RelayProtocol,
    lookup_client,
    peer_key,
)

from .grpc_support.net import buffered, listen, wait_until
from .logs import captured_logs

MIB = 1024 * 1024

# -- doubles -----------------------------------------------------------------


@implementer(IHalfCloseableDescriptor)
class HalfCloseableTransport(StringTransport):
    """A StringTransport that can half-close, like tcp and unix transports."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@implementer(IStreamClientEndpoint)
class ManualEndpoint:
    """An endpoint whose connect attempts the test completes by hand."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, defer.Deferred[IProtocol]]] = []
        self.cancelled = 0

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        def cancel(_: object) -> None:
            self.cancelled += 1

        attempt: defer.Deferred[IProtocol] = defer.Deferred(cancel)
        self.attempts.append((factory, attempt))
        return attempt

    def succeed(self, host: Any = None, transport: Any = None) -> tuple[Any, Any]:
        """Complete the last attempt; return (backend protocol, its transport)."""
        factory, attempt = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        if transport is None:
            transport = HalfCloseableTransport(hostAddress=host)
        protocol.makeConnection(transport)
        if not attempt.called:  # a cancelled attempt may still have connected
            attempt.callback(protocol)
        return protocol, transport

    def fail(self, problem: Exception) -> None:
        self.attempts[-1][1].errback(problem)

    def __repr__(self) -> str:
        return "manual-backend"


def relay_over_strings(
    name: str | None = "svc", **kwargs: Any
) -> tuple[RelayFactory, ManualEndpoint, task.Clock]:
    endpoint = ManualEndpoint()
    clock = task.Clock()
    factory = RelayFactory(endpoint, reactor=clock, name=name, **kwargs)
    return factory, endpoint, clock


def connect_client(
    factory: RelayFactory, data: bytes = b""
) -> tuple[RelayProtocol, HalfCloseableTransport]:
    peer = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = factory.buildProtocol(peer)
    transport = HalfCloseableTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    if data:
        protocol.dataReceived(data)
    return protocol, transport


# -- protocol tests ------------------------------------------------------------


def test_client_is_paused_and_buffered_until_the_backend_answers() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, client_transport = connect_client(factory, b"first ")
    client.dataReceived(b"second")
    assert client_transport.producerState == "paused"
    assert len(endpoint.attempts) == 1

    backend, backend_transport = endpoint.succeed()
    assert backend_transport.value() == b"first second"
    assert client_transport.producerState == "producing"
    # Each side is the other's streaming producer: a full write buffer on
    # one side pauses reading on the other.
    assert client_transport.streaming and backend_transport.streaming
    client_transport.producer.pauseProducing()
    assert backend_transport.producerState == "paused"
    client_transport.producer.resumeProducing()
    assert backend_transport.producerState == "producing"
    backend_transport.producer.pauseProducing()
    assert client_transport.producerState == "paused"
    backend_transport.producer.resumeProducing()

    client.dataReceived(b" third")
    backend.dataReceived(b"reply")
    assert backend_transport.value() == b"first second third"
    assert client_transport.value() == b"reply"
    assert factory.stats["connected"] == 1
    assert factory.active == 1


def test_half_close_passes_both_ways_then_closes() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, client_transport = connect_client(factory, b"req")
    backend, backend_transport = endpoint.succeed()

    client.readConnectionLost()
    assert backend_transport.write_closed
    assert not backend_transport.disconnecting
    assert backend_transport.producer is None  # nothing more will come from the client
    backend.dataReceived(b"answer after the client's EOF")
    assert client_transport.value() == b"answer after the client's EOF"

    backend.readConnectionLost()
    assert client_transport.write_closed
    client.writeConnectionLost()
    assert client_transport.disconnecting  # both halves done: closed
    backend.writeConnectionLost()
    assert backend_transport.disconnecting


class ForwardingWrapper:
    """Like Twisted's TLS protocol as a transport: it copies the interfaces of
    the transport beneath and forwards what it does not define to it."""

    def __init__(self, beneath: HalfCloseableTransport) -> None:
        self.beneath = beneath
        self.closed = False
        directlyProvides(self, providedBy(beneath))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.beneath, name)

    def loseConnection(self) -> None:
        self.closed = True


def test_a_wrapper_forwarding_half_close_beneath_itself_is_closed_fully() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, _ = connect_client(factory, b"req")
    beneath = HalfCloseableTransport()
    wrapper = ForwardingWrapper(beneath)
    assert IHalfCloseableDescriptor.providedBy(wrapper)
    endpoint.succeed(transport=wrapper)
    client.readConnectionLost()
    assert wrapper.closed
    assert not beneath.write_closed  # never shut under the wrapper's feet


def test_eof_before_the_backend_answers_is_passed_on_after_the_buffer() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, _ = connect_client(factory, b"all of it")
    client.readConnectionLost()
    _, backend_transport = endpoint.succeed()
    assert backend_transport.value() == b"all of it"
    assert backend_transport.write_closed


def test_reset_on_one_side_aborts_the_other() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, client_transport = connect_client(factory, b"x")
    backend, _ = endpoint.succeed()
    backend.dataReceived(b"yz")
    with captured_logs() as lines:
        backend.connectionLost(Failure(error.ConnectionLost("reset by peer")))
        assert client_transport.disconnected  # StringTransport's mark of an abort
        client.connectionLost(Failure(error.ConnectionAborted()))
    assert factory.stats["closed_error"] == 1
    assert factory.stats["closed_clean"] == 0
    assert factory.stats["bytes_up"] == 1
    assert factory.stats["bytes_down"] == 2
    assert factory.active == 0
    assert any("svc" in line and "by the backend" in line for line in lines), lines


def test_clean_close_on_one_side_closes_the_other_cleanly() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, client_transport = connect_client(factory, b"x")
    backend, _ = endpoint.succeed()
    backend.connectionLost(Failure(error.ConnectionDone()))
    assert client_transport.disconnecting
    assert not client_transport.disconnected
    client.connectionLost(Failure(error.ConnectionDone()))
    assert factory.stats["closed_clean"] == 1
    assert factory.active == 0


def test_connect_timeout_closes_the_client_and_logs_one_line() -> None:
    factory, endpoint, clock = relay_over_strings(connect_timeout=3)
    client, client_transport = connect_client(factory, b"hello")
    with captured_logs() as lines:
        clock.advance(2.9)
        assert not client_transport.disconnecting
        clock.advance(0.2)
    assert client_transport.disconnecting
    assert endpoint.cancelled == 1
    assert factory.stats["backend_failed"] == 1
    failures = [line for line in lines if "backend" in line]
    assert len(failures) == 1, lines
    assert "svc" in failures[0]
    assert "192.0.2.7:40000" in failures[0]
    assert "no answer within 3 s" in failures[0]
    assert "manual-backend" in failures[0]
    client.connectionLost(Failure(error.ConnectionDone()))
    assert factory.active == 0
    assert factory.stats["client_left"] == 0


def test_idle_timeout_closes_both_sides_after_no_byte_moved() -> None:
    factory, endpoint, clock = relay_over_strings(idle_timeout=40)
    client, client_transport = connect_client(factory, b"hello")
    backend, backend_transport = endpoint.succeed()
    # Bytes either way keep the connection: each restarts the count.
    for _ in range(5):
        clock.advance(30)
        client.dataReceived(b"ping")
        clock.advance(30)
        backend.dataReceived(b"pong")
    assert not client_transport.disconnecting
    assert not backend_transport.disconnecting
    with captured_logs() as lines:
        clock.pump([1] * 39)
        assert not client_transport.disconnecting
        clock.pump([1] * 11)  # 50 s after the last byte: 40 s and a quarter more
        assert client_transport.disconnecting and backend_transport.disconnecting
        # Nothing was waiting to be written: a clean close, not a reset.
        assert not client_transport.disconnected
        client.connectionLost(Failure(error.ConnectionDone()))
        backend.connectionLost(Failure(error.ConnectionDone()))
    assert factory.stats["idle_timeout"] == 1
    assert factory.stats["closed_clean"] == factory.stats["closed_error"] == 0
    assert factory.active == 0
    idle = [line for line in lines if "idle for 40 s" in line]
    assert len(idle) == 1 and "svc" in idle[0] and "192.0.2.7:40000" in idle[0]
    assert any("after the idle timeout" in line for line in lines), lines
    assert not clock.getDelayedCalls()


def test_idle_timeout_aborts_a_connection_stuck_on_a_side_that_stopped_reading() -> (
    None
):
    factory, endpoint, clock = relay_over_strings(idle_timeout=8)
    client, client_transport = connect_client(factory)
    _, backend_transport = endpoint.succeed()
    # The backend stopped reading: its transport, full, pauses the client.
    client.dataReceived(b"x" * 1000)
    backend_transport.producer.pauseProducing()
    clock.pump([1] * 10)
    assert client_transport.disconnected and backend_transport.disconnected


def test_a_closed_relay_leaves_no_idle_timer() -> None:
    factory, endpoint, clock = relay_over_strings()
    client, _ = connect_client(factory, b"x")
    backend, _ = endpoint.succeed()
    assert len(clock.getDelayedCalls()) == 1
    backend.connectionLost(Failure(error.ConnectionDone()))
    client.connectionLost(Failure(error.ConnectionDone()))
    assert not clock.getDelayedCalls()


def test_idle_timeout_zero_or_none_is_off() -> None:
    for off in (0, None):
        factory, endpoint, clock = relay_over_strings(idle_timeout=off)
        connect_client(factory, b"x")
        endpoint.succeed()
        assert not clock.getDelayedCalls()
    assert RelayFactory("tcp:host=a:port=1", reactor=clock).idle_timeout == 3600


def test_refusing_backend_closes_the_client() -> None:
    factory, endpoint, _ = relay_over_strings()
    _, client_transport = connect_client(factory, b"hello")
    with captured_logs() as lines:
        endpoint.fail(error.ConnectionRefusedError("127.0.0.1:9"))
    assert client_transport.disconnecting
    assert factory.stats["backend_failed"] == 1
    assert any("refused" in line.lower() and "svc" in line for line in lines), lines


def test_an_endpoint_that_raises_counts_as_a_backend_failure() -> None:
    @implementer(IStreamClientEndpoint)
    class Broken:
        def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
            raise OSError("no route to the backend")

    factory = RelayFactory(Broken(), reactor=task.Clock(), name="svc")
    with captured_logs() as lines:
        _, client_transport = connect_client(factory, b"hello")
    assert client_transport.disconnecting
    assert factory.stats["backend_failed"] == 1
    assert any("no route to the backend" in line for line in lines), lines


def test_client_leaving_first_cancels_the_connect() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, _ = connect_client(factory, b"hello")
    with captured_logs() as lines:
        client.connectionLost(Failure(error.ConnectionLost("reset")))
    assert endpoint.cancelled == 1
    assert factory.stats["client_left"] == 1
    assert factory.stats["backend_failed"] == 0  # a cancel is not a backend failure
    assert factory.active == 0
    assert any("left before backend" in line for line in lines), lines


def test_backend_answering_after_the_client_left_is_closed() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, _ = connect_client(factory, b"hello")
    client.connectionLost(Failure(error.ConnectionLost("reset")))
    _, backend_transport = endpoint.succeed()  # the connect raced the cancel
    assert backend_transport.disconnecting
    assert backend_transport.value() == b""
    assert factory.stats["connected"] == 0


def test_a_client_gone_cleanly_still_has_its_bytes_delivered() -> None:
    """A clean end with bytes not yet sent (a TLS client's close_notify,
    which Twisted reports as a full close) is the client's last word, as a
    FIN is: the connect goes on, the bytes reach the backend, then a close."""
    factory, endpoint, _ = relay_over_strings(send_proxy="v1")
    client, _ = connect_client(factory, b"last ")
    client.dataReceived(b"words")
    client.connectionLost(Failure(error.ConnectionDone()))
    assert endpoint.cancelled == 0
    assert factory.active == 1
    _, backend_transport = endpoint.succeed()
    assert backend_transport.value().startswith(b"PROXY TCP4 192.0.2.7 ")
    assert backend_transport.value().endswith(b"\r\nlast words")
    assert backend_transport.disconnecting
    assert factory.stats["connected"] == factory.stats["closed_clean"] == 1
    assert factory.stats["bytes_up"] == len(b"last words")
    assert factory.stats["client_left"] == 0
    assert factory.active == 0


def test_a_client_gone_cleanly_with_nothing_to_say_cancels_the_connect() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, _ = connect_client(factory)
    client.connectionLost(Failure(error.ConnectionDone()))
    assert endpoint.cancelled == 1
    assert factory.stats["client_left"] == 1


def test_a_connect_failing_at_once_then_a_clean_client_end_finishes() -> None:
    """A backend that fails inside connect (the in-process gRPC server not
    running): the client's clean end afterwards, bytes pending, must not
    wait for an attempt that is over."""

    @implementer(IStreamClientEndpoint)
    class Failing:
        def connect(self, factory: Any) -> defer.Deferred[IProtocol]:
            return defer.fail(error.ConnectionRefusedError())

    factory = RelayFactory(Failing(), reactor=task.Clock(), name="svc")
    client, transport = connect_client(factory, b"bytes")
    assert transport.disconnecting
    client.dataReceived(b"more")
    client.connectionLost(Failure(error.ConnectionDone()))
    assert factory.stats["backend_failed"] == 1
    assert factory.active == 0


def test_a_backend_failing_after_a_clean_client_end_is_counted_once() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, _ = connect_client(factory, b"bytes")
    client.connectionLost(Failure(error.ConnectionDone()))
    with captured_logs() as lines:
        endpoint.fail(error.ConnectionRefusedError())
    assert factory.stats["backend_failed"] == 1
    assert factory.stats["client_left"] == 0
    assert factory.active == 0
    assert any("failed for 192.0.2.7:40000" in line for line in lines), lines


def test_route_name_comes_from_the_handoff_when_unnamed() -> None:
    factory, endpoint, _ = relay_over_strings(name=None)
    protocol = factory.buildProtocol(None)
    protocol.handoff_received(Handoff("ssh", None, b"SSH-2.0-x\r\n", b""))
    protocol.makeConnection(HalfCloseableTransport())
    with captured_logs() as lines:
        endpoint.fail(error.ConnectionRefusedError())
    assert any("route ssh" in line for line in lines), lines


def test_relay_protocol_provides_half_close() -> None:
    factory, _, _ = relay_over_strings()
    assert IHalfCloseableProtocol.providedBy(factory.buildProtocol(None))


def test_bad_endpoints_are_configuration_errors() -> None:
    clock = task.Clock()
    for bad in ["nonsense:thing=1", "tcp:host=127.0.0.1"]:
        try:
            RelayFactory(bad, reactor=clock, name="x")
        except ConfigurationError as problem:
            assert bad in str(problem)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    for endpoint, kwargs in [(42, {}), ("tcp:host=a:port=1", {"connect_timeout": 0})]:
        try:
            RelayFactory(endpoint, reactor=clock, **kwargs)  # type: ignore[arg-type]
        except ConfigurationError:
            pass
        else:
            raise AssertionError(f"{endpoint!r} {kwargs} was accepted")


def test_backend_is_described_for_logs() -> None:
    clock = task.Clock()
    assert (
        RelayFactory("tcp:host=127.0.0.1:port=22", reactor=clock).backend
        == "tcp:host=127.0.0.1:port=22"
    )
    endpoint = endpoints.TCP4ClientEndpoint(clock, "10.1.2.3", 50051)
    assert RelayFactory(endpoint, reactor=clock).backend == "tcp:10.1.2.3:50051"


def test_peer_keys_are_spelled_like_grpcio() -> None:
    assert peer_key(IPv4Address("TCP", "127.0.0.1", 5)) == "ipv4:127.0.0.1:5"
    assert peer_key(IPv6Address("TCP", "::1", 5)) == "ipv6:[::1]:5"
    assert peer_key(UNIXAddress("/run/x/c1")) == "unix:/run/x/c1"
    assert peer_key(UNIXAddress(b"\0abstract")) == "unix-abstract:abstract"
    assert peer_key(UNIXAddress(None)) is None


def test_lookup_client_finds_the_relayed_client_while_connected() -> None:
    factory, endpoint, _ = relay_over_strings()
    client, _ = connect_client(factory)
    backend_side = IPv6Address("TCP", "::1", 41999)
    backend, _ = endpoint.succeed(host=backend_side)
    found = lookup_client("ipv6:%5B::1%5D:41999")  # grpcio's spelling
    assert found == IPv4Address("TCP", "192.0.2.7", 40000)
    backend.connectionLost(Failure(error.ConnectionDone()))
    client.connectionLost(Failure(error.ConnectionDone()))
    assert lookup_client("ipv6:[::1]:41999") is None


def test_lookup_client_will_not_guess_between_two_clients() -> None:
    factory, endpoint, _ = relay_over_strings()
    shared = IPv4Address("TCP", "127.0.0.1", 42001)  # one port, two backends
    first, _ = connect_client(factory)
    first_backend, _ = endpoint.succeed(host=shared)
    second = factory.buildProtocol(None)
    second.makeConnection(
        HalfCloseableTransport(peerAddress=IPv4Address("TCP", "192.0.2.8", 1))
    )
    second_backend, _ = endpoint.succeed(host=shared)
    assert lookup_client("ipv4:127.0.0.1:42001") is None
    first_backend.connectionLost(Failure(error.ConnectionDone()))
    first.connectionLost(Failure(error.ConnectionDone()))
    assert lookup_client("ipv4:127.0.0.1:42001") == IPv4Address("TCP", "192.0.2.8", 1)
    second_backend.connectionLost(Failure(error.ConnectionDone()))
    second.connectionLost(Failure(error.ConnectionDone()))
    assert lookup_client("ipv4:127.0.0.1:42001") is None


@implementer(IRelayedClients)
class RecordedClients:
    """Records what a relay reports, and when it is forgotten."""

    def __init__(self) -> None:
        self.events: list[tuple[str, IAddress, IAddress]] = []

    def relayed(self, local: IAddress, client: IAddress) -> Any:
        self.events.append(("relayed", local, client))
        return lambda: self.events.append(("forgotten", local, client))


def test_a_relay_reports_to_the_clients_it_is_given() -> None:
    clients = RecordedClients()
    factory, endpoint, _ = relay_over_strings(clients=clients)
    client, _ = connect_client(factory)
    backend_side = IPv4Address("TCP", "127.0.0.1", 42077)
    backend, _ = endpoint.succeed(host=backend_side)
    real = IPv4Address("TCP", "192.0.2.7", 40000)
    assert clients.events == [("relayed", backend_side, real)]
    assert lookup_client("ipv4:127.0.0.1:42077") is None  # not the default registry
    backend.connectionLost(Failure(error.ConnectionDone()))
    assert len(clients.events) == 1  # forgotten once both sides are gone
    client.connectionLost(Failure(error.ConnectionDone()))
    assert clients.events[1:] == [("forgotten", backend_side, real)]


def test_relay_arguments_are_checked() -> None:
    clock = task.Clock()
    for kwargs, fragment in [
        ({"clients": object()}, "clients is <object"),
        ({"connect_timeout": "10"}, "connect_timeout is '10'"),
        ({"connect_timeout": True}, "connect_timeout is True"),
        ({"idle_timeout": -1}, "idle_timeout is -1"),
        ({"idle_timeout": "1h"}, "idle_timeout is '1h'"),
        ({"idle_timeout": float("inf")}, "idle_timeout is inf"),
    ]:
        try:
            RelayFactory("tcp:host=a:port=1", reactor=clock, name="x", **kwargs)
        except ConfigurationError as problem:
            assert "relay 'x'" in str(problem) and fragment in str(problem)
        else:
            raise AssertionError(f"{kwargs} was accepted")


def test_the_clock_times_the_connect_and_the_reactor_parses() -> None:
    reactor_clock, clock = task.Clock(), task.Clock()
    factory = RelayFactory(
        ManualEndpoint(), reactor=reactor_clock, clock=clock, connect_timeout=2
    )
    _, transport = connect_client(factory)
    reactor_clock.advance(5)
    assert factory.stats["backend_failed"] == 0
    clock.advance(2)
    assert factory.stats["backend_failed"] == 1 and transport.disconnecting


# -- real sockets --------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class ReplyAtEOF(Protocol):
    """Collects everything, and only at the client's EOF answers and closes."""

    def __init__(self, owner: ReplyAtEOFFactory) -> None:
        self.owner = owner
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.owner.received.append(self.data)
        self.transport.write(b"got " + str(len(self.data)).encode() + b": " + self.data)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.owner.lost.append(reason)


class ReplyAtEOFFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure | None] = []

    def buildProtocol(self, addr: Any) -> ReplyAtEOF:
        return ReplyAtEOF(self)


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """A test client: records data, EOF, and how the connection ended."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.received_bytes = 0
        self.keep = True
        self.eof = False
        self._ended: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self.ended_at: float | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.local = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.received_bytes += len(data)
        if self.keep:
            self.chunks.append(data)

    def readConnectionLost(self) -> None:
        self.eof = True
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.ended_at = time.monotonic()
        self.reason = reason
        self._ended.callback(None)

    async def ended(self) -> Failure:
        """How the connection ended, once it has."""
        await self._ended
        assert self.reason is not None
        return self.reason

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


async def connect(port: Any, client: Client | None = None) -> Client:
    client = client or Client()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    await endpoints.connectProtocol(endpoint, client)
    return client


def backend_string(port: Any) -> str:
    return f"tcp:host=127.0.0.1:port={port.getHost().port}"


class RealSocketTests(unittest.TestCase):
    timeout = 60

    async def relay_to(
        self, backend: Any, **kwargs: Any
    ) -> tuple[ProtocolSwitchingFactory, RelayFactory, Any]:
        """A mux whose ECHO-prefix route relays to ``backend``: (mux, relay, port)."""
        relay = RelayFactory(backend, name="echo", **kwargs)
        mux = ProtocolSwitchingFactory(
            [Route("echo", matchers.prefix(b"ECHO "), relay)]
        )
        port = await listen(self, mux)
        return mux, relay, port

    async def settle(self, relay: RelayFactory) -> None:
        await wait_until(lambda: relay.active == 0, what="relay connections to close")

    async def test_half_close_reaches_a_backend_that_answers_after_eof(self) -> None:
        backend = ReplyAtEOFFactory()
        backend_port = await listen(self, backend)
        _, relay, port = await self.relay_to(backend_string(backend_port))

        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"ECHO half-")
        client.transport.write(b"closed")
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        reason = await client.ended()
        await self.settle(relay)

        self.assertEqual(backend.received, [b"ECHO half-closed"])
        self.assertEqual(client.data, b"got 16: ECHO half-closed")
        self.assertTrue(client.eof)
        self.assertIsInstance(reason.value, error.ConnectionDone)
        self.assertEqual(relay.stats["closed_clean"], 1)
        self.assertEqual(relay.stats["bytes_up"], 16)
        self.assertEqual(relay.stats["bytes_down"], len(client.data))

    async def test_bytes_sent_before_the_backend_connected_arrive_first(self) -> None:
        backend = ReplyAtEOFFactory()
        backend_port = await listen(self, backend)
        gate: defer.Deferred[None] = defer.Deferred()
        real = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", backend_port.getHost().port
        )

        @implementer(IStreamClientEndpoint)
        class Gated:
            async def _connect(self, factory: IProtocolFactory) -> IProtocol:
                await gate
                return await real.connect(factory)

            def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
                return defer.ensureDeferred(self._connect(factory))

        mux, relay, port = await self.relay_to(Gated())
        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"ECHO one,")
        await wait_until(lambda: mux.stats["routed.echo"] == 1)
        client.transport.write(b"two,")
        client.transport.write(b"three")
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        await wait_until(lambda: backend.received == [] and relay.active == 1)
        gate.callback(None)
        await client.ended()
        await self.settle(relay)
        self.assertEqual(backend.received, [b"ECHO one,two,three"])
        self.assertEqual(client.data, b"got 18: ECHO one,two,three")

    async def test_backend_refusing_closes_the_client_promptly(self) -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
        closed.close()
        mux, relay, port = await self.relay_to(
            f"tcp:host=127.0.0.1:port={refused_port}"
        )
        with captured_logs() as lines:
            for attempt in range(2):  # the listener keeps serving
                client = await connect(port)
                assert client.transport is not None
                started = time.monotonic()
                client.transport.write(b"ECHO anyone there?")
                await client.ended()
                assert client.ended_at is not None
                self.assertLess(client.ended_at - started, 2.0)
                self.assertEqual(client.data, b"")
                self.assertEqual(relay.stats["backend_failed"], attempt + 1)
        await self.settle(relay)
        self.assertEqual(mux.stats["routed.echo"], 2)
        failures = [line for line in lines if "failed for" in line]
        self.assertEqual(len(failures), 2, lines)
        self.assertIn("route echo", failures[0])
        self.assertIn(str(refused_port), failures[0])
        self.assertIn("127.0.0.1:", failures[0])

    async def test_backend_reset_aborts_the_client(self) -> None:
        class ResetOnData(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.abortConnection()  # type: ignore[attr-defined]

        backend_port = await listen(self, Factory.forProtocol(ResetOnData))
        _, relay, port = await self.relay_to(backend_string(backend_port))
        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"ECHO boom")
        reason = await client.ended()
        await self.settle(relay)
        self.assertIsInstance(reason.value, error.ConnectionLost)
        self.assertEqual(relay.stats["closed_error"], 1)

    async def test_client_reset_aborts_the_backend(self) -> None:
        backend = ReplyAtEOFFactory()
        backend_port = await listen(self, backend)
        _, relay, port = await self.relay_to(backend_string(backend_port))
        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"ECHO then reset")
        await wait_until(lambda: relay.stats["connected"] == 1)
        client.transport.abortConnection()  # type: ignore[attr-defined]
        await wait_until(lambda: backend.lost)
        await self.settle(relay)
        reason = backend.lost[0]
        assert reason is not None
        self.assertIsInstance(reason.value, error.ConnectionLost)
        self.assertEqual(backend.received, [])  # no EOF was faked for the backend
        self.assertEqual(relay.stats["closed_error"], 1)

    async def test_clean_close_is_passed_on_after_flushing(self) -> None:
        size = 8 * MIB

        class SendAndClose(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(b"z" * size)
                self.transport.loseConnection()

        backend_port = await listen(self, Factory.forProtocol(SendAndClose))
        _, relay, port = await self.relay_to(backend_string(backend_port))
        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"ECHO go")
        reason = await client.ended()
        await self.settle(relay)
        self.assertEqual(client.received_bytes, size)
        self.assertEqual(client.data, b"z" * size)
        self.assertIsInstance(reason.value, error.ConnectionDone)
        self.assertEqual(relay.stats["closed_clean"], 1)
        self.assertEqual(relay.stats["bytes_down"], size)

    async def test_slow_reader_keeps_relay_memory_bounded(self) -> None:
        await self.slow_reader_is_held_back()

    async def test_slow_reader_keeps_memory_bounded_on_the_copying_path(
        self,
    ) -> None:
        # As behind TLS or off Linux: the relay's own write buffers and
        # producers do the flow control, not a splice pipe.
        self.patch(_relay, "_start_pumps", lambda *arguments: (None, False))
        await self.slow_reader_is_held_back()

    async def slow_reader_is_held_back(self) -> None:
        """A sender that never stops, a reader that pauses: bounded memory."""
        total, chunk = 200 * MIB, b"m" * (256 * 1024)

        class Firehose(Protocol):
            """Sends ``total`` bytes as fast as its transport lets it."""

            sent = pauses = 0
            paused = False

            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
                firehoses.append(self)
                self.resumeProducing()

            def pauseProducing(self) -> None:
                self.paused = True
                self.pauses += 1

            def resumeProducing(self) -> None:
                self.paused = False
                assert self.transport is not None
                while not self.paused and self.sent < total:
                    self.transport.write(chunk)
                    self.sent += len(chunk)
                if self.sent >= total:
                    self.transport.unregisterProducer()  # type: ignore[attr-defined]
                    self.transport.loseConnection()

            def stopProducing(self) -> None:
                self.paused = True

        firehoses: list[Firehose] = []
        backend_port = await listen(self, Factory.forProtocol(Firehose))
        relays: list[RelayProtocol] = []

        class Watched(RelayFactory):
            def buildProtocol(self, addr: Any) -> RelayProtocol:
                relay = super().buildProtocol(addr)
                relays.append(relay)
                return relay

        relay_factory = Watched(backend_string(backend_port), name="firehose")
        port = await listen(self, relay_factory)  # the relay alone, no detector
        client = Client()
        client.keep = False
        await connect(port, client)
        assert client.transport is not None
        client.transport.pauseProducing()  # type: ignore[attr-defined]
        await wait_until(lambda: firehoses and relays and relays[0].other is not None)
        relay, firehose = relays[0], firehoses[0]
        relay_client_side, relay_backend_side = relay.transport, relay.other.transport  # type: ignore[union-attr]
        peak = 0

        def sample() -> None:
            nonlocal peak
            if relay.lost is None:
                peak = max(
                    peak, buffered(relay_client_side) + buffered(relay_backend_side)
                )

        sampler = task.LoopingCall(sample)
        sampler.start(0.002)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        # Wait until the paused reader has stopped the sender (no progress).
        history: list[int] = []

        def stalled() -> bool:
            history.append(firehose.sent)
            return (
                firehose.paused and len(history) > 20 and history[-20] == firehose.sent
            )

        await wait_until(stalled, timeout=20, what="the sender to be held back")
        sent_while_paused = firehose.sent
        sample()
        self.assertLess(sent_while_paused, 64 * MIB)  # the pause reached the sender
        self.assertLess(peak, 16 * MIB)

        client.transport.resumeProducing()  # type: ignore[attr-defined]
        reason = await client.ended()
        sampler.stop()
        await wait_until(lambda: relay_factory.active == 0)
        self.assertIsInstance(reason.value, error.ConnectionDone)
        self.assertEqual(client.received_bytes, total)
        self.assertGreater(firehose.pauses, 0)
        self.assertLess(peak, 16 * MIB)
        self.assertEqual(relay_factory.stats["bytes_down"], total)

    async def test_unix_backend_by_endpoint_string(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "backend.sock")
        backend = ReplyAtEOFFactory()
        await listen(self, backend, f"unix:{path}")
        _, relay, port = await self.relay_to(f"unix:path={path}")
        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"ECHO over unix")
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        await client.ended()
        await self.settle(relay)
        self.assertEqual(client.data, b"got 14: ECHO over unix")

    async def test_tcp_backend_can_look_up_the_real_client(self) -> None:
        class WhoAmI(Protocol):
            def dataReceived(self, data: bytes) -> None:
                # Known once bytes flow (at connectionMade the relay's side
                # of the connection may not have completed yet).
                assert self.transport is not None
                key = peer_key(self.transport.getPeer())
                found = lookup_client(key) if key else None
                self.transport.write(f"{key} -> {found}".encode())
                self.transport.loseConnection()

        backend_port = await listen(self, Factory.forProtocol(WhoAmI))
        _, relay, port = await self.relay_to(backend_string(backend_port))
        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"ECHO who?")
        await client.ended()
        await self.settle(relay)
        me = client.local
        self.assertTrue(client.data.startswith(b"ipv4:127.0.0.1:"), client.data)
        self.assertTrue(client.data.endswith(f" -> {me}".encode()), client.data)

    async def test_named_unix_client_sockets_tell_clients_apart(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)  # fails if a name file was left over
        path = os.path.join(directory, "backend.sock")
        seen: list[tuple[str | None, Any]] = []

        class WhoAmI(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                key = peer_key(self.transport.getPeer())
                seen.append((key, lookup_client(key) if key else None))
                self.transport.write(b"ok")
                self.transport.loseConnection()

        unix_port = await listen(self, Factory.forProtocol(WhoAmI), f"unix:{path}")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        named = NamedUNIXClientEndpoint(reactor, path, name_dir=directory)
        _, relay, port = await self.relay_to(named)
        clients = [await connect(port) for _ in range(3)]
        for client in clients:
            assert client.transport is not None
            client.transport.write(b"ECHO x")
        for client in clients:
            await client.ended()
        await self.settle(relay)
        await unix_port.stopListening()
        keys = [key for key, _ in seen]
        self.assertEqual(len(set(keys)), 3)
        for key in keys:
            assert key is not None
            self.assertTrue(key.startswith(f"unix:{directory}/c"), key)
        mine = {str(client.local) for client in clients}
        self.assertEqual({str(found) for _, found in seen}, mine)
        self.assertEqual(os.listdir(directory), [])

    async def test_named_unix_endpoint_waits_out_a_full_queue_then_gives_up(
        self,
    ) -> None:
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "busy.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(0)
        fillers: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in [listener, *fillers]])
        self.addCleanup(lambda: os.unlink(path) or os.rmdir(directory))
        while True:  # fill the listen queue
            filler = socket.socket(socket.AF_UNIX)
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(path) != 0:
                break
            self.assertLess(len(fillers), 100)
        # The retries are timed by a task.Clock; the reactor adopts sockets.
        clock = task.Clock()
        named = NamedUNIXClientEndpoint(
            reactor, path, name_dir=directory, timeout=0.2, clock=clock
        )
        attempt = named.connect(Factory.forProtocol(Protocol))
        clock.pump([0.005] * 39)  # 0.195 s of retries: still trying
        self.assertFalse(attempt.called)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.pump([0.005, 0.005])
        with self.assertRaises(error.TimeoutError):
            await attempt
        self.assertGreaterEqual(clock.seconds(), 0.2)
        self.assertEqual(clock.getDelayedCalls(), [])

        # Room in the queue while it retries: it gets through.
        named = NamedUNIXClientEndpoint(
            reactor, path, name_dir=directory, timeout=5, clock=clock
        )
        attempt = named.connect(Factory.forProtocol(Protocol))
        clock.advance(0.005)
        self.assertFalse(attempt.called)
        listener.accept()[0].close()
        clock.advance(0.005)
        protocol = await attempt
        assert protocol.transport is not None
        self.assertTrue(str(protocol.transport.getHost()).find(directory) > 0)
        protocol.transport.loseConnection()

    async def test_named_unix_endpoint_reports_a_missing_server(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        named = NamedUNIXClientEndpoint(
            reactor, os.path.join(directory, "nobody.sock"), name_dir=directory
        )
        with self.assertRaises(error.ConnectError):
            await named.connect(Factory.forProtocol(Protocol))


class BehindTLSTests(unittest.TestCase):
    """The relay as the inner target of a TLS-terminating route."""

    timeout = 60

    async def test_relay_behind_tls_termination_moves_megabytes_both_ways(
        self,
    ) -> None:
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from txcmux.tls import TLSTerminationFactory

        from .tls_support import pki

        size = 4 * MIB
        heard: list[int] = []

        class Exchange(Protocol):
            """Waits for ``size`` bytes after the prefix, answers as many."""

            got = 0

            def dataReceived(self, data: bytes) -> None:
                self.got += len(data)
                if self.got == len(b"ECHO ") + size:
                    heard.append(self.got)
                    assert self.transport is not None
                    self.transport.write(b"r" * size)
                    self.transport.loseConnection()

        backend_port = await listen(self, Factory.forProtocol(Exchange))
        relay = RelayFactory(backend_string(backend_port), name="inner")
        files = pki()
        terminate = TLSTerminationFactory(
            files.server_certificate,
            files.server_key,
            [Route("echo", matchers.prefix(b"ECHO "), relay)],
        )
        mux = ProtocolSwitchingFactory([Route("tls", matchers.tls(), terminate)])
        port = await listen(self, mux)
        options = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(files.ca.read_bytes())
        )
        endpoint = endpoints.wrapClientTLS(
            options,
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        client = Client()
        await endpoints.connectProtocol(endpoint, client)
        assert client.transport is not None
        client.transport.write(b"ECHO " + b"u" * size)
        reason = await client.ended()
        await wait_until(lambda: relay.active == 0)
        self.assertEqual(heard, [len(b"ECHO ") + size])
        self.assertEqual(client.data, b"r" * size)
        self.assertIsInstance(reason.value, error.ConnectionDone)
        self.assertEqual(relay.stats["closed_clean"], 1)
