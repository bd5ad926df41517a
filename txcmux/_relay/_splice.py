"""Zero-copy relaying on Linux: move bytes socket to socket with splice(2).

The relay's ordinary data path reads each chunk into Python and writes it
to the other transport.  Between two plain sockets (tcp or unix, no TLS)
on Linux, :func:`start` instead has the kernel move the bytes through a
pipe with ``splice(2)``: no copy into Python, no Python call per chunk::

    pumps, wrote = start(client_end, backend_end, replay)  # pumps None: not here
    ...
    close(pumps)                                         # both sides gone

Each direction is a :class:`_Pump` that takes the place of its source's
``doRead`` and of its destination's ``doWrite`` (the reactor calls them as
it called the transports' own; :mod:`txcmux._compat` lists what of Twisted
this relies on).  Until its pipe is empty a pump has the destination write
for it; then the destination's own ``doWrite`` runs, so Twisted's
half-close and close still flush and shut down as usual.  A full
destination stops the source's reading until it drains, as a producer
pause would.  What this gains is measured in docs/performance.md (the
relay-bulk row, and the splice step under "What was profiled and fixed").
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from twisted.internet import main

from .. import _compat
from .._replies import filtering

_SPLICE = getattr(os, "splice", None) if _compat.SPLICE_READY else None
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
#: The most one splice call moves.
_CHUNK = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: Pipe sizes tried for bulk transfers, largest first (measured, 1 GiB over
#: loopback: 256 KiB pipes moved half as much again as the default 64 KiB
#: ones, 1 MiB pipes a little more), and how many bytes make a transfer bulk.
_BULK_PIPE_SIZES = (1 << 20, 1 << 18)
_BULK = 1 << 20


def _calls_directly(transport: Any, end: Any) -> bool:
    """Whether ``transport`` hands its bytes to ``end`` unchanged.

    A protocol still between them that looks at the bytes (the detector,
    while it still filters the client's bytes) must keep seeing them, and
    splicing would take them past it.  Twisted's client endpoints put a
    forwarder in front of the backend side; it passes bytes through as they
    are.
    """
    protocol = getattr(transport, "protocol", None)
    return protocol is end or _compat.forwarded_to(protocol) is end


def _plain_socket(end: Any) -> bool:
    """Whether ``end``'s transport is a tcp/unix socket, without TLS, calling it."""
    transport = end.transport
    return (
        type(transport) in _compat.SOCKET_TRANSPORTS
        and _calls_directly(transport, end)
        and not filtering(transport)  # the detector's reply filter must see it
        and not getattr(transport, "TLS", False)
        and transport.connected
        and not transport.disconnecting
    )


class _Pipes:
    """Empty pipes kept for the next pump that needs one.

    A pump holds a pipe only while bytes are in it, so an idle spliced
    relay holds its two sockets and nothing more: 10,000 idle relays would
    otherwise hold 40,000 descriptors for their pipes, and count 64 KiB
    each against the per-user pipe limit.  HAProxy (``pipes_live``, bounded
    by ``tune.maxpipes``) and h2o (``spare_pipes``) keep spare pipes the
    same way.  Only pipes known to be empty are given back, and at most
    ``keep`` of them are kept.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.free: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        """A pipe's (read end, write end); raises OSError when out of descriptors."""
        if self.free:
            return self.free.pop()
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def give(self, pipe: tuple[int, int]) -> None:
        """Keep ``pipe``, empty, for the next pump if there is room."""
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int]) -> None:
        """Close ``pipe``, whatever it holds."""
        os.close(pipe[0])
        os.close(pipe[1])

    def forget(self) -> None:
        """Close the kept pipes (in a forked child, whose copies they are)."""
        free, self.free = self.free, []
        for pipe in free:
            self.discard(pipe)


#: The process's kept pipes: what a few hundred transfers at once reuse.
_PIPES = _Pipes(keep=64)
os.register_at_fork(after_in_child=_PIPES.forget)
#: Seconds a pump waits before it tries again for a pipe, out of descriptors.
_RETRY = 0.1
_NO_PIPE = (-1, -1)


