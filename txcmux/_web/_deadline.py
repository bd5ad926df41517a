"""A deadline for an HTTP/1.1 request's header block (against "slowloris").

Twisted's HTTPChannel closes a connection idle for the Site's ``timeOut``,
but every byte restarts that timer: a client that sends one byte of its
headers every minute holds the connection for ever.  :class:`HeaderDeadline` gives
each request, from its first byte to the end of its header block, at most
``timeout`` seconds, as nginx's ``client_header_timeout`` (60 s by default)
and HAProxy's ``timeout http-request`` do; past it the client gets
``408 Request Timeout`` and the connection is closed::

    HeaderDeadline(channel, 60.0, reactor, stats, route="web")

The time a connection waits for a request to begin stays the Site's
``timeOut``; the body of a request is not bounded here (the target reads
it at its own pace).  Each request costs a clock read; a connection
has at most one timer, running only while requests come.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .._log import describe_peer, log

#: Seconds a request has for its header block unless told otherwise: nginx's
#: default ``client_header_timeout``.
DEFAULT_HEADER_TIMEOUT = 60.0

#: What a client whose header block took too long gets before the close
#: (RFC 9110, section 15.5.9: a 408 says the server closes the connection).
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)


class HeaderDeadline:
    """Watches one HTTP/1.1 channel (give it the channel before its first
    bytes; ``stats`` counts a miss as ``closed.header_timeout``): notes
    when a request's first read
    comes and when its last header line does; a timer looks in between.

    It sits in the channel's own ``dataReceived`` (only for the first read
    of each request), ``allHeadersReceived`` and ``requestDone``, as
    instance attributes that call the channel's methods after.  The timer
    is not restarted per request: once running it looks again when the
    current request's time would be up, and stops where no request is
    being read, so keep-alive requests cost a clock read, not a timer
    each.
    """

    __slots__ = (
        "_call",
        "_channel",
        "_clock",
        "_route",
        "_started",
        "_stats",
        "_timeout",
    )

    def __init__(
        self,
        channel: Any,
        timeout: float,
        clock: IReactorTime,
        stats: Counter[str],
        route: str,
    ) -> None:
        self._channel = channel
        self._timeout = timeout
        self._clock = clock
        self._stats = stats
        self._route = route
        self._call: IDelayedCall | None = None
        self._started: float | None = None  # when the current request began
        channel.allHeadersReceived = self._all_headers_received
        channel.requestDone = self._request_done
        channel.connectionLost = self._connection_lost
        channel.__dict__[_KEY] = self
        self._arm()

    def _arm(self) -> None:
        """Note the time of the next read: a request begins with it."""
        self._channel.dataReceived = self._first_read

    def _first_read(self, data: bytes) -> None:
        channel = self._channel
        del channel.dataReceived  # the channel's own again, for the rest
        self._started = self._clock.seconds()
        if self._call is None:
            self._call = self._clock.callLater(self._timeout, self._look)
        channel.dataReceived(data)

    def _all_headers_received(self) -> None:
        self._started = None
        channel = self._channel
        channel.__dict__.pop("dataReceived", None)
        type(channel).allHeadersReceived(channel)

    def _request_done(self, request: object) -> None:
        channel = self._channel
        type(channel).requestDone(channel, request)
        if channel.persistent and channel.transport is not None:
            self._arm()

    def _look(self) -> None:
        self._call = None
        started = self._started
        if started is None:
            return  # no request being read: the next one starts the timer
        left = started + self._timeout - self._clock.seconds()
        if left > 0:
            self._call = self._clock.callLater(left, self._look)
            return
        self._started = None
        channel = self._channel
        transport = channel.transport
        self._stats["closed.header_timeout"] += 1
        log.info(
            "txcmux: route {route}: {peer} sent no complete request header"
            " within {timeout:g} s; answering 408 and closing",
            route=self._route,
            peer=describe_peer(transport.getPeer() if transport else None),
            timeout=self._timeout,
        )
        if transport is not None:
            transport.write(TIMED_OUT)
            channel.loseConnection()

    def _connection_lost(self, reason: object) -> None:
        self.cancel()
        type(self._channel).connectionLost(self._channel, reason)

    def cancel(self) -> None:
        """No request will come again: no timer may outlive the connection."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._channel.__dict__.pop("dataReceived", None)


#: Where a bound channel keeps its deadline, for :func:`release`.
_KEY = "_txcmux_header_deadline"


def release(channel: Any) -> None:
    """Stop ``channel``'s deadline, if it has one: another protocol takes
    its connection (a WebSocket), so no request of its will come again."""
    deadline = channel.__dict__.pop(_KEY, None)
    if deadline is not None:
        deadline.cancel()
