"""Every private Twisted name txcmux relies on, each one listed and checked.

txcmux reaches into a few of Twisted's private attributes where no public
API does the job: to splice two sockets, to half-close TLS, to serve h2c
and to give HTTP/1.1 the Site's channel directly.  Every such use goes
through this module.  Each :class:`Private` entry below names the private
thing, says what txcmux uses it for and how it is checked::

    >>> from txcmux import _compat
    >>> entry = _compat.TLS_HALF_CLOSE[0]
    >>> entry.name
    'twisted.protocols.tls.TLSMemoryBIOProtocol._write'
    >>> entry.used_for
    'drop what is written after TLS close_notify'
    >>> _compat.missing(_compat.TLS_HALF_CLOSE)
    []

The twisted.internet and twisted.protocols entries are checked when this
module is imported, the twisted.web ones when :mod:`txcmux.web` is (and,
for HTTP/2, again whenever a ``WebFactory`` serving it is made).  What a
missing name does depends on what needs it:

- TLS termination cannot work without its entries: importing
  :mod:`txcmux.tls` raises :class:`~txcmux.TwistedCompatibilityError`.
- HTTP/2 is a feature one can do without: ``WebFactory(site)`` raises
  :class:`~txcmux.ConfigurationError` saying what is missing and that
  ``http2=False`` serves HTTP/1.1 only.
- The rest only makes things faster or log lines nicer (splice(2), the
  Site's channel without Twisted's proxy, backend names in logs, twistd's
  exit status): without them txcmux takes the slower, plain path.

Tested with Twisted 26.10; the code relied on is the same in Twisted 24.7,
the oldest release txcmux allows.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.tls import BufferingTLSTransport

from ._errors import ConfigurationError, TwistedCompatibilityError

#: The Twisted release txcmux was tested with, and the oldest one whose
#: private code it relies on is the same.
TESTED = "26.10"
OLDEST = "24.7"


@dataclass(frozen=True)
class Private:
    """One private Twisted name: what it is, what txcmux uses it for, its check.

    ``check`` returns what is missing (nothing when all is well), in words
    fit for an error message.
    """

    name: str
    used_for: str
    check: Callable[[], list[str]]

    def __str__(self) -> str:
        return f"{self.name}: {self.used_for}"


def _find(dotted: str) -> object:
    """The object ``dotted`` names: a module, then attributes; LookupError if none."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            try:
                found = getattr(found, attribute)
            except AttributeError:
                raise LookupError(dotted) from None
        return found
    raise LookupError(dotted)


def _exists(dotted: str) -> Callable[[], list[str]]:
    """A check that ``dotted`` can be found."""

    def check() -> list[str]:
        try:
            _find(dotted)
        except LookupError:
            return [dotted]
        return []

    return check


def _names_in(function: str, *attributes: str) -> Callable[[], list[str]]:
    """A check that ``function``'s code uses each of ``attributes``.

    For instance attributes, which exist only once an object is set up:
    the method that sets them (or, for a call made through an attribute,
    the caller) must still name them.
    """

    def check() -> list[str]:
        try:
            code = getattr(_find(function), "__code__", None)
        except LookupError:
            return [function]
        names = set(getattr(code, "co_names", ()))
        return [f"{function} using {name}" for name in attributes if name not in names]

    return check


def missing(entries: Sequence[Private]) -> list[str]:
    """What of ``entries`` the installed Twisted lacks (empty: all there)."""
    return [problem for entry in entries for problem in entry.check()]


def _lacking(entries: Sequence[Private]) -> list[tuple[Private, list[str]]]:
    found = [(entry, entry.check()) for entry in entries]
    return [(entry, lacking) for entry, lacking in found if lacking]


def twisted_version() -> str:
    """The installed Twisted's version, for messages."""
    import twisted

    return str(getattr(twisted, "__version__", "unknown"))


def explain(feature: str, lacking: Sequence[tuple[Private, list[str]]]) -> str:
    """One line: ``feature`` cannot work, what is missing, what it is for."""
    what = "; ".join(
        f"{', '.join(parts)} (used to {entry.used_for})" for entry, parts in lacking
    )
    return (
        f"{feature} cannot work with Twisted {twisted_version()}, which lacks"
        f" {what}; txcmux was tested with Twisted {TESTED}, and what it relies"
        f" on is the same since {OLDEST}: install a Twisted release in that range"
    )


def require(feature: str, entries: Sequence[Private]) -> None:
    """Raise TwistedCompatibilityError unless every one of ``entries`` is there."""
    lacking = _lacking(entries)
    if lacking:
        raise TwistedCompatibilityError(explain(feature, lacking))


# -- twistd's exit status --------------------------------------------------------

