"""The relay: join a client connection to a fresh connection to a backend.

A route whose factory is a :class:`RelayFactory` passes its connections on,
byte for byte, to another server (a gRPC server, sshd, anything that speaks
over a stream)::

    >>> from twisted.internet.task import Clock
    >>> from txcmux import ProtocolSwitchingFactory, Route, matchers
    >>> ssh = RelayFactory("tcp:host=127.0.0.1:port=22", name="ssh", reactor=Clock())
    >>> mux = ProtocolSwitchingFactory([Route("ssh", matchers.ssh(), ssh)])
    >>> ssh
    <RelayFactory ssh -> tcp:host=127.0.0.1:port=22>

The client's reading is paused until the backend answers; what it sent
meanwhile (the detector's replay) is written to the backend first.  Each
side is the other's streaming producer, so a slow reader pauses the fast
sender instead of filling memory.  A half-close on one side becomes a
half-close on the other (tcp and unix transports); a clean close is passed
on as a clean close after flushing, a reset or abort as an abort.  Between
two plain sockets on Linux the kernel moves the bytes (:mod:`._splice`).

Each backend connection joined is reported to the factory's ``clients``
(:class:`~._clients.IRelayedClients`), by default the process-wide
registry the in-process gRPC server reads.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import _compat
from .._errors import ConfigurationError, seconds_argument
from .._grpc._peers import CLIENTS
from .._handoff import Handoff, IHandoffReceiver
from .._histogram import CONNECT_SECONDS, Histogram
from .._log import describe_peer, log
from .._proxy._send import check_version, header_for
from .._replies import filtering, when_done
from ._clients import IRelayedClients
from ._splice import Pumps
from ._splice import close as _close_pumps
from ._splice import start as _start_pumps


def _close_write(transport: Any) -> None:
    """Half-close ``transport`` if it can, else close it after flushing.

    A transport can if it is a half-closeable descriptor with a
    ``loseWriteConnection`` of its own (tcp, unix, txcmux's TLS termination).
    Twisted's TLS protocol and other protocol wrappers copy the interfaces
    of the socket beneath them and forward unknown attributes to it: there,
    ``loseWriteConnection`` would shut the socket's write side under the TLS
    layer, with no close_notify, so they are closed fully instead.
    """
    own = getattr(type(transport), "loseWriteConnection", None)
    if own is not None and IHalfCloseableDescriptor.providedBy(transport):
        own(transport)
    else:
        transport.loseConnection()


#: How many turns of the reactor a relay waits for both write buffers to be
#: empty at once, to splice after the reply filter is done.
_SPLICE_TRIES = 1000

#: A relayed connection's idle timeout unless told otherwise, in seconds:
#: an hour, as Envoy's TCP proxy has.
DEFAULT_IDLE_TIMEOUT = 3600.0

#: The idle timer looks at a relayed connection this many times per
#: ``idle_timeout``; a connection is closed once that many looks in a row
#: saw no byte move either way, so between ``idle_timeout`` and a quarter
#: more after its last byte.
_IDLE_LOOKS = 4


@implementer(IPushProducer)
class _Reading:
    """One side's reading, as the other side's transport pauses and resumes it.

    Registered instead of the transport itself so that a transport going
    away does not close the other side behind the relay's back (a
    transport calls ``stopProducing`` on its producer as it goes, which on
    a TLS transport would close the socket beneath it without TLS's
    close_notify); the relay decides how the other side ends.
    """

    __slots__ = ("_transport", "paused")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        #: Whether the other side's transport has this side paused: its
        #: buffer is full, its reader is not keeping up.
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


def _unregister(transport: Any) -> None:
    """Stop ``transport`` pausing and resuming its producer, if it has one."""
    with contextlib.suppress(RuntimeError):  # some transports insist on one
        transport.unregisterProducer()


def _abort(transport: Any) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def _error_pending(transport: Any) -> bool:
    """Whether ``transport``'s socket holds an error not yet reported.

    Twisted's poll and epoll reactors report a hang-up that comes without
    readable bytes as a clean end (``CONNECTION_DONE``) even when the kernel
    flags an error with it, so a reset can reach the protocol as an EOF.
    Asked only at an EOF, so it costs one call per connection.
    """
    getsockopt = getattr(getattr(transport, "socket", None), "getsockopt", None)
    if getsockopt is None:
        return False
    try:
        return bool(getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except (OSError, TypeError):
        return False


def _lose(transport: Any) -> None:
    transport.loseConnection()


def _no_delay(transport: Any) -> None:
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        # Not a socket after all: only latency is at stake.
        with contextlib.suppress(Exception):
            set_no_delay(True)


@implementer(IHalfCloseableProtocol)
class _End(Protocol):
    """One side of a relayed connection; ``other`` is the opposite side.

    The data path is one method: each chunk read on this side is written to
    the other side's transport, unchanged.
    """

    other: _End | None = None
    received = 0
    read_closed = False
    write_closed = False
    lost: Failure | None = None
    #: The EOF this side reported was a reset (an error was pending).
    reset_at_eof = False

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.other.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        """This side sent EOF: no more bytes for the other side, half-close it."""
        if _error_pending(self.transport):
            # A reset reported as an EOF: pass it on as the reset it is.
            self.reset_at_eof = True
            _abort(self.transport)
            return
        self.read_closed = True
        consumer = self._other_transport()
        if consumer is not None:
            # Nothing more to produce; unregistering also lets a half-close
            # or close of the other transport finish while it had us paused.
            _unregister(consumer)
            _close_write(consumer)
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        self.write_closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.read_closed and self.write_closed and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        consumer = self._other_transport()
        self.lost = reason
        if consumer is not None:
            _unregister(consumer)
            if isinstance(reason.value, error.ConnectionDone):
                consumer.loseConnection()
            else:
                _abort(consumer)

    def _other_transport(self) -> Any:
        """The other side's transport, while that side is connected."""
        other = self.other
        if other is None or other.lost is not None:
            return None
        return other.transport


