"""Filtering what a target writes to the client, until the filter is done.

While it sniffs, the detector may answer the client for the server (an
HTTP/2 matcher acknowledges the client's SETTINGS and PINGs).  The target
is then replayed the same bytes and answers them again; the verdict's
``reply_filter`` removes those second answers from what the target writes
(see :class:`~txcmux.matchers.Verdict`).  :func:`filter_writes` puts such
a filter in front of a transport's ``write``, for whoever writes to it: the
Site's HTTP/2 connection, a relay's backend side::

    >>> from twisted.internet.testing import StringTransport
    >>> from txcmux.matchers._http2 import SETTINGS_ACK, RepliesFilter
    >>> transport = StringTransport()
    >>> filter_writes(transport, RepliesFilter(SETTINGS_ACK))
    >>> filtering(transport)
    True
    >>> transport.write(SETTINGS_ACK + b"rest")
    >>> transport.value(), filtering(transport)
    (b'rest', False)

Once the filter is done the transport's own methods are back: nothing of
this stays on the data path.  A relay does not splice a transport while it
is filtered (:func:`filtering`), since the kernel would move the backend's
bytes past the filter.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .matchers._verdict import ReplyFilter, flush_filter

_NAMES = ("write", "writeSequence", "loseConnection")


class _Waiting(list[Callable[[], object]]):
    """What waits for one transport's filter to be done, and what to put back."""

    def __init__(self, saved: dict[str, Any]) -> None:
        super().__init__()
        self.saved = saved


#: The transports being filtered, and what to call once each one's filter is done.
_active: weakref.WeakKeyDictionary[Any, _Waiting] = weakref.WeakKeyDictionary()


def filter_writes(transport: Any, reply_filter: ReplyFilter) -> None:
    """Pass what is written to ``transport`` through ``reply_filter``.

    ``write`` and ``writeSequence`` go through the filter until it is done;
    ``loseConnection`` first writes what the filter holds back (a frame
    header cut between writes).  A transport that cannot take attributes of
    its own (slots) is left unfiltered.
    """
    if reply_filter.done:
        return
    write = transport.write
    lose = transport.loseConnection

    def filtered_write(data: bytes) -> None:
        out = reply_filter.feed(data)
        if reply_filter.done:
            _restore(transport)
        if out:
            write(out)

    def filtered_sequence(data: Iterable[bytes]) -> None:
        filtered_write(b"".join(data))

    def filtered_lose(*args: Any, **kwargs: Any) -> None:
        held = flush_filter(reply_filter)
        _restore(transport)
        if held:
            write(held)
        lose(*args, **kwargs)

    own = getattr(transport, "__dict__", None)
    if own is None:  # slots: no attribute of its own can be set
        return
    # Methods the instance itself set (Twisted's TLS protocol sets ``write``
    # to its small-write aggregator) are put back as they were.
    saved = {name: own[name] for name in _NAMES if name in own}
    try:
        _active[transport] = _Waiting(saved)
    except TypeError:  # not weakly referenceable
        return
    transport.write = filtered_write
    transport.writeSequence = filtered_sequence
    transport.loseConnection = filtered_lose


def filtering(transport: Any) -> bool:
    """Whether what is written to ``transport`` still goes through a filter."""
    try:
        return transport in _active
    except TypeError:
        return False


def when_done(transport: Any, callback: Callable[[], object]) -> None:
    """Call ``callback`` once ``transport``'s filter is done (now, if it is)."""
    try:
        waiting = _active.get(transport)
    except TypeError:
        waiting = None
    if waiting is None:
        callback()
    else:
        waiting.append(callback)


def _restore(transport: Any) -> None:
    """Give ``transport`` its own methods back; run what waited for that."""
    waiting = _active.pop(transport, None)
    if waiting is None:
        return
    own = transport.__dict__
    for name in _NAMES:
        if name in waiting.saved:
            own[name] = waiting.saved[name]
        else:
            own.pop(name, None)
    for callback in waiting:
        callback()
