"""The relay's splice(2) path: used between plain sockets, exact, half-close kept."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from typing import Any

import pytest
from twisted.internet import defer, endpoints, main, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux._relay import _relay, _splice
from txcmux.matchers import EMPTY_SETTINGS, PREFACE
from txcmux.relay import NamedUNIXClientEndpoint, RelayFactory
from txcmux.testing import SETTINGS_ACK

from .grpc_support.net import listen, wait_until
from .logs import captured_logs

if not sys.platform.startswith("linux") or not hasattr(os, "splice"):
    pytest.skip("splice(2) is a Linux system call", allow_module_level=True)


@implementer(IHalfCloseableProtocol)
class HashSink(protocol.Protocol):
    """Hashes everything until the client half-closes, then answers the digest."""

    def connectionMade(self) -> None:
        self.digest = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(self.digest.hexdigest().encode())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class Sender(protocol.Protocol):
    """Sends its payload, half-closes, and collects the answer."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.answer = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()  # both directions are done now

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.answer)


def send(port: int, payload: bytes) -> defer.Deferred[bytes]:
    """Send ``payload`` to 127.0.0.1:``port``, half-close; fires with the answer."""
    sender = Sender(payload)
    connected = endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), sender
    )
    return connected.addCallback(lambda _: sender.done)


class Starts:
    """Each splice the relay starts (patched in for one test): what
    ``_start_pumps`` was given and what it returned."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.calls: list[tuple[tuple[Any, ...], _splice.Pumps | None]] = []
        self._start = _relay._start_pumps
        case.patch(_relay, "_start_pumps", self._record)

    def _record(self, *arguments: Any) -> tuple[_splice.Pumps | None, bool]:
        pumps, wrote = self._start(*arguments)
        self.calls.append((arguments, pumps))
        return pumps, wrote

    @property
    def spliced(self) -> list[bool]:
        """Whether each start spliced."""
        return [pumps is not None for _, pumps in self.calls]

    @property
    def pumps(self) -> list[_splice._Pump]:
        """Every pump started, each connection's forward one first."""
        return [pump for _, pumps in self.calls for pump in pumps or ()]


class SpliceTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_bulk_bytes_are_spliced_exactly_and_half_close_is_kept(self):  # type: ignore[no-untyped-def]
        starts = Starts(self)
        sink = yield defer.ensureDeferred(
            listen(self, protocol.Factory.forProtocol(HashSink))
        )
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={sink.getHost().port}")
        mux = ProtocolSwitchingFactory(
            [Route("bulk", matchers.prefix(b"BULK "), relay)]
        )
        port = yield defer.ensureDeferred(listen(self, mux))

        payload = b"BULK " + os.urandom(8 * 1024 * 1024)
        answer = yield send(port.getHost().port, payload)
        self.assertEqual(answer, hashlib.sha256(payload).hexdigest().encode())
        self.assertEqual(starts.spliced, [True])  # this connection was spliced
        self.assertEqual(relay.stats["bytes_up"], len(payload))
        self.assertEqual(relay.stats["bytes_down"], 64)
        # Once both sides are gone the transports have their own methods back.
        yield defer.ensureDeferred(wait_until(lambda: relay.active == 0))
        for transport in (
            end.transport for args, _ in starts.calls for end in args[:2]
        ):
            self.assertNotIn("doRead", vars(transport))
            self.assertNotIn("doWrite", vars(transport))

    @defer.inlineCallbacks
    def test_replay_goes_first_when_the_backend_connects_at_once(self):  # type: ignore[no-untyped-def]
        # A named unix socket connects inside the relay's connectionMade,
        # before the detector replays what it read: the replay must still be
        # the first thing the spliced backend gets.
        starts = Starts(self)
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "sink.sock")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        yield defer.ensureDeferred(
            listen(self, protocol.Factory.forProtocol(HashSink), f"unix:{path}")
        )
        relay = RelayFactory(NamedUNIXClientEndpoint(reactor, path, name_dir=directory))
        mux = ProtocolSwitchingFactory(
            [Route("bulk", matchers.prefix(b"BULK "), relay)]
        )
        port = yield defer.ensureDeferred(listen(self, mux))

        payload = b"BULK " + os.urandom(1024 * 1024)
        answer = yield send(port.getHost().port, payload)
        self.assertEqual(answer, hashlib.sha256(payload).hexdigest().encode())
        firsts = [args[2] if len(args) > 2 else b"" for args, _ in starts.calls]
        self.assertEqual(len(firsts), 1)
        self.assertTrue(firsts[0].startswith(b"BULK "), firsts)


