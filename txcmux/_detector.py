"""The detector: the protocol every connection starts with.

It is the I/O around the pure decision step (``_decision.py``): it buffers
what the client sends, reads the listener's prelude header if it has one
(``_prelude.py``), asks the decision step what the bytes so far mean, writes
what a waiting matcher wants the client to get, and on a decision hands the
live transport to the route's protocol, replaying the buffered bytes to it
once.  After that the transport calls the new protocol directly; the
detector only forwards events for transports it could not re-point (see
``_handoff.install``), and while an answer filter still removes the
client's answer to what the detector sent (see
:class:`~txcmux.matchers.Verdict`).  Where the detector answered the
client for the server, the target's own answers to the same bytes are
removed from what it writes (:mod:`._replies`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ._connections import DRAINING, MAX_PER_IP, ROUTE_MAX_CONNECTIONS
from ._decision import Decider, Reason, Reject, Stat, Wait, closed
from ._handoff import Handoff, IHandoffReceiver, install, present_client
from ._log import SHOWN_BYTES, describe_peer, log
from ._prelude import PreludeRead
from ._replies import filter_writes
from ._route import Route
from .matchers._verdict import AnswerFilter, FilterChain, Verdict, flush_filter

if TYPE_CHECKING:
    from ._factory import ProtocolSwitchingFactory

# Stats keys as plain strings (the counter's keys stay readable).
_ACCEPTED = Stat.ACCEPTED.value
_TIMEOUT_FALLBACK = Stat.TIMEOUT_FALLBACK.value
_CLOSED_BY_PEER = Stat.CLOSED_BY_PEER.value
_CLOSED_BY_LISTENER = Stat.CLOSED_BY_LISTENER.value
_CLOSED_LIMIT = closed(Reason.LIMIT)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A connection the detector closed without handing it to any route.

    ``reason`` is a :class:`~txcmux.Reason` (a string enum: ``no_match``,
    ``too_long``, ``timeout``, ``limit``, ...); ``detail`` says it in
    words; ``data`` is every byte the client had sent; ``time`` when
    (seconds since the epoch).
    """

    reason: Reason
    detail: str
    peer: IAddress | None
    data: bytes
    time: float = field(default_factory=time.time)


