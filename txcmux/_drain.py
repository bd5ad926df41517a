"""Graceful drain: ask each open connection to finish, the way its protocol can.

When a service stops, its listeners close first and the connections still
undecided are closed (``ProtocolSwitchingFactory.drain``); then
:func:`finish` is applied, over and over until they are gone, to the
protocol of every decided connection:

- an HTTP/1.1 channel with no request in flight is closed; one with a
  request in flight answers it with ``Connection: close`` where the response
  has not started, and closes after it (Twisted's ``persistent`` flag);
- an HTTP/2 connection gets a GOAWAY naming the last stream it took
  (RFC 9113, section 6.8: the client opens no more streams on it, and
  retries later ones elsewhere), finishes the streams it has, and is then
  closed with a final GOAWAY;
- a protocol with a ``going_away()`` method is asked to end that way (an
  ASGI app's WebSocket closes with 1001, Going Away);
- anything else (a relay, a gRPC call through the in-process server,
  any other protocol) is left to end by itself.

Whatever is still open when ``drain_timeout`` passes is cut.
"""

from __future__ import annotations

import weakref
from typing import Any

from hyperframe.frame import GoAwayFrame
from twisted.web import http

from . import _compat

#: The HTTP/2 connections already sent their first GOAWAY.
_told: weakref.WeakSet[Any] = weakref.WeakSet()


def http_channel_of(protocol: Any) -> Any:
    """The HTTP channel behind a chooser or Twisted's channel proxy, if any."""
    for _ in range(3):  # a chooser may hold a proxy, which holds the channel
        inner = getattr(protocol, "_channel", None)
        if inner is None:
            return protocol
        protocol = inner
    return protocol


def finish(protocol: Any) -> str:
    """Ask ``protocol``'s connection to end once its work is done.

    Returns what it is: ``"http/1.1"``, ``"h2"``, ``"going away"`` (told
    by its own method) or ``"other"`` (left alone).
    Safe to call again and again on the same connection.
    """
    channel = http_channel_of(protocol)
    if isinstance(channel, http.HTTPChannel):
        _finish_http1(channel)
        return "http/1.1"
    h2_class = _h2_class()
    if h2_class is not None and isinstance(channel, h2_class):
        _finish_h2(channel)
        return "h2"
    going_away = getattr(channel, "going_away", None)
    if going_away is not None:
        going_away()
        return "going away"
    return "other"


def _finish_http1(channel: Any) -> None:
    requests = channel.requests
    if not requests:
        channel.loseConnection()  # idle between requests
        return
    channel.persistent = False  # requestDone closes the connection
    for request in requests:
        if not request.startedWriting:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])


def _finish_h2(connection: Any) -> None:
    transport = connection.transport
    if transport is None:
        return
    h2 = connection.conn
    if connection not in _told:
        _told.add(connection)
        # Written beside h2's state machine: once h2 itself sends GOAWAY it
        # refuses to send anything more, and the open streams must go on.
        last = h2.highest_inbound_stream_id
        transport.write(GoAwayFrame(0, last_stream_id=last, error_code=0).serialize())
    # Streams forwarded to a gRPC backend are not Twisted's (_web._streams).
    if not connection.streams and not getattr(connection, "forwarded", None):
        h2.close_connection()
        transport.write(h2.data_to_send())
        transport.loseConnection()


def _h2_class() -> type[Any] | None:
    try:
        return _compat.h2_connection_class()
    except Exception:  # Twisted without HTTP/2: nothing to finish that way
        return None