class EchoAfterSettings(protocol.Protocol):
    """An HTTP/2 server as far as the start goes: its SETTINGS and the ACK of
    the client's, then every byte it gets echoed back."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if not getattr(self, "greeted", False):
            self.greeted = True
            self.transport.write(EMPTY_SETTINGS + SETTINGS_ACK)
        self.transport.write(data)


class StrictOpener(protocol.Protocol):
    """Sends the preface and SETTINGS, waits for the server's, then a gRPC
    request's HEADERS and ``payload``; collects everything that comes back."""

    def __init__(self, payload: bytes, expected: int) -> None:
        self.payload, self.expected = payload, expected
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(PREFACE + EMPTY_SETTINGS)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        first = not self.received
        self.received += data
        if first:  # the detector's SETTINGS (and its ACK of ours): go on
            self.transport.write(SETTINGS_ACK + GRPC_HEADERS + self.payload)
        if len(self.received) >= self.expected:
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


def _grpc_headers() -> bytes:
    import hpack

    block = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/x.Y/Z"),
         (":authority", "localhost"), ("content-type", "application/grpc")]
    )  # fmt: skip
    return len(block).to_bytes(3, "big") + b"\x01\x04\x00\x00\x00\x01" + block


GRPC_HEADERS = _grpc_headers()


class SpliceAfterTheReplyFilterTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_grpc_route_splices_once_the_reply_filter_is_done(self):  # type: ignore[no-untyped-def]
        # Behind grpc() the detector answered the client's SETTINGS; the
        # backend's own ACK is removed by the reply filter, so the relay
        # cannot splice at first.  Once the filter is done it must.
        starts = Starts(self)
        backend = yield defer.ensureDeferred(
            listen(self, protocol.Factory.forProtocol(EchoAfterSettings))
        )
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={backend.getHost().port}")
        mux = ProtocolSwitchingFactory([Route("grpc", matchers.grpc(), relay)])
        port = yield defer.ensureDeferred(listen(self, mux))

        payload = os.urandom(4 * 1024 * 1024)
        replayed = PREFACE + EMPTY_SETTINGS + GRPC_HEADERS  # less the client's ACK
        # The detector's SETTINGS and ACK, the backend's SETTINGS (its ACK
        # kept back), then the echo of all the backend got.
        expected = EMPTY_SETTINGS + SETTINGS_ACK + EMPTY_SETTINGS + replayed + payload
        client = StrictOpener(payload, len(expected))
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            client,
        )
        received = yield client.done
        self.assertEqual(
            hashlib.sha256(received).digest(), hashlib.sha256(expected).digest()
        )
        self.assertEqual(starts.spliced, [False, True])
        yield defer.ensureDeferred(wait_until(lambda: relay.active == 0))


class ResetAtOnce(protocol.Protocol):
    """A backend that resets its connection on the first bytes it gets."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.abortConnection()


@implementer(IHalfCloseableProtocol)
class Flooder(protocol.Protocol):
    """Writes ``size`` bytes at once; ``ended`` fires with how its connection
    ended: ``fin`` if a FIN came first, else the name of the error."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fin = False
        self.ended: defer.Deferred[str] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"RSET " + b"x" * self.size)

    def readConnectionLost(self) -> None:
        self.fin = True
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.ended.callback("fin" if self.fin else type(reason.value).__name__)


async def resetting_route(
    case: unittest.TestCase,
) -> tuple[endpoints.TCP4ClientEndpoint, RelayFactory]:
    """A mux relaying ``RSET `` to a :class:`ResetAtOnce` backend: an
    endpoint to reach it, and the relay factory."""
    backend = await listen(case, protocol.Factory.forProtocol(ResetAtOnce))
    relay = RelayFactory(f"tcp:host=127.0.0.1:port={backend.getHost().port}")
    mux = ProtocolSwitchingFactory([Route("reset", matchers.prefix(b"RSET "), relay)])
    port = await listen(case, mux)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    return endpoint, relay