EXIT_SIGNAL = Private(
    "twisted.internet.base.ReactorBase._exitSignal",
    "let twistd exit 0 after an orderly stop on SIGTERM",
    _exists("twisted.internet.base.ReactorBase._exitSignal"),
)


def clear_sigterm_exit(reactor: Any) -> None:
    """Let twistd exit 0 after an orderly stop on SIGTERM.

    twistd re-raises the signal that stopped the reactor once it returns
    (the reactor's private ``_exitSignal``), so the process would die of
    SIGTERM; after an orderly shutdown we clear it and twistd exits 0.
    Without that attribute this does nothing.
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None


# -- splice(2) between two sockets -----------------------------------------------

SPLICE = (
    Private(
        "twisted.internet.endpoints._WrappingProtocol",
        "see through the forwarder client endpoints put before the relay's"
        " backend side",
        _exists("twisted.internet.endpoints._WrappingProtocol"),
    ),
    Private(
        "twisted.internet.endpoints._WrappingProtocol._wrappedProtocol",
        "know which protocol that forwarder passes the bytes to",
        _names_in(
            "twisted.internet.endpoints._WrappingProtocol.__init__", "_wrappedProtocol"
        ),
    ),
    Private(
        "twisted.internet.abstract.FileDescriptor.writeSomeData",
        "write the replayed bytes straight to the socket before splicing",
        _exists("twisted.internet.abstract.FileDescriptor.writeSomeData"),
    ),
    Private(
        "twisted.internet.posixbase._PollLikeMixin._doReadOrWrite",
        "have the reactor call a socket's doRead and doWrite through its"
        " attributes, which a splice pump takes over",
        _names_in(
            "twisted.internet.posixbase._PollLikeMixin._doReadOrWrite",
            "doRead",
            "doWrite",
        ),
    ),
)


def _socket_transports() -> tuple[type, ...]:
    found: tuple[type, ...] = (tcp.Server, tcp.Client)
    with contextlib.suppress(ImportError):  # every POSIX Twisted has it
        from twisted.internet import unix

        found += (unix.Server, unix.Client)
    return found


#: Whether the relay may splice: the entries of :data:`SPLICE` are there.
SPLICE_READY = not missing(SPLICE)

#: The transports of plain tcp and unix sockets, whose reads and writes a
#: splice pump can take over.
SOCKET_TRANSPORTS = _socket_transports()

_ENDPOINT_FORWARDER: object = getattr(
    importlib.import_module("twisted.internet.endpoints"), "_WrappingProtocol", None
)


def forwarded_to(protocol: object) -> object | None:
    """What a client endpoint's forwarder passes its bytes to, or None.

    None also when ``protocol`` is no such forwarder.
    """
    if _ENDPOINT_FORWARDER is None or type(protocol) is not _ENDPOINT_FORWARDER:
        return None
    wrapped: object = getattr(protocol, "_wrappedProtocol", None)
    return wrapped


def take_over_io(
    transport: Any,
    do_read: Callable[[], object] | None = None,
    do_write: Callable[[], object] | None = None,
) -> None:
    """Have the reactor call ``do_read``/``do_write`` for ``transport``'s socket."""
    if do_read is not None:
        transport.doRead = do_read
    if do_write is not None:
        transport.doWrite = do_write


def give_back_io(transport: Any, *, read: bool = False, write: bool = False) -> None:
    """Undo :func:`take_over_io`: the transport's own methods run again."""
    if read:
        vars(transport).pop("doRead", None)
    if write:
        vars(transport).pop("doWrite", None)


def write_pending(transport: Any) -> bool:
    """Whether bytes written to ``transport`` still wait in its buffer
    (Twisted's ``FileDescriptor`` keeps them in ``dataBuffer`` and
    ``_tempDataBuffer``); True for a transport that is not one."""
    try:
        waiting: int = len(transport.dataBuffer) - transport.offset
        waiting += transport._tempDataLen
    except (AttributeError, TypeError):
        return True
    return waiting > 0


def write_now(transport: Any, data: bytes) -> int | None:
    """Write what the socket takes of ``data`` at once; None if it failed."""
    sent = transport.writeSomeData(data)
    return sent if isinstance(sent, int) else None


# -- TLS half-close --------------------------------------------------------------

_TLS = "twisted.protocols.tls.TLSMemoryBIOProtocol"