class _Pump:
    """One direction of a spliced relay: ``source`` socket to ``sink`` socket.

    ``partner`` is the other direction's pump, whose source is this pump's
    sink.
    """

    partner: _Pump | None = None

    def __init__(self, source: Any, sink: Any, counter: Any) -> None:
        self.source = source
        self.sink = sink
        self.counter = counter  # the relay end whose ``received`` counts bytes
        self.pipe = _NO_PIPE  # (read end, write end) while bytes pass through
        self.pending = 0  # bytes in the pipe, not yet in the sink
        self.moved = 0  # bytes moved so far
        self.grown = False  # the pipe was made bigger for a bulk transfer
        self.ended = False  # the source sent EOF
        self.broken = False  # the sink refused bytes: it is lost
        self.closed = False
        self.retry: Any = None  # the DelayedCall of a wait for a pipe
        self.source_fd = source.fileno()
        self.sink_fd = sink.fileno()
        self._sink_do_write = sink.doWrite
        _compat.take_over_io(source, do_read=self.do_read)
        _compat.take_over_io(sink, do_write=self.do_write)

    def do_read(self) -> Any:
        """The source is readable: splice what it has into the pipe, then on."""
        if self.closed or not self.source.connected:
            return main.CONNECTION_LOST
        if self.pending and not self._flush():
            return None  # still full: reading stopped until the sink drains
        if self.pipe is _NO_PIPE and not self._take_pipe():
            return None
        try:
            moved = _SPLICE(self.source_fd, self.pipe[1], _CHUNK, flags=_FLAGS)  # type: ignore[misc]
        except BlockingIOError:
            self._give_back()
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not moved:
            self._give_back()
            self.ended = True
            partner = self.partner
            if partner is not None and partner.broken:
                # A write into this socket reported its reset, and took the
                # error with it: the read sees only EOF.  It is no clean end.
                return main.CONNECTION_LOST
            return main.CONNECTION_DONE
        self.counter.received += moved
        self.pending += moved
        self.moved += moved
        if self.moved >= _BULK and not self.grown:
            self._grow()
        self._flush()
        return None

    def _take_pipe(self) -> bool:
        """Take a pipe; out of descriptors, stop reading and try again soon."""
        try:
            self.pipe = _PIPES.take()
        except OSError:
            self.source.stopReading()
            if self.retry is None:
                self.retry = self.source.reactor.callLater(_RETRY, self._resume)
            return False
        return True

    def _resume(self) -> None:
        self.retry = None
        source = self.source
        if not self.closed and source.connected and not source.disconnecting:
            source.startReading()

    def _give_back(self) -> None:
        """The pipe is empty: give it back, unless this transfer is bulk."""
        if self.pipe is not _NO_PIPE and not self.grown:
            pipe, self.pipe = self.pipe, _NO_PIPE
            _PIPES.give(pipe)

    def _grow(self) -> None:
        """A bulk transfer: give it a bigger pipe (if the system allows), and
        keep it for the rest of the connection.

        Only then, since a pipe's size counts against a per-user limit
        (``/proc/sys/fs/pipe-user-pages-soft``) whatever it holds.
        """
        self.grown = True
        for size in _BULK_PIPE_SIZES:
            try:
                fcntl.fcntl(self.pipe[1], _F_SETPIPE_SZ, size)
            except OSError:
                continue
            return

    def do_write(self) -> Any:
        """The sink is writable: empty the pipe, then let the sink finish."""
        if self.pending:
            if not self._flush():
                return main.CONNECTION_LOST if self.broken else None
            source = self.source
            if source.connected and not source.disconnecting and not self.ended:
                source.startReading()
        return self._sink_do_write()

    def _flush(self) -> bool:
        """Move the pipe's bytes to the sink; False if they must wait."""
        while self.pending:
            if self.closed or not self.sink.connected:
                self._drop()  # the sink is gone: the bytes go nowhere
                return True
            try:
                moved = _SPLICE(self.pipe[0], self.sink_fd, self.pending, flags=_FLAGS)  # type: ignore[misc]
            except OSError as problem:
                # Full (EAGAIN): wait for the sink.  Broken (EPIPE, reset):
                # the sink's next write reports it, as Twisted's would.
                self.broken = not isinstance(problem, BlockingIOError)
                self.source.stopReading()
                self.sink.startWriting()
                return False
            self.pending -= moved
        self._give_back()
        return True

    def _drop(self) -> None:
        """Close the pipe with whatever it holds: it is never used again."""
        if self.pipe is not _NO_PIPE:
            pipe, self.pipe = self.pipe, _NO_PIPE
            _PIPES.discard(pipe)
        self.pending = 0

    def close(self) -> None:
        """Close the pipe; the sink is gone, its bytes can go nowhere.

        Also gives the transports back their own ``doRead`` and ``doWrite``,
        so that no transport and pump keep each other alive in a cycle.
        """
        self.closed = True
        self.partner = None
        if self.pending or self.grown:
            self._drop()
        else:
            self._give_back()
        if self.retry is not None:
            if self.retry.active():
                self.retry.cancel()
            self.retry = None
        _compat.give_back_io(self.source, read=True)
        _compat.give_back_io(self.sink, write=True)


Pumps = tuple[_Pump, _Pump]


def start(one: Any, other: Any, first: bytes = b"") -> tuple[Pumps | None, bool]:
    """Splice between two relay ends' transports, if both are plain sockets.

    ``one`` and ``other`` are protocols with a ``transport`` and a
    ``received`` counter; no write may wait in either transport's buffer.
    ``first`` is what ``one`` received earlier and must reach ``other``
    before anything else.  Returns ``(pumps, wrote_first)``: pumps is None
    where splice(2) is unavailable, a transport is not a plain socket (TLS,
    a wrapper, a test double) or calls another protocol first (the
    detector, while it still filters the client's bytes), or its writes
    still go through the detector's reply filter (:mod:`txcmux._replies`), or ``first``
    could not be sent at once (it is then written the ordinary way);
    ``wrote_first`` says whether this function took care of ``first``.
    """
    if _SPLICE is None or not (_plain_socket(one) and _plain_socket(other)):
        return None, False
    sink = other.transport
    if first:
        sent = _compat.write_now(sink, first)
        if sent is None or sent < len(first):
            sink.write(first[sent:] if sent is not None else first)
            return None, True
    forward = _Pump(one.transport, sink, one)
    backward = _Pump(sink, one.transport, other)
    forward.partner, backward.partner = backward, forward
    return (forward, backward), bool(first)


def close(pumps: Pumps | None) -> None:
    """Close both pumps' pipes (call once both sides are gone)."""
    if pumps is not None:
        for pump in pumps:
            pump.close()
