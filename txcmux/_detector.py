"""The detector: the protocol every connection starts with.

It buffers what the client sends, asks each route (in priority order) what
it makes of the bytes so far, and on a match hands the live transport to the
route's protocol, replaying the buffered bytes to it once.  After that the
transport calls the new protocol directly; the detector only forwards
events for transports it could not re-point (see ``_handoff.install``), and,
on HTTP/2 connections where it sent SETTINGS, until the client's ACK of them
has gone by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._handoff import Handoff, IHandoffReceiver, install
from ._log import describe_peer
from ._route import Route
from ._settings_ack import SettingsAckStripper
from .matchers._http2 import EMPTY_SETTINGS, PREFACE
from .matchers._verdict import Outcome

if TYPE_CHECKING:
    from ._factory import ProtocolSwitchingFactory

_log = Logger(namespace="txcmux")
_SHOWN_BYTES = 32
# Enum members read once: a class attribute lookup on an Enum is slow.
_MATCH = Outcome.MATCH
_NEED_MORE = Outcome.NEED_MORE


@dataclass(frozen=True, slots=True)
class Rejection:
    """A connection the detector closed without handing it to any route.

    ``reason`` is one of ``no_match``, ``too_long``, ``timeout`` or
    ``no_protocol`` (a route's factory returned None); ``data`` is every
    byte the client had sent.
    """

    reason: str
    detail: str
    peer: IAddress | None
    data: bytes


@implementer(IHalfCloseableProtocol)
class Detector(Protocol):
    """Sniffs one connection and switches it to the route that matches."""

    # Class-level defaults: most connections are decided on their first read
    # and never set these (each instance attribute costs on every connection).
    _buffer = b""
    _dead: frozenset[int] | set[int] = frozenset()
    _sent: tuple[bytes, ...] = ()
    _target: IProtocol | None = None
    _stripper: SettingsAckStripper | None = None
    _closing = False

    def __init__(self, switch: ProtocolSwitchingFactory, address: IAddress) -> None:
        self._switch = switch
        self._address = address

    # -- events from the transport -------------------------------------------

    def connectionMade(self) -> None:
        switch = self._switch
        switch.stats["accepted"] += 1
        if switch.deadlines is not None:
            switch.deadlines.add(self)
        if switch.decides_on_connect:
            self._decide()

    def dataReceived(self, data: bytes) -> None:
        if self._target is not None:
            self._forward(data)
        elif not self._closing:
            self._buffer += data
            self._decide()

    def readConnectionLost(self) -> None:
        if self._target is not None:
            self._forward_eof()
        elif not self._closing:
            self._decide(eof=True)

    def writeConnectionLost(self) -> None:
        half_closeable = IHalfCloseableProtocol(self._target, None)
        if half_closeable is not None:
            half_closeable.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_waiting()
        if self._target is not None:
            self._target.connectionLost(reason)
        elif not self._closing:
            self._closing = True
            self._switch.stats["closed.peer"] += 1
            _log.info(
                "txcmux: {peer} closed the connection while undecided"
                " ({size} bytes seen: {head})",
                peer=describe_peer(self._peer()),
                size=len(self._buffer),
                head=bytes(self._buffer[:_SHOWN_BYTES]),
            )

    # -- deciding ------------------------------------------------------------

    def _decide(self, eof: bool = False) -> None:
        """Ask the routes, in order, about the bytes so far; act on the answer."""
        switch = self._switch
        limit = switch.max_sniff_bytes
        received = self._buffer
        full = len(received) >= limit
        data = received[:limit] if full else received
        final = eof or full
        pending = False
        undecided_at_limit = False
        sends: list[bytes] = []
        dead = self._dead
        died: list[int] = []
        for index, route in switch.candidates[data[0]] if data else switch.all_routes:
            if index in dead:
                continue
            verdict = route.verdict(data)
            outcome = verdict.outcome
            if outcome is _MATCH:
                if not pending:
                    self._hand_over(route, received, eof)
                    return
                break  # an earlier route may still match; none later can win
            if outcome is _NEED_MORE and not final:
                pending = True
                if verdict.send:
                    sends.append(verdict.send)
            else:
                undecided_at_limit |= outcome is _NEED_MORE
                died.append(index)
        if died:
            self._dead = dead.union(died)
        if not pending:
            if undecided_at_limit and full:
                self._reject("too_long", f"still undecided after {limit} bytes")
            elif eof:
                self._reject(
                    "no_match", "the client closed its side before any route matched"
                )
            else:
                self._reject("no_match", "no route matched")
            return
        for send in sends:
            if send not in self._sent:
                self._sent += (send,)
                assert self.transport is not None
                self.transport.write(send)

    def timed_out(self) -> None:
        """The sniff timeout passed undecided: reject, or hand to ``on_timeout``."""
        if self._target is not None or self._closing:
            return
        fallback = self._switch.on_timeout
        if fallback is None:
            self._reject(
                "timeout", f"undecided after {self._switch.sniff_timeout} seconds"
            )
        else:
            self._switch.stats["timeout_fallback"] += 1
            self._hand_over(self._switch.route(fallback), self._buffer, eof=False)

    # -- switching -----------------------------------------------------------

    def _hand_over(self, route: Route, buffered: bytes, eof: bool) -> None:
        """Give the transport to ``route``'s protocol and replay ``buffered`` once."""
        self._stop_waiting()
        peer = self._peer()
        handoff = None
        if route.picks_by_handoff:
            handoff = self._handoff(route, peer, buffered)
            protocol = route.factory.protocol_for_handoff(handoff)  # type: ignore[attr-defined]
        else:
            protocol = route.factory.buildProtocol(peer)
        if protocol is None:
            self._reject(
                "no_protocol", f"the factory of route {route.name!r} returned None"
            )
            return
        self._buffer = b""
        self._switch.stats[route.counter] += 1
        replay = buffered
        if EMPTY_SETTINGS in self._sent and buffered.startswith(PREFACE):
            stripper = SettingsAckStripper()
            replay = stripper.feed(buffered)
            if not stripper.done:
                self._stripper = stripper
        if IHandoffReceiver.providedBy(protocol):
            if handoff is None:
                handoff = self._handoff(route, peer, buffered)
            protocol.handoff_received(handoff)
        self._target = protocol
        if self._stripper is None:
            install(self.transport, self, protocol)
        assert self.transport is not None
        protocol.makeConnection(self.transport)
        if replay:
            protocol.dataReceived(replay)
        if eof:
            self._forward_eof()

    def _handoff(self, route: Route, peer: IAddress, buffered: bytes) -> Handoff:
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        return Handoff(route.name, peer, buffered, b"".join(self._sent), negotiated)

    def _forward(self, data: bytes) -> None:
        assert self._target is not None
        stripper = self._stripper
        if stripper is not None:
            data = stripper.feed(data)
            if stripper.done:
                self._stripper = None
                install(self.transport, self, self._target)
        if data:
            self._target.dataReceived(data)

    def _forward_eof(self) -> None:
        half_closeable = IHalfCloseableProtocol(self._target, None)
        if half_closeable is not None:
            half_closeable.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    # -- closing -------------------------------------------------------------

    def _reject(self, reason: str, detail: str) -> None:
        """Close a connection no route will take: count, log, tell the hook."""
        self._stop_waiting()
        self._closing = True
        seen = self._buffer
        self._buffer = b""
        self._switch.stats["closed." + reason] += 1
        _log.info(
            "txcmux: closing connection from {peer}: {detail}"
            " ({size} bytes seen: {head})",
            peer=describe_peer(self._peer()),
            detail=detail,
            size=len(seen),
            head=seen[:_SHOWN_BYTES],
        )
        assert self.transport is not None
        self.transport.loseConnection()
        self._switch.report(Rejection(reason, detail, self._peer(), seen))

    def _stop_waiting(self) -> None:
        deadlines = self._switch.deadlines
        if deadlines is not None:
            deadlines.discard(self)

    def _peer(self) -> IAddress:
        """The client's address.

        A socket connection (a transport that calls the detector directly)
        was built for the very address its ``getPeer()`` would make anew, so
        that one is used; a wrapping transport (TLS, a PROXY-protocol
        wrapper) may know better than the address the factory was given, so
        it is asked.
        """
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