@implementer(IHalfCloseableProtocol)
class Detector(Protocol):
    """Sniffs one connection and switches it to the route that matches."""

    # Class-level defaults: most connections are decided on their first read
    # and never set these (each instance attribute costs on every connection).
    _buffer = b""
    _ruled_out: frozenset[int] = frozenset()
    _sent: tuple[Verdict, ...] = ()
    _target: IProtocol | None = None
    _filter: AnswerFilter | None = None
    _closing = False
    _in_prelude = False
    _client: IAddress | None = None
    _prelude_info: object = None
    _started = 0.0
    _ip: str | None = None  # the client address the per-IP limit counts
    # The decider bound to this connection's addresses, where a route's
    # matchers decide on them; else the factory's, shared by every connection.
    _bound: Decider | None = None

    def __init__(self, switch: ProtocolSwitchingFactory, address: IAddress) -> None:
        self._switch = switch
        self._address = address

    # -- events from the transport -------------------------------------------

    def connectionMade(self) -> None:
        switch = self._switch
        switch.stats[_ACCEPTED] += 1
        connections = switch.connections
        ip = None
        if switch.prelude is None and connections.limits.max_connections_per_ip:
            ip = getattr(self._address, "host", None)
        refused = connections.admit(self, ip)
        if refused == DRAINING:
            self._reject(Reject(Reason.DRAINING, "the service is draining"))
            return
        if refused is not None:
            self._refuse(refused)
            return
        self._ip = ip
        if switch.timing:
            self._started = switch.clock.seconds()
        if switch.deadlines is not None:
            switch.deadlines.add(self)
        if switch.prelude is not None:
            self._in_prelude = True
        elif self._decider(None).decides_on_connect:
            self._decide()

    def dataReceived(self, data: bytes) -> None:
        if self._target is not None:
            self._forward(data)
        elif not self._closing:
            self._buffer += data
            if self._in_prelude:
                self._read_prelude(eof=False)
            else:
                self._decide()

    def readConnectionLost(self) -> None:
        if self._target is not None:
            self._forward_eof()
        elif self._closing:
            pass
        elif self._in_prelude:
            self._read_prelude(eof=True)
        else:
            self._decide(eof=True)

    def writeConnectionLost(self) -> None:
        half_closeable = IHalfCloseableProtocol(self._target, None)
        if half_closeable is not None:
            half_closeable.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_waiting()
        if self._target is not None:
            self._target.connectionLost(reason)
            return
        if self._closing:
            return
        self._closing = True
        self._switch.connections.released(self, self._ip)
        # A wrapping transport (Twisted's haproxy: endpoint refusing a
        # missing header) may have closed the connection before any byte
        # reached us; a client that went away leaves ``disconnecting`` unset.
        by_listener = bool(getattr(self.transport, "disconnecting", False))
        counter = _CLOSED_BY_LISTENER if by_listener else _CLOSED_BY_PEER
        self._switch.stats[counter] += 1
        log.info(
            "txcmux: {peer} {who} while undecided ({size} bytes seen: {head})",
            peer=describe_peer(self._peer()),
            who=(
                "was closed by the listener's wrapping transport (for a"
                " haproxy: endpoint: no valid PROXY header)"
                if by_listener
                else "closed the connection"
            ),
            size=len(self._buffer),
            head=self._buffer[:SHOWN_BYTES],
        )

    # -- the prelude -----------------------------------------------------------

    def _read_prelude(self, eof: bool) -> None:
        """Read the listener's prelude header; then match on what follows."""
        prelude = self._switch.prelude
        assert prelude is not None
        buffered = self._buffer
        try:
            result = prelude(buffered, self._peer())
        except Exception:
            log.failure("txcmux: prelude {prelude} raised", prelude=prelude.name)
            result = Reject(
                Reason.NO_MATCH, f"the {prelude.name} header was unreadable"
            )
        if isinstance(result, Reject):
            self._reject(result)
        elif isinstance(result, PreludeRead):
            self._in_prelude = False
            if result.client is not None:
                self._client = result.client
                if not self._count_client(result.client):
                    return
            if result.info is not None:
                self._prelude_info = result.info
            present_client(
                self.transport, result.client, result.destination, result.info
            )
            self._buffer = buffered[result.consumed :]
            decider = self._decider(result)
            if self._buffer or eof or decider.decides_on_connect:
                self._decide(eof)
        elif len(buffered) >= prelude.max_bytes:
            self._reject(
                Reject(
                    Reason.TOO_LONG,
                    f"the {prelude.name} header is still incomplete after"
                    f" {len(buffered)} bytes",
                )
            )
        elif eof:
            self._reject(
                Reject(
                    Reason.NO_MATCH,
                    f"the client closed its side inside the {prelude.name} header",
                )
            )

    # -- deciding ------------------------------------------------------------

    def _decide(self, eof: bool = False) -> None:
        """Ask the decision step about the bytes so far; act on the answer."""
        decider = self._bound or self._switch.decider
        decision = decider.decide(self._buffer, eof, self._ruled_out)
        if type(decision) is Route:
            self._hand_over(decision, eof)
        elif type(decision) is Wait:
            self._ruled_out = decision.ruled_out
            for probe in decision.probes:
                self._send(probe)
        else:
            assert isinstance(decision, Reject)
            self._reject(decision)

    def _send(self, probe: Verdict) -> None:
        """Write what ``probe`` sends that was not written yet.

        A send that extends one written before (a matcher answering for the
        server as more frames arrive) takes its place, and only the rest is
        written.
        """
        send = probe.send
        sent = self._sent
        for index, earlier in enumerate(sent):
            if earlier.send == send:
                return
            if send.startswith(earlier.send):
                self._sent = (*sent[:index], probe, *sent[index + 1 :])
                assert self.transport is not None
                self.transport.write(send[len(earlier.send) :])
                return
        self._sent = (*sent, probe)
        assert self.transport is not None
        self.transport.write(send)

    def _decider(self, prelude: PreludeRead | None) -> Decider:
        """The decider for this connection, bound to its addresses if need be.

        Called once, when matching starts (after the ``prelude``, if the
        listener reads one: its client and destination are the addresses).
        """
        decider = self._switch.decider
        if not decider.binds:
            return decider
        local = prelude.destination if prelude is not None else None
        if local is None and self.transport is not None:
            try:
                local = self.transport.getHost()
            except Exception:  # an odd test transport: no local address known
                local = None
        self._bound = decider = decider.bind(self._peer(), local)
        return decider

    def timed_out(self) -> None:
        """The sniff timeout passed undecided: reject, or hand to ``on_timeout``."""
        if self._target is not None or self._closing:
            return
        switch = self._switch
        decision = switch.decider.timed_out(switch.sniff_timeout)
        if isinstance(decision, Reject):
            self._reject(decision)
        else:
            switch.stats[_TIMEOUT_FALLBACK] += 1
            self._hand_over(decision, eof=False)

    # -- switching -----------------------------------------------------------

    def _hand_over(self, route: Route, eof: bool) -> None:
        """Give the transport to ``route``'s protocol; replay the buffer once."""
        self._stop_waiting()
        limit = route.max_connections
        if limit is not None and route.load.active >= limit:
            self._switch.connections.released(self, self._ip)
            self._refuse(ROUTE_MAX_CONNECTIONS, route)
            return
        peer = self._peer()
        buffered = self._buffer
        handoff = None
        if route.picks_by_handoff:
            handoff = self._handoff(route, peer, buffered)
            protocol = route.factory.protocol_for_handoff(handoff)  # type: ignore[attr-defined]
        else:
            protocol = route.factory.buildProtocol(peer)
        if protocol is None:
            self._reject(
                Reject(
                    Reason.NO_PROTOCOL,
                    f"the factory of route {route.name!r} returned None",
                )
            )
            return
        switch = self._switch
        switch.connections.decided(self, self._ip, route, protocol)
        self._buffer = b""
        switch.stats[route.counter] += 1
        if switch.timing:
            elapsed = switch.clock.seconds() - self._started
            if switch.decision_seconds is not None:
                switch.decision_seconds.observe(elapsed)
                switch.decision_bytes.observe(len(buffered))
            if switch.log_decisions:
                log.debug(
                    "txcmux: {peer}: route {route} after {size} bytes in {ms:.3f} ms",
                    peer=describe_peer(peer),
                    route=route.name,
                    size=len(buffered),
                    ms=elapsed * 1000,
                )
        replay = buffered
        if self._sent:
            replay = self._start_filtering(buffered)
            self._filter_replies()
        if IHandoffReceiver.providedBy(protocol):
            if handoff is None:
                handoff = self._handoff(route, peer, buffered)
            protocol.handoff_received(handoff)
        self._target = protocol
        if self._filter is None:
            install(self.transport, self, protocol)
        assert self.transport is not None
        protocol.makeConnection(self.transport)
        if replay:
            protocol.dataReceived(replay)
        if eof:
            self._forward_eof()

    def _start_filtering(self, buffered: bytes) -> bytes:
        """Apply the answer filters of what was sent; return the replay."""
        filters = [
            make() for make in (sent.answer_filter for sent in self._sent) if make
        ]
        for answer_filter in filters:
            buffered = answer_filter.feed(buffered)
        pending = [f for f in filters if not f.done]
        if len(pending) == 1:
            self._filter = pending[0]
        elif pending:
            self._filter = FilterChain(pending)
        return buffered

    def _filter_replies(self) -> None:
        """Keep from the client the target's answers the detector gave already."""
        filters = [make() for make in (s.reply_filter for s in self._sent) if make]
        if filters:
            filter_writes(
                self.transport,
                filters[0] if len(filters) == 1 else FilterChain(filters),
            )

    def _handoff(self, route: Route, peer: IAddress, buffered: bytes) -> Handoff:
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        return Handoff(
            route.name,
            peer,
            buffered,
            b"".join(sent.send for sent in self._sent),
            negotiated,
            self._prelude_info,
        )

    def _forward(self, data: bytes) -> None:
        assert self._target is not None
        answer_filter = self._filter
        if answer_filter is not None:
            data = answer_filter.feed(data)
            if answer_filter.done:
                self._filter = None
                install(self.transport, self, self._target)
        if data:
            self._target.dataReceived(data)

    def _forward_eof(self) -> None:
        answer_filter = self._filter
        if answer_filter is not None and self._target is not None:
            # No more bytes will come: what the filter held back (a frame
            # header cut short) is the client's last, and the target's.
            self._filter = None
            held = flush_filter(answer_filter)
            if held:
                self._target.dataReceived(held)
        half_closeable = IHalfCloseableProtocol(self._target, None)
        if half_closeable is not None:
            half_closeable.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    # -- closing -------------------------------------------------------------

    def _reject(self, rejection: Reject) -> None:
        """Close a connection no route will take: count, log, tell the hook."""
        self._stop_waiting()
        self._closing = True
        self._switch.connections.released(self, self._ip)
        seen = self._buffer
        self._buffer = b""
        reason, detail = rejection
        self._switch.stats[closed(reason)] += 1
        log.info(
            "txcmux: closing connection from {peer}: {detail}"
            " ({size} bytes seen: {head})",
            peer=describe_peer(self._peer()),
            detail=detail,
            size=len(seen),
            head=seen[:SHOWN_BYTES],
        )
        assert self.transport is not None
        self.transport.loseConnection()
        self._switch.report(Rejection(reason, detail, self._peer(), seen))

    def _count_client(self, client: IAddress) -> bool:
        """Count the client a PROXY header named against the per-IP limit."""
        connections = self._switch.connections
        host = getattr(client, "host", None)
        if host is None or not connections.limits.max_connections_per_ip:
            return True
        if not connections.admit_ip(host):
            connections.released(self, None)
            self._refuse(MAX_PER_IP)
            return False
        self._ip = host
        return True

    def _refuse(self, limit: str, route: Route | None = None) -> None:
        """Close a connection past a limit at once: counted, warned, rate-limited."""
        self._stop_waiting()
        self._closing = True
        switch = self._switch
        seen, self._buffer = self._buffer, b""
        switch.stats[_CLOSED_LIMIT] += 1
        switch.stats["limited." + limit] += 1
        if route is not None:
            detail = f"route {route.name!r} holds its max_connections"
            value = route.max_connections
        else:
            detail = f"the listener holds its {limit}"
            value = getattr(switch.connections.limits, limit)
        detail += f" ({value})"
        switch.warnings.warn(
            limit,
            "txcmux: refusing connections: {detail}; last from {peer}",
            detail=detail,
            peer=describe_peer(self._peer()),
        )
        assert self.transport is not None
        self.transport.loseConnection()
        switch.report(Rejection(Reason.LIMIT, detail, self._peer(), seen))

    def shed(self, limit: str) -> None:
        """Close this undecided connection to make room for a new one."""
        self._switch.connections.released(self, self._ip)
        self._refuse(limit)

    def drain(self) -> None:
        """The service drains: close this connection if it is still undecided."""
        if self._target is None and not self._closing:
            self._reject(Reject(Reason.DRAINING, "the service is draining"))

    def _stop_waiting(self) -> None:
        deadlines = self._switch.deadlines
        if deadlines is not None:
            deadlines.discard(self)

    def _peer(self) -> IAddress:
        """The client's address.

        The one the listener's prelude named, if it named one.  Else: a
        socket connection (a transport that calls the detector directly)
        was built for the very address its ``getPeer()`` would make anew, so
        that one is used; a wrapping transport (TLS, a PROXY-protocol
        wrapper) may know better than the address the factory was given, so
        it is asked.
        """
        if self._client is not None:
            return self._client
        built_for: IAddress | None = self._address
        if built_for is not None and getattr(self.transport, "protocol", None) is self:
            return built_for
        if self.transport is not None:
            try:
                peer: IAddress = self.transport.getPeer()
                return peer
            except Exception:  # an odd test transport; the build address will do
                pass
        return self._address