TLS_HALF_CLOSE = (
    Private(
        f"{_TLS}._write",
        "drop what is written after TLS close_notify",
        _exists(f"{_TLS}._write"),
    ),
    Private(
        f"{_TLS}._flushSendBIO",
        "send the close_notify alert to the peer",
        _exists(f"{_TLS}._flushSendBIO"),
    ),
    Private(
        f"{_TLS}._handshakeDone",
        "half-close only once the handshake is done",
        _exists(f"{_TLS}._handshakeDone"),
    ),
    Private(
        f"{_TLS}._producer",
        "half-close only when no producer still writes",
        _exists(f"{_TLS}._producer"),
    ),
    Private(
        f"{_TLS}._appSendBuffer",
        "half-close only when no write waits on the handshake",
        _names_in(f"{_TLS}.makeConnection", "_appSendBuffer"),
    ),
    Private(
        "twisted.protocols.tls.BufferingTLSTransport._aggregator",
        "flush the small writes it holds back before close_notify",
        _names_in(
            "twisted.protocols.tls.BufferingTLSTransport.__init__", "_aggregator"
        ),
    ),
)


class HalfClosingTLSTransport(BufferingTLSTransport):
    """Twisted's TLS protocol, half-closing the TLS way.

    Twisted's TLS protocol copies the TCP connection's interfaces,
    ``IHalfCloseableDescriptor`` included, but has no ``loseWriteConnection``
    of its own: the call reaches the TCP connection beneath, which ends the
    stream with no close_notify, and the peer sees a truncated, unclean
    close.  Here it sends close_notify and goes on reading, as TLS 1.3
    allows.  (Usable only where :data:`TLS_HALF_CLOSE` is all there.)
    """

    _write_closed = False

    def loseWriteConnection(self) -> None:
        """Send TLS close_notify: no more data from us; the peer may go on."""
        connection = self.getHandle()  # type: ignore[no-untyped-call]
        if self._write_closed or self.disconnecting or connection is None:
            return
        self._aggregator.flush()
        if not self._handshakeDone or self._appSendBuffer or self._producer:
            # Data still waits on the handshake or a producer: close fully,
            # which Twisted does once they are done.
            self.loseConnection()
            return
        self._write_closed = True
        with contextlib.suppress(SSL.Error):  # mid-state: the alert still goes
            connection.shutdown()
        self._flushSendBIO()  # type: ignore[no-untyped-call]

    def _write(self, data: bytes) -> None:
        if self._write_closed:
            return  # after close_notify nothing more may be sent
        super()._write(data)  # type: ignore[no-untyped-call]


# -- the names of backend endpoints, for logs --------------------------------------

ENDPOINT_NAMES = (
    Private(
        "twisted.internet.endpoints.TCP4ClientEndpoint._host/_port",
        "name a tcp backend in log lines",
        _names_in(
            "twisted.internet.endpoints.TCP4ClientEndpoint.__init__", "_host", "_port"
        ),
    ),
    Private(
        "twisted.internet.endpoints.HostnameEndpoint._hostText/_port",
        "name a backend given by host name in log lines",
        _names_in(
            "twisted.internet.endpoints.HostnameEndpoint.__init__", "_hostText", "_port"
        ),
    ),
    Private(
        "twisted.internet.endpoints.UNIXClientEndpoint._path",
        "name a unix-socket backend in log lines",
        _names_in("twisted.internet.endpoints.UNIXClientEndpoint.__init__", "_path"),
    ),
)


def endpoint_address(endpoint: object) -> str | None:
    """``tcp:host:port`` or ``unix:path`` for a client endpoint, or None."""
    for host, port in (("_hostText", "_port"), ("_host", "_port")):
        if hasattr(endpoint, host) and hasattr(endpoint, port):
            return f"tcp:{getattr(endpoint, host)}:{getattr(endpoint, port)}"
    path = getattr(endpoint, "_path", None)
    if path is not None:
        return f"unix:{path}"
    return None


# -- twisted.web: the Site's HTTP/1.1 channel ---------------------------------------


def _proxy_keeps_channel() -> list[str]:
    """A check that Twisted's channel proxy keeps its channel in ``_channel``."""
    name = "twisted.web.http._GenericHTTPChannelProtocol"
    try:
        proxy: Any = _find(name)
    except LookupError:
        return [name]
    marker = object()
    try:
        kept = proxy(marker)._channel is marker
    except Exception:
        kept = False
    return [] if kept else [f"{name}._channel"]


WEB_CHANNEL = (
    Private(
        "twisted.web.http._GenericHTTPChannelProtocol._channel",
        "take the HTTPChannel out of the proxy Site.buildProtocol returns, once"
        " the bytes say HTTP/1.1",
        _proxy_keeps_channel,
    ),
    Private(
        "twisted.web.http._genericHTTPChannelProtocolFactory",
        "recognise a Site whose channels are Twisted's own, which WebFactory"
        " then builds directly",
        _exists("twisted.web.http._genericHTTPChannelProtocolFactory"),
    ),
)

