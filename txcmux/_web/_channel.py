"""The web target: one Site over HTTP/1.1, h2c and h2, chosen on the first bytes.

:class:`WebFactory` is a protocol factory for a txcmux route (or any
listener).  Each connection it serves becomes the Site's HTTP/1.1 channel,
or Twisted's HTTP/2 connection when the bytes are the HTTP/2 preface (prior
knowledge, "h2c") or TLS ALPN chose ``h2``::

    >>> from twisted.internet.task import Clock
    >>> from twisted.internet.testing import StringTransport
    >>> from twisted.web.resource import Resource
    >>> from twisted.web.server import Site
    >>> from txcmux.matchers import PREFACE
    >>> web = WebFactory(Site(Resource(), reactor=Clock()))
    >>> connection = web.buildProtocol(None)
    >>> connection.makeConnection(StringTransport())
    >>> connection.dataReceived(PREFACE)  # the HTTP/2 preface: h2c
    >>> dict(web.stats)
    {'h2c': 1}

After that choice the transport calls the chosen channel directly: nothing
of txcmux stays on the path of later reads.  The few Twisted internals this
relies on (the Site's channel proxy, ``H2Connection``) are reached through
:mod:`txcmux._compat`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolNegotiationFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from .. import _compat
from .._errors import ConfigurationError, seconds_argument
from .._handoff import Handoff, IHandoffFactory, IHandoffReceiver, install
from .._log import SHOWN_BYTES, describe_peer, log
from ..matchers._http2 import PREFACE
from ._deadline import DEFAULT_HEADER_TIMEOUT, HeaderDeadline
from ._grpc_backend import GrpcBackend
from ._grpcweb import GrpcWebResource
from ._h2c import start_h2
from ._h2guard import guarded
from ._streams import per_stream

# Looked up once: twisted.web.http is a deprecation proxy whose attribute
# lookups cost more than a microsecond each.
_GENERIC_CHANNEL, _GENERIC_CHANNEL_FACTORY = _compat.channel_proxy()
_HTTP_CHANNEL = http.HTTPChannel


@implementer(IHandoffFactory, IProtocolNegotiationFactory)
class WebFactory(Factory):
    """A protocol factory serving one Site over HTTP/1.1, h2c and h2.

    ``site_or_resource`` is a :class:`twisted.web.server.Site`, served as it
    is (its access log, ``timeOut``, ``requestFactory``, ``reactor`` and
    channel), or any ``IResource``, wrapped in a new Site built with
    ``reactor`` (which must be left out, or be the Site's own, when a Site is
    given).  ``http2=False`` serves HTTP/1.1 only and closes connections that
    open with the HTTP/2 preface or negotiated ``h2``; with the default,
    HTTP/2 support in Twisted is required and checked here (a
    :class:`~txcmux.ConfigurationError` says what to install).

    Starting and stopping this factory starts and stops the Site, which
    opens and closes its access log.  ``stats`` counts connections by the
    protocol chosen (``http/1.1``, ``h2c``, ``h2``) and those closed before a
    choice (``closed.timeout``, ``closed.http2_disabled``), or on a frame
    header announcing more than the maximum frame size
    (``closed.frame_too_large``: see :mod:`txcmux._web._h2guard`).

    ``grpc_backend`` routes each HTTP/2 stream on its own headers: streams
    whose ``content-type`` is gRPC go to that grpcio server as streams of
    their own (see :mod:`txcmux._web._streams`), every other stream and
    every HTTP/1.1 request to the Site.  It is a Twisted client endpoint
    string (``"tcp:host=127.0.0.1:port=50051"``, ``"unix:/run/app.sock"``),
    an ``IStreamClientEndpoint``, or a :class:`txcmux.grpcserver.GrpcServer`
    (the in-process server).  ``stats`` then also counts ``grpc_streams``,
    and ``grpc_backend`` (a :class:`GrpcBackend`) counts the calls.
    ``grpc_web=True`` also translates gRPC-Web calls (HTTP/1.1 or HTTP/2,
    from browsers) for that backend, allowing scripts of the
    ``grpc_web_origins`` pages (``"*"``: any) to call (see
    :mod:`txcmux._web._grpcweb`); ``name`` names the route in log lines.

    ``header_timeout`` gives each HTTP/1.1 request that many seconds from
    its first byte to the end of its header block, then answers 408 and
    closes (see :mod:`txcmux._web._deadline`); on HTTP/2 it bounds each
    header block, from its HEADERS frame to the end of the frame with
    END_HEADERS, then sends GOAWAY (PROTOCOL_ERROR) and closes (see
    :mod:`txcmux._web._h2guard`).  Both count as ``closed.header_timeout``;
    0 or None turns it off.  The default, 60 s, is nginx's
    ``client_header_timeout``.
    """

    noisy = False

    def __init__(
        self,
        site_or_resource: Site | IResource,
        *,
        reactor: IReactorTime | None = None,
        http2: bool = True,
        grpc_backend: object = None,
        grpc_web: bool = False,
        grpc_web_origins: Iterable[str] = (),
        name: str = "web",
        header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        header_timeout = seconds_argument(
            "WebFactory", "header_timeout", header_timeout, off="0"
        )
        self.header_timeout: float = header_timeout
        self.name = name
        if isinstance(site_or_resource, Site):
            site = site_or_resource
            if reactor is not None and reactor is not site.reactor:
                raise ConfigurationError(
                    "WebFactory(site, reactor=...): a Site brings its own reactor;"
                    " build it with Site(resource, reactor=...) instead"
                )
        elif IResource.providedBy(site_or_resource):
            site = Site(site_or_resource, reactor=reactor)  # type: ignore[no-untyped-call]
        else:
            raise ConfigurationError(
                "WebFactory needs a twisted.web.server.Site or an IResource,"
                f" not {site_or_resource!r}"
            )
        self.site: Site = site
        self.http2 = http2
        self.grpc_backend: GrpcBackend | None = None
        self._h2_connection = guarded(_compat.h2_connection_class()) if http2 else None
        if grpc_backend is not None:
            if not http2:
                raise ConfigurationError(
                    "WebFactory(grpc_backend=...) needs HTTP/2: gRPC is HTTP/2,"
                    " and http2=False serves HTTP/1.1 only"
                )
            self.grpc_backend = GrpcBackend(
                _backend_endpoint(grpc_backend, site.reactor),
                clock=site.reactor,
                name=f"{name} grpc_backend",
            )
            self._h2_connection = per_stream(guarded(_compat.h2_connection_class()))
        self.stats: Counter[str] = Counter()
        if grpc_web:
            if self.grpc_backend is None:
                raise ConfigurationError(
                    "WebFactory(grpc_web=True) sends the calls to grpc_backend;"
                    " expected grpc_backend=... as well"
                )
            site.resource = GrpcWebResource(
                site.resource, self.grpc_backend, grpc_web_origins, self.stats
            )

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """A protocol that turns into the Site's channel on the first bytes."""
        if _is_plain(self.site):
            return _ChannelChooser(self, addr, None)
        template = self.site.buildProtocol(addr)  # type: ignore[no-untyped-call]
        if template is None:
            return None
        return _ChannelChooser(self, addr, template)

    def protocol_for_handoff(self, handoff: Handoff) -> IProtocol | None:
        """The Site's HTTP/1.1 channel itself when the detector's bytes say so.

        Behind a txcmux route the bytes that chose the route are known
        before anything is built; when they are HTTP/1.1 there is nothing
        left to choose, and the channel takes the connection at once.
        HTTP/2 (the preface, or ALPN ``h2``) goes through
        :meth:`buildProtocol` as on a port of its own.
        """
        buffered = handoff.buffered
        if handoff.negotiated == b"h2" or PREFACE.startswith(buffered[: len(PREFACE)]):
            return self.buildProtocol(handoff.peer)
        self.stats["http/1.1"] += 1
        if _is_plain(self.site):
            return self.bounded(http1_channel(self.site))
        template = self.site.buildProtocol(handoff.peer)  # type: ignore[no-untyped-call]
        return None if template is None else self.bounded(_unwrapped(template))

    def bounded(self, channel: IProtocol) -> IProtocol:
        """``channel`` (HTTP/1.1, not yet given its first bytes), with the
        ``header_timeout`` deadline on each request's header block."""
        if self.header_timeout:
            HeaderDeadline(
                channel, self.header_timeout, self.site.reactor, self.stats, self.name
            )
        return channel

    def acceptableProtocols(self) -> list[bytes]:
        """The ALPN protocols served: ``h2`` and ``http/1.1`` (or just the latter).

        A TLS-terminating route offers these for an inner route whose
        matchers do not say (``matchers.any()``, say).
        """
        return [b"h2", b"http/1.1"] if self.http2 else [b"http/1.1"]

    def startFactory(self) -> None:
        """Start the Site (it opens its access log)."""
        self.site.doStart()  # type: ignore[no-untyped-call]

    def stopFactory(self) -> None:
        """Stop the Site (it closes its access log) and close the gRPC backend."""
        self.site.doStop()  # type: ignore[no-untyped-call]
        if self.grpc_backend is not None:
            self.grpc_backend.close()

    def __repr__(self) -> str:
        return f"<WebFactory site={self.site!r} http2={self.http2}>"