class ResetTests(unittest.TestCase):
    """A backend's reset reaches the client as a reset, never after a FIN."""

    timeout = 60

    @defer.inlineCallbacks
    def test_a_backend_reset_while_the_client_sends_resets_the_client(self):  # type: ignore[no-untyped-def]
        # The client's bytes are being spliced to the backend when it
        # resets: a write into the backend socket reports the reset, after
        # which a read there sees only EOF.  That EOF is no clean end: the
        # client must get a reset, not a FIN, every time.
        starts = Starts(self)
        # Whether the relay took a backend's end for a clean EOF (and so
        # would half-close the client with a FIN).
        eofs: list[object] = []
        real_eof = _relay._Backend.readConnectionLost

        def recording_eof(end):  # type: ignore[no-untyped-def]
            eofs.append(end)
            real_eof(end)

        self.patch(_relay._Backend, "readConnectionLost", recording_eof)
        endpoint, relay = yield defer.ensureDeferred(resetting_route(self))
        ends = []
        for _ in range(20):
            client = Flooder(4 * 1024 * 1024)
            yield endpoints.connectProtocol(endpoint, client)
            ends.append((yield client.ended))
        self.assertIn(True, starts.spliced)
        self.assertEqual(eofs, [])
        self.assertEqual(ends, ["ConnectionLost"] * 20)
        yield defer.ensureDeferred(wait_until(lambda: relay.active == 0))
        self.assertEqual(relay.stats["closed_error"], 20)

    @defer.inlineCallbacks
    def test_a_reset_reported_as_eof_resets_the_client(self):  # type: ignore[no-untyped-def]
        # Twisted's epoll reactor calls a hang-up without readable bytes a
        # clean end (CONNECTION_DONE) even with an error flagged beside it.
        # Made to happen every time here: the backend socket's read reports
        # EOF without reading, while the reset is pending on it.
        self.patch(_splice, "_SPLICE", None)  # the copying path
        real_made = _relay._Backend.connectionMade

        def made(end):  # type: ignore[no-untyped-def]
            end.transport.doRead = lambda: main.CONNECTION_DONE
            real_made(end)

        self.patch(_relay._Backend, "connectionMade", made)
        endpoint, relay = yield defer.ensureDeferred(resetting_route(self))
        with captured_logs() as lines:
            client = Flooder(10)
            yield endpoints.connectProtocol(endpoint, client)
            ended = yield client.ended
            yield defer.ensureDeferred(wait_until(lambda: relay.active == 0))
        self.assertEqual(ended, "ConnectionLost")
        self.assertEqual(relay.stats["closed_error"], 1)
        self.assertEqual(relay.stats["closed_clean"], 0)
        self.assertIn(
            "closed on error (connection reset) by the backend", "\n".join(lines)
        )


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Asker(protocol.Protocol):
    """Sends ``question`` and fires ``answered`` once it has come back whole."""

    def __init__(self, question: bytes) -> None:
        self.question = question
        self.received = b""
        self.answered: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.question)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.question) and not self.answered.called:
            self.answered.callback(self.received)