@implementer(IHalfCloseableProtocol, IHandoffReceiver)
class RelayProtocol(_End):
    """The client side of one relayed connection (built by RelayFactory)."""

    handoff: Handoff | None = None
    #: The PROXY v2 unique id sent to the backend for this connection, if any.
    unique_id: str | None = None

    def __init__(self, factory: RelayFactory, address: IAddress | None) -> None:
        self.relay = factory
        self._address = address
        self._pending: list[bytes] | None = []
        self._connecting: Deferred[IProtocol] | None = None
        self._forget: Callable[[], object] | None = None
        self._pumps: Pumps | None = None
        self._counted = False
        self._done = False
        self._making = False
        self._connect_started = 0.0
        self._idle: Any = None  # the idle timer's DelayedCall, while relaying
        self._idled = False
        self._readings: tuple[_Reading, _Reading] | None = None

    # -- identity, for logs ----------------------------------------------------

    def handoff_received(self, handoff: Handoff) -> None:
        self.handoff = handoff

    @property
    def route(self) -> str:
        """The route name for logs: the factory's, else the detector's."""
        if self.relay.name is not None:
            return self.relay.name
        return self.handoff.route if self.handoff is not None else "relay"

    @property
    def peer(self) -> IAddress | None:
        """The client's address (as the transport gave it on connecting)."""
        return self._address

    # -- client events -----------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        with contextlib.suppress(Exception):  # an odd transport: keep the build one
            self._address = self.transport.getPeer()
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.relay.active += 1
        self._making = True
        self._connect_started = self.relay.clock.seconds()
        try:
            connecting: Deferred[IProtocol] = defer.maybeDeferred(
                self.relay.endpoint.connect, _BackendFactory(self)
            )
        finally:
            self._making = False
        # Kept before the errback is added: a connect that failed at once
        # has it called here, and it forgets the attempt.
        self._connecting = connecting
        connecting.addTimeout(self.relay.connect_timeout, self.relay.clock)
        connecting.addErrback(self._backend_failed)

    def dataReceived(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self.received += len(data)
            self.other.transport.write(data)  # type: ignore[union-attr]
        else:
            pending.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.other is None:
            self.lost = reason
            if (
                self._pending
                and self._connecting is not None
                and not self._counted
                and isinstance(reason.value, error.ConnectionDone)
            ):
                # A clean end with bytes still for the backend (a TLS
                # client's close_notify, which Twisted's TLS reports as a
                # full close): as a FIN is over TCP, it is the client's last
                # word, not a change of mind.  Deliver them, then close.
                return
            self._pending = None
            connecting, self._connecting = self._connecting, None
            if connecting is not None:
                connecting.cancel()
            if not self._counted:
                self._counted = True
                self.relay.stats["client_left"] += 1
                log.info(
                    "txcmux: route {route}: {peer} left before backend"
                    " {backend} answered",
                    route=self.route,
                    peer=describe_peer(self.peer),
                    backend=self.relay.backend,
                )
            self._finish()
            return
        super().connectionLost(reason)
        self._side_lost()

    # -- the backend -----------------------------------------------------------

    def backend_connected(self, backend: _Backend) -> None:
        """Join ``backend`` to this client: flush the buffer, start relaying."""
        if self._making:
            # The backend answered inside connectionMade (a unix socket
            # connects at once).  The detector's replay only comes after
            # connectionMade: join on the next turn, once it is buffered,
            # so that no spliced byte can overtake it.
            self.relay.clock.callLater(0, self.backend_connected, backend)
            return
        self._connecting = None
        relay = self.relay
        relay.connect_seconds.observe(relay.clock.seconds() - self._connect_started)
        relay.last_error = None
        assert self.transport is not None and backend.transport is not None
        client, server = self.transport, backend.transport
        if self.lost is not None:  # the client left as the backend answered
            if self._pending:
                self._deliver_last(server)
            server.loseConnection()
            return
        self.other, backend.other = backend, self
        self.relay.stats["connected"] += 1
        if relay.idle_timeout:
            self._idle = relay.clock.callLater(
                relay.idle_timeout / _IDLE_LOOKS, self._look_idle, -1, 0
            )
        peer = self.peer
        if peer is not None:
            self._forget = self.relay.clients.relayed(server.getHost(), peer)
        if self.relay.no_delay:
            _no_delay(client)
            _no_delay(server)
        self._readings = (_Reading(server), _Reading(client))
        client.registerProducer(self._readings[0], True)  # type: ignore[attr-defined]
        server.registerProducer(self._readings[1], True)  # type: ignore[attr-defined]
        pending, self._pending = self._pending or [], None
        data = b"".join(pending)
        self.received += len(data)
        # First of all on the backend connection, before any spliced byte.
        data = self._with_proxy_header(data)
        wrote = False
        if not self.read_closed:
            # Between two plain sockets on Linux the kernel moves the bytes.
            self._pumps, wrote = _start_pumps(self, backend, data)
            client.resumeProducing()  # type: ignore[attr-defined]
            if self._pumps is None and filtering(client):
                # The detector's reply filter must see the backend's first
                # answers (HTTP/2's SETTINGS ACK); the kernel can take over
                # once it is done, on a turn of its own, after the write
                # that finished it.
                when_done(client, self._splice_when_filtered)
        if data and not wrote:
            server.write(data)
        if self.read_closed:
            _unregister(server)
            _close_write(server)

    def _with_proxy_header(self, data: bytes) -> bytes:
        """``data`` behind the PROXY header for this client, if the relay
        sends one (and keep its unique id for the close line)."""
        if self.relay.send_proxy is None:
            return data
        header, self.unique_id = header_for(
            self.transport,
            self.handoff,
            self.relay.send_proxy,
            self.relay.proxy_checksum,
        )
        return header + data

    def _deliver_last(self, server: Any) -> None:
        """Write what a client that has left cleanly sent, to the backend
        that has just answered (which is then closed after it)."""
        pending, self._pending = self._pending or [], None
        data = b"".join(pending)
        stats = self.relay.stats
        stats["connected"] += 1
        stats["closed_clean"] += 1
        stats["bytes_up"] += len(data)
        server.write(self._with_proxy_header(data))
        self._counted = True
        log.debug(
            "txcmux: route {route}: {peer} left before backend {backend}"
            " answered; its last {size} bytes delivered",
            route=self.route,
            peer=describe_peer(self.peer),
            backend=self.relay.backend,
            size=len(data),
        )
        self._finish()

    def _splice_when_filtered(self) -> None:
        self.relay.clock.callLater(0, self._splice_later, _SPLICE_TRIES)

    def _splice_later(self, tries: int) -> None:
        """Splice now that the reply filter is done, if both sides still
        relay.  Bytes still waiting in a transport's buffer would be
        overtaken by spliced ones, so while there are some, try again on the
        next turns of the reactor, ``tries`` times at most (a relay busy
        both ways all that time stays on the copying path)."""
        backend = self.other
        if (
            self._pumps is not None
            or backend is None
            or self.lost is not None
            or backend.lost is not None
            or self.read_closed
            or backend.read_closed
        ):
            return
        if _compat.write_pending(self.transport) or _compat.write_pending(
            backend.transport
        ):
            if tries > 1:
                self.relay.clock.callLater(0, self._splice_later, tries - 1)
            return
        self._pumps, _ = _start_pumps(self, backend, b"")

    def _look_idle(self, seen: int, quiet: int) -> None:
        """One look of the idle timer: close the connection after
        ``_IDLE_LOOKS`` looks in a row with no byte moved either way.

        Bytes are counted as each side reads them, spliced or copied, so
        the timer costs nothing per chunk; a side that stops reading stops
        its peer's bytes too, so a stalled connection is idle as well.
        """
        self._idle = None
        backend = self.other
        if backend is None or (self.lost is not None and backend.lost is not None):
            return
        moved = self.received + backend.received
        quiet = quiet + 1 if moved == seen else 0
        if quiet < _IDLE_LOOKS:
            self._idle = self.relay.clock.callLater(
                self.relay.idle_timeout / _IDLE_LOOKS, self._look_idle, moved, quiet
            )
            return
        self._idled = True
        log.info(
            "txcmux: route {route}: relay {peer} <-> {backend} idle for"
            " {idle:g} s; closing both sides",
            route=self.route,
            peer=describe_peer(self.peer),
            backend=self.relay.backend,
            idle=self.relay.idle_timeout,
        )
        # Bytes wait for a side that stopped reading where a transport has
        # its producer paused, or a pump holds bytes in its pipe.
        stuck = any(pump.pending for pump in self._pumps or ()) or any(
            reading.paused for reading in self._readings or ()
        )
        for end in (self, backend):
            if end.lost is None and end.transport is not None:
                # Bytes waiting for a reader that stopped would hold a clean
                # close open for ever: abort instead.
                (_abort if stuck else _lose)(end.transport)

    def _backend_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self.lost is not None and not self._pending:
            return  # we cancelled it: the client had left
        self.relay.stats["backend_failed"] += 1
        self._counted = True
        self.relay.last_error = (
            f"no answer within {self.relay.connect_timeout} s"
            if isinstance(reason.value, defer.TimeoutError)
            else _why(reason)
        )
        log.warn(
            "txcmux: route {route}: backend {backend} failed for {peer}:"
            " {why}; closing the client",
            route=self.route,
            backend=self.relay.backend,
            peer=describe_peer(self.peer),
            why=(
                f"no answer within {self.relay.connect_timeout} s"
                if isinstance(reason.value, defer.TimeoutError)
                else _why(reason)
            ),
        )
        if self.lost is not None:  # the client had left, its bytes are lost
            self._pending = None
            self._finish()
        elif self.transport is not None:
            self.transport.loseConnection()

    def _side_lost(self) -> None:
        """One side went; once both have, count and log the connection."""
        backend = self.other
        if backend is None or backend.lost is None or self.lost is None:
            return
        first = backend if getattr(backend, "lost_first", False) else self
        reason = first.lost
        assert reason is not None
        clean = isinstance(reason.value, error.ConnectionDone)
        stats = self.relay.stats
        idle, self._idle = self._idle, None
        if idle is not None and idle.active():
            idle.cancel()
        if self._idled:
            stats["idle_timeout"] += 1
        else:
            stats["closed_clean" if clean else "closed_error"] += 1
        stats["bytes_up"] += self.received
        stats["bytes_down"] += backend.received
        forget, self._forget = self._forget, None
        if forget is not None:
            forget()
        _close_pumps(self._pumps)
        self._pumps = None
        (log.debug if clean else log.info)(
            "txcmux: route {route}: relay {peer} <-> {backend} closed {how}"
            " by the {side} ({up} bytes up, {down} down){id}",
            id="" if self.unique_id is None else f"; PROXY id {self.unique_id}",
            unique_id=self.unique_id,
            route=self.route,
            peer=describe_peer(self.peer),
            backend=self.relay.backend,
            how=(
                "after the idle timeout"
                if self._idled
                else "cleanly"
                if clean
                else "on error (connection reset)"
                if first.reset_at_eof
                else f"on error ({_why(reason)})"
            ),
            side="backend" if first is backend else "client",
            up=self.received,
            down=backend.received,
        )
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self.relay.active -= 1


class _Backend(_End):
    """The backend side of one relayed connection."""

    lost_first = False

    def __init__(self, client: RelayProtocol) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.backend_connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client.lost is None:
            self.lost_first = True
        super().connectionLost(reason)
        self.client._side_lost()


class _BackendFactory(ClientFactory):
    """Builds the backend side for one client; used once."""

    noisy = False

    def __init__(self, client: RelayProtocol) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> _Backend:
        backend = _Backend(self.client)
        backend.factory = self
        return backend


def _why(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, (error.TimeoutError, defer.TimeoutError)):
        return "timed out"
    text = str(value).strip() or type(value).__name__
    return text


def _describe_endpoint(endpoint: object) -> str:
    if isinstance(endpoint, str):
        return endpoint
    return _compat.endpoint_address(endpoint) or repr(endpoint)


class RelayFactory(Factory):
    """A server factory whose protocol relays each connection to a backend.

    ``endpoint`` is a Twisted client endpoint string
    (``tcp:host=127.0.0.1:port=22``, ``unix:path=/run/app.sock``) or any
    ``IStreamClientEndpoint``.  ``name`` names the route in log lines
    (default: the route the detector chose).  ``connect_timeout`` is how
    many seconds the backend has to accept before the client is closed.
    ``idle_timeout`` closes a relayed connection once no byte has moved
    either way for that many seconds (up to a quarter more: the timer
    looks four times per timeout); 0 or None turns it off.  The default,
    an hour, is Envoy's for its TCP proxy.  A connection with bytes
    waiting for a side that stopped reading is aborted (a reset); an idle
    one closed cleanly.
    ``no_delay`` turns Nagle's algorithm off on tcp sides (what gRPC and
    other request-response protocols want).  ``reactor`` (the global one by
    default) parses endpoint strings: the endpoints made connect with it.
    ``clock`` times the connect (default: ``reactor``).  ``clients`` is told
    which client each backend connection carries (default: the process-wide
    registry behind ``txcmux.relay.lookup_client``).  ``send_proxy``
    (``"v1"`` or ``"v2"``) writes a PROXY protocol header for the client to
    the backend before any of the client's bytes (see
    ``txcmux._proxy._send``); ``proxy_checksum`` adds a CRC32C TLV to v2.

    ``stats`` counts ``connected`` (backend reached), ``backend_failed``,
    ``client_left`` (client gone before the backend answered),
    ``closed_clean``, ``closed_error`` (ended by a reset or abort on either
    side), ``idle_timeout`` (closed by the idle timeout), ``bytes_up``
    (client to backend) and ``bytes_down``, added when a connection ends.
    ``active`` is the number of connections not yet fully closed.
    ``connect_seconds`` is a :class:`~txcmux._histogram.Histogram` of the
    time the backend took to accept; ``last_error`` says why the last
    attempt failed, or is None once one succeeds.
    """

    protocol = RelayProtocol
    noisy = False

    def __init__(
        self,
        endpoint: str | IStreamClientEndpoint,
        *,
        reactor: IReactorTime | None = None,
        clock: IReactorTime | None = None,
        name: str | None = None,
        connect_timeout: float = 10,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        no_delay: bool = True,
        clients: IRelayedClients | None = None,
        send_proxy: str | None = None,
        proxy_checksum: bool = False,
    ) -> None:
        where = f"relay {name!r}" if name else "relay"
        self.send_proxy = check_version(where, send_proxy)
        self.proxy_checksum = bool(proxy_checksum)
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if isinstance(endpoint, str):
            try:
                parsed = endpoints.clientFromString(reactor, endpoint)  # type: ignore[no-untyped-call]
            except Exception as problem:
                raise ConfigurationError(
                    f"{where}: cannot use {endpoint!r} as a backend endpoint"
                    f" ({problem}); expected a client endpoint string such as"
                    " 'tcp:host=127.0.0.1:port=50051' or 'unix:path=/run/app.sock'"
                ) from problem
        elif IStreamClientEndpoint.providedBy(endpoint):
            parsed = endpoint
        else:
            raise ConfigurationError(
                f"{where}: endpoint is {endpoint!r}; expected an endpoint string"
                " or an IStreamClientEndpoint"
            )
        connect_timeout = seconds_argument(where, "connect_timeout", connect_timeout)
        idle_timeout = seconds_argument(where, "idle_timeout", idle_timeout, off="0")
        if clients is not None and not IRelayedClients.providedBy(clients):
            raise ConfigurationError(
                f"{where}: clients is {clients!r}; expected an IRelayedClients"
                " (an object with relayed(local, client))"
            )
        self.endpoint: IStreamClientEndpoint = parsed
        self._described = endpoint if isinstance(endpoint, str) else None
        self.name = name
        self.connect_timeout = connect_timeout
        self.idle_timeout: float = idle_timeout
        self.no_delay = no_delay
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.clients: IRelayedClients = clients if clients is not None else CLIENTS
        self.stats: Counter[str] = Counter()
        self.active = 0
        self.connect_seconds = Histogram(CONNECT_SECONDS)
        self.last_error: str | None = None

    @property
    def backend(self) -> str:
        """The backend endpoint, as log lines name it."""
        if self._described is not None:
            return self._described
        return _describe_endpoint(self.endpoint)

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:
        """The client side of one relayed connection."""
        relay = RelayProtocol(self, addr)
        relay.factory = self
        return relay

    def __repr__(self) -> str:
        name = f" {self.name}" if self.name else ""
        return f"<RelayFactory{name} -> {self.backend}>"