def _backend_endpoint(backend: object, reactor: Any) -> IStreamClientEndpoint:
    """The client endpoint ``grpc_backend`` names (see :class:`WebFactory`)."""
    try:
        from ..grpcserver import GrpcServer
    except ImportError:  # no grpcio: no in-process server either
        pass
    else:
        if isinstance(backend, GrpcServer):
            return backend.endpoint()
    if IStreamClientEndpoint.providedBy(backend):
        return backend
    if isinstance(backend, str):
        try:
            parsed: IStreamClientEndpoint = endpoints.clientFromString(reactor, backend)  # type: ignore[no-untyped-call]
        except Exception as problem:
            raise ConfigurationError(
                f"grpc_backend: cannot use {backend!r} ({problem}); expected a client"
                " endpoint string such as 'tcp:host=127.0.0.1:port=50051' or"
                " 'unix:/run/app.sock'"
            ) from problem
        return parsed
    raise ConfigurationError(
        f"grpc_backend is {backend!r}; expected a client endpoint string, an"
        " IStreamClientEndpoint or a txcmux.grpcserver.GrpcServer"
    )


def _is_plain(site: Site) -> bool:
    """Whether ``site`` builds its channels as Twisted's own Site does."""
    make = site.protocol  # a bound method: Twisted's factory takes the Site
    return (
        getattr(make, "__func__", make) is _GENERIC_CHANNEL_FACTORY
        and type(site).buildProtocol is Site.buildProtocol
    )