#: What gives the TLS transport under an HTTP/2 request.
H2_STREAM_CONNECTION = Private(
    "twisted.web._http2.H2Stream._conn",
    "find an HTTP/2 request's TLS transport through its stream's connection",
    _names_in("twisted.web._http2.H2Stream.__init__", "_conn"),
)


def channel_proxy() -> tuple[type | None, object | None]:
    """Twisted's channel proxy class and the Site factory method making it.

    ``(None, None)`` where :data:`WEB_CHANNEL` is not all there; the Site's
    channel then keeps Twisted's proxy in front of it.
    """
    if missing(WEB_CHANNEL):
        return None, None
    proxy = _find("twisted.web.http._GenericHTTPChannelProtocol")
    factory = _find("twisted.web.http._genericHTTPChannelProtocolFactory")
    return (proxy if isinstance(proxy, type) else None), factory


def proxied_channel(proxy: object) -> Any:
    """The HTTPChannel inside one of Twisted's channel proxies."""
    return getattr(proxy, "_channel", None)


def h2_stream_connection(stream: object) -> object | None:
    """The HTTP/2 connection an ``H2Stream`` belongs to, or None."""
    connection: object | None = getattr(stream, "_conn", None)
    return connection


# -- twisted.web: HTTP/2 -------------------------------------------------------------

#: What start_h2 sets or calls on the class (requestFactory is set on
#: instances only), and what txcmux._web._h2guard overrides.
_H2_ATTRIBUTES = (
    "writeHeaders",
    "writeDataToStream",
    "endRequest",
    "site",
    "factory",
    "timeOut",
    "callLater",
    "setTimeout",
    "makeConnection",
    "dataReceived",
    "connectionLost",
)
_H2_INSTALL_HINT = (
    "install Twisted's HTTP/2 extra (pip install 'twisted[http2]': the h2 and"
    " priority packages), or pass http2=False to serve HTTP/1.1 only"
)


def _h2_connection_shape() -> list[str]:
    try:
        connection: Any = _find("twisted.web._http2.H2Connection")
    except LookupError:
        return ["twisted.web._http2.H2Connection"]
    lacking = [name for name in _H2_ATTRIBUTES if not hasattr(connection, name)]
    if not IPushProducer.implementedBy(connection):
        lacking.append("IPushProducer")
    try:
        inspect.signature(connection).bind(reactor=None)
    except (TypeError, ValueError):
        lacking.append("__init__(reactor)")
    return lacking


H2_CONNECTION = Private(
    "twisted.web._http2.H2Connection",
    "serve HTTP/2 (h2c, and h2 after ALPN) with requestFactory, site,"
    " factory, timeOut and callLater set as Twisted's channel proxy sets them",
    _h2_connection_shape,
)


def h2_connection_class() -> type[Any]:
    """Twisted's ``H2Connection`` class, or ConfigurationError saying why not.

    Raises when Twisted was installed without HTTP/2 (``H2_ENABLED`` false)
    or when its private HTTP/2 class no longer looks as txcmux expects.
    """
    from twisted.web import http

    if not getattr(http, "H2_ENABLED", False):
        raise ConfigurationError(
            "HTTP/2 is unavailable: twisted.web.http.H2_ENABLED is false in"
            f" Twisted {twisted_version()}; {_H2_INSTALL_HINT}"
        )
    lacking = H2_CONNECTION.check()
    if lacking:
        raise ConfigurationError(
            f"twisted.web._http2.H2Connection in Twisted {twisted_version()}"
            f" lacks {', '.join(lacking)}; txcmux.web needs a Twisted release"
            f" between {OLDEST} and {TESTED} (the range it was checked against),"
            " or pass http2=False to serve HTTP/1.1 only"
        )
    connection_class: type[Any] = _find(  # type: ignore[assignment]
        "twisted.web._http2.H2Connection"
    )
    return connection_class


#: Where an H2Connection paused by its transport keeps what it still owes.
H2_BLOCKED = Private(
    "twisted.web._http2.H2Connection._consumerBlocked",
    "close a refused HTTP/2 connection through TLS only once its buffered"
    " GOAWAY is written",
    _names_in("twisted.web._http2.H2Connection.__init__", "_consumerBlocked"),
)


def h2_blocked(connection: object) -> Any:
    """The Deferred a paused ``H2Connection`` fires on resuming, or None.

    Its callbacks first write the control frames (a GOAWAY) the pause held.
    """
    return getattr(connection, "_consumerBlocked", None)


#: Every entry, for a test that the installed Twisted has them all.
ALL = (
    EXIT_SIGNAL,
    *SPLICE,
    *TLS_HALF_CLOSE,
    *ENDPOINT_NAMES,
    *WEB_CHANNEL,
    H2_STREAM_CONNECTION,
    H2_CONNECTION,
    H2_BLOCKED,
)