class PipePoolTests(unittest.TestCase):
    """A pump holds a pipe only while bytes are in it."""

    timeout = 60

    def test_only_empty_pipes_are_kept_and_no_more_than_keep(self) -> None:
        pipes = _splice._Pipes(keep=1)
        first, second, third = pipes.take(), pipes.take(), pipes.take()
        os.write(first[1], b"left over")
        pipes.discard(first)  # bytes in it: closed, never reused
        self.assertRaises(OSError, os.fstat, first[0])
        pipes.give(second)
        pipes.give(third)  # over keep: closed
        self.assertRaises(OSError, os.fstat, third[1])
        self.assertEqual(pipes.take(), second)
        pipes.give(second)
        pipes.forget()
        self.assertRaises(OSError, os.fstat, second[0])
        self.assertEqual(pipes.free, [])

    @defer.inlineCallbacks
    def _relayed(self, route_prefix: bytes):  # type: ignore[no-untyped-def]
        """A mux with one spliced relay route to an echo server; its port,
        the relay factory and its :class:`Starts`."""
        starts = Starts(self)
        backend = yield defer.ensureDeferred(
            listen(self, protocol.Factory.forProtocol(Echo))
        )
        relay = RelayFactory(f"tcp:host=127.0.0.1:port={backend.getHost().port}")
        mux = ProtocolSwitchingFactory(
            [Route("echo", matchers.prefix(route_prefix), relay)]
        )
        port = yield defer.ensureDeferred(listen(self, mux))
        return port.getHost().port, relay, starts

    @defer.inlineCallbacks
    def _ask(self, port: int, question: bytes):  # type: ignore[no-untyped-def]
        asker = Asker(question)
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), asker
        )
        answer = yield asker.answered
        self.assertEqual(answer, question)
        return asker

    @defer.inlineCallbacks
    def _close(self, askers, relay):  # type: ignore[no-untyped-def]
        for asker in askers:
            asker.transport.loseConnection()
        yield defer.ensureDeferred(wait_until(lambda: relay.active == 0))

    @defer.inlineCallbacks
    def test_idle_spliced_connections_hold_no_pipe(self):  # type: ignore[no-untyped-def]
        port, relay, starts = yield self._relayed(b"ECHO ")
        askers = []
        for index in range(20):
            askers.append((yield self._ask(port, b"ECHO " + b"%d" % index * 1000)))
        pumps = starts.pumps
        self.assertEqual(len(pumps), 40)  # every connection spliced
        # All 20 are open and answered: no pump holds a pipe.
        self.assertEqual([p.pipe for p in pumps], [_splice._NO_PIPE] * 40)
        # The answers came back through the pumps (the questions may have
        # gone in the detector's replay).
        self.assertTrue(all(backward.moved for backward in pumps[1::2]))
        self.assertLessEqual(len(_splice._PIPES.free), _splice._PIPES.keep)
        yield self._close(askers, relay)

    @defer.inlineCallbacks
    def test_a_bulk_direction_keeps_its_grown_pipe(self):  # type: ignore[no-untyped-def]
        port, relay, starts = yield self._relayed(b"BULK ")
        asker = yield self._ask(port, b"BULK " + os.urandom(3 * 1024 * 1024))
        pumps = starts.pumps
        self.assertEqual(len(pumps), 2)
        self.assertEqual([p.grown for p in pumps], [True, True])
        held = [p.pipe for p in pumps]
        self.assertNotIn(_splice._NO_PIPE, held)
        yield self._close([asker], relay)
        for read_end, _ in held:  # a grown pipe is closed, not kept
            self.assertRaises(OSError, os.fstat, read_end)
        self.assertEqual([pipe for pipe in held if pipe in _splice._PIPES.free], [])

    @defer.inlineCallbacks
    def test_out_of_descriptors_a_pump_waits_and_tries_again(self):  # type: ignore[no-untyped-def]
        port, relay, starts = yield self._relayed(b"ECHO ")
        real_take = _splice._PIPES.take
        refusals: list[float] = []
        until = reactor.seconds() + 0.35  # type: ignore[attr-defined]

        def take() -> tuple[int, int]:
            now = reactor.seconds()  # type: ignore[attr-defined]
            if now < until:
                refusals.append(now)
                raise OSError(24, "Too many open files")
            return real_take()

        self.patch(_splice._PIPES, "take", take)
        question = b"ECHO " + os.urandom(200_000)
        asker = yield self._ask(port, question)  # exact, despite the refusals
        # A pump that spun would be refused thousands of times; one that
        # waits 0.1 s between tries, a few times per direction.
        self.assertTrue(starts.pumps)
        self.assertGreater(len(refusals), 0)
        self.assertLessEqual(len(refusals), 2 * (0.35 / _splice._RETRY + 1))
        yield self._close([asker], relay)

    def test_a_forked_child_keeps_none_of_the_parents_pipes(self) -> None:
        pipe = _splice._PIPES.take()
        _splice._PIPES.give(pipe)
        self.assertIn(pipe, _splice._PIPES.free)
        child = os.fork()
        if child == 0:
            os._exit(0 if not _splice._PIPES.free else 1)
        _, status = os.waitpid(child, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertIn(pipe, _splice._PIPES.free)  # the parent's are its own