def http1_channel(site: Site) -> http.HTTPChannel:
    """The HTTP/1.1 channel a plain Site's ``buildProtocol`` would configure.

    Twisted's ``Site.buildProtocol`` wraps it in a proxy that chooses
    between HTTP/1.1 and HTTP/2 and stays on the path of every read; once
    the choice is made that proxy has no work, so a plain Site's channel is
    built here directly, with the five attributes ``Factory``,
    ``HTTPFactory`` and ``Site`` set on it (tests/test_web.py checks that
    the two stay the same).
    """
    channel: Any = _HTTP_CHANNEL()  # type: ignore[no-untyped-call]
    channel.factory = site
    channel.callLater = site.reactor.callLater
    channel.timeOut = site.timeOut
    channel.requestFactory = site.requestFactory
    channel.site = site
    result: http.HTTPChannel = channel
    return result


def _unwrapped(template: IProtocol) -> IProtocol:
    """The HTTP/1.1 channel inside Twisted's ALPN-switching proxy, if it is one.

    ``Site.buildProtocol`` returns a ``_GenericHTTPChannelProtocol`` that
    proxies every call to an ``HTTPChannel`` it configured; since the choice
    is made, the channel can take the transport itself.  Anything else (a
    Site subclass with its own channel) is used as it is.
    """
    if _GENERIC_CHANNEL is not None and type(template) is _GENERIC_CHANNEL:
        inner = _compat.proxied_channel(template)
        if inner is not None:
            channel: IProtocol = inner
            return channel
    return template


@implementer(IHandoffReceiver)
class _ChannelChooser(Protocol):
    """One connection until its first bytes say which HTTP it speaks.

    Waits only while the bytes are a strict prefix of the HTTP/2 preface
    (at most 23 bytes), and at most the Site's ``timeOut`` seconds (that
    timer starts only when it has to wait: behind a detector, which replays
    the bytes it decided on right after connecting, it seldom does).  Then
    it builds the channel, points the transport at it with
    :func:`txcmux._handoff.install`, and replays what it held.  Where the
    transport still calls it afterwards (another protocol forwarding, as the
    detector does while it still filters the client's bytes), it forwards
    and tries again to step out of the way on each such read.
    """

    handoff: Handoff | None = None
    _buffer = b""
    _channel: IProtocol | None = None
    _timer: IDelayedCall | None = None
    _closed = False

    def __init__(
        self, web: WebFactory, addr: IAddress | None, template: IProtocol | None
    ) -> None:
        self._web = web
        self._addr = addr
        self._template = template  # None: a plain Site, built on choosing

    def handoff_received(self, handoff: Handoff) -> None:
        """Learn that the detector replays ``handoff.buffered`` next."""
        self.handoff = handoff

    def connectionMade(self) -> None:
        if self.handoff is None or not self.handoff.buffered:
            self._start_timer()

    def dataReceived(self, data: bytes) -> None:
        channel = self._channel
        if channel is not None:
            install(self.transport, self, channel)
            channel.dataReceived(data)
            return
        if self._closed:
            return
        self._buffer += data
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if (
            negotiated != b"h2"
            and len(self._buffer) < len(PREFACE)
            and PREFACE.startswith(self._buffer)
        ):
            if self._timer is None:
                self._start_timer()
            return  # the preface or not: the next bytes will say
        self._choose(negotiated)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        if self._channel is not None:
            self._channel.connectionLost(reason)

    # -- choosing ------------------------------------------------------------

    def _choose(self, negotiated: object) -> None:
        self._cancel_timer()
        web = self._web
        transport = self.transport
        assert transport is not None
        if negotiated == b"h2" or self._buffer.startswith(PREFACE):
            kind = "h2" if negotiated == b"h2" else "h2c"
            if web._h2_connection is None:
                self._close("http2_disabled", f"{kind} but http2=False")
                return
            template = self._template
            if template is None:
                template = web.site.buildProtocol(self._addr)  # type: ignore[no-untyped-call]
            channel = start_h2(web._h2_connection, transport, template, web.site)
            channel.stats = web.stats  # type: ignore[attr-defined]
            channel.header_timeout = web.header_timeout  # type: ignore[attr-defined]
            if web.grpc_backend is not None:
                channel.grpc_backend = web.grpc_backend  # type: ignore[attr-defined]
        else:
            kind = "http/1.1"
            if self._template is None:
                channel = http1_channel(web.site)
            else:
                channel = _unwrapped(self._template)
            channel.makeConnection(transport)
            web.bounded(channel)
        web.stats[kind] += 1
        self._channel = channel
        install(transport, self, channel)
        buffered, self._buffer = self._buffer, b""
        channel.dataReceived(buffered)

    def _start_timer(self) -> None:
        timeout = getattr(self._template, "timeOut", self._web.site.timeOut)
        if timeout is not None:
            self._timer = self._web.site.reactor.callLater(timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._close("timeout", "no request within the Site's timeOut")

    def _close(self, reason: str, detail: str) -> None:
        """Close a connection no channel will take: count, log, close."""
        self._cancel_timer()
        self._closed = True
        self._web.stats["closed." + reason] += 1
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info(
            "txcmux.web: closing connection from {peer}: {detail}"
            " ({size} bytes seen: {head!r})",
            peer=describe_peer(peer),
            detail=detail,
            size=len(self._buffer),
            head=self._buffer[:SHOWN_BYTES],
        )
        self._buffer = b""
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
