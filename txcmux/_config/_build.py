"""Turning a checked :class:`~txcmux.config.Config` into a running service.

::

    from txcmux.config import load, make_service

    service = make_service(load("cmux.toml"))
    service.setServiceParent(application)

:func:`make_service` builds every factory (calling the callables the file
names) but starts nothing: the :class:`CmuxService` it returns listens when
it is started (each listener is Twisted's ``StreamServerEndpointService``),
and on stop it stops listening, lets the factories stop (a Site closes its
log) and stops the in-process gRPC server.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from .._compat import clear_sigterm_exit
from .._errors import ConfigurationError, ListenError
from .._factory import ProtocolSwitchingFactory
from .._route import Route
from ._endpoints import listen_endpoint
from ._schema import (
    Config,
    FactoryTarget,
    GrpcTarget,
    ProxyTarget,
    RouteConfig,
    StaticTarget,
    TLSTarget,
    WebTarget,
)
from ._values import Where, importable_from

if TYPE_CHECKING:
    from ..grpcserver import GrpcServer

_log = Logger(namespace="txcmux")


def _is_web(obj: object) -> bool:
    return isinstance(obj, Site) or IResource.providedBy(obj)


#: What each target that names an object accepts, as messages say it.
_EXPECTED = {
    "web": (_is_web, "an IResource or a twisted.web Site, or a callable returning one"),
    "factory": (
        IProtocolFactory.providedBy,
        "a protocol factory (IProtocolFactory), or a callable returning one",
    ),
}


class _Builder:
    """Builds each route's factory once, and the one shared gRPC server."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.factories: dict[str, IProtocolFactory] = {}
        self.grpc_server: GrpcServer | None = None

    def where(self, route: RouteConfig) -> Where:
        return Where(self.config.source).in_route(route.name).at(route.target.kind)

    def factory(self, name: str) -> IProtocolFactory:
        if name not in self.factories:
            route = self.config.route(name)
            try:
                self.factories[name] = self._build(route)
            except ConfigurationError as error:
                if str(error).startswith(f"{self.config.source}: "):
                    raise
                self.where(route).fail(str(error))
        return self.factories[name]

    def route(self, name: str) -> Route:
        matchers = [m.matcher for m in self.config.route(name).matchers]
        return Route(name, matchers, self.factory(name))

    def _unavailable(
        self, route: RouteConfig, module: str, error: ImportError
    ) -> NoReturn:
        self.where(route).fail(
            f"target {route.target.kind!r} is not available in this build"
            f" (txcmux.{module} cannot be imported: {error})"
        )

    def _called(self, route: RouteConfig, path: str, obj: object) -> Any:
        """``obj`` if the target accepts it, else what calling it returns, checked."""
        accepts, expected = _EXPECTED[route.target.kind]
        if accepts(obj):
            return obj
        if not callable(obj):
            self.where(route).fail(f"{path} is {obj!r}; expected {expected}")
        try:
            made = obj()
        except Exception as error:
            self.where(route).fail(
                f"calling {path}() raised {type(error).__name__}: {error}"
            )
        if not accepts(made):
            self.where(route).fail(f"{path}() returned {made!r}; expected {expected}")
        return made

    def _web(self, route: RouteConfig, site_or_resource: object) -> IProtocolFactory:
        try:
            from ..web import WebFactory
        except ImportError as error:
            self._unavailable(route, "web", error)
        if isinstance(site_or_resource, Site):
            return WebFactory(site_or_resource)
        return WebFactory(site_or_resource, reactor=self.reactor)  # type: ignore[arg-type]

    def _build(self, route: RouteConfig) -> IProtocolFactory:
        target = route.target
        if isinstance(target, WebTarget):
            return self._web(route, self._called(route, target.path, target.obj))
        if isinstance(target, StaticTarget):
            from twisted.web.static import File

            return self._web(route, File(str(target.directory)))
        if isinstance(target, FactoryTarget):
            return self._called(route, target.path, target.obj)  # type: ignore[no-any-return]
        if isinstance(target, ProxyTarget):
            try:
                from ..relay import RelayFactory
            except ImportError as error:
                self._unavailable(route, "relay", error)
            return RelayFactory(
                target.endpoint,
                reactor=self.reactor,
                name=route.name,
                send_proxy=target.send_proxy,
                proxy_checksum=target.send_proxy_checksum,
            )
        if isinstance(target, GrpcTarget):
            return self._grpc(route)
        return self._tls(route, target)

    def _grpc(self, route: RouteConfig) -> IProtocolFactory:
        try:
            from ..grpcserver import GrpcServer
        except ImportError as error:
            self._unavailable(route, "grpcserver", error)
        if self.grpc_server is None:
            functions = [
                function
                for r in self.config.routes
                if isinstance(r.target, GrpcTarget)
                for function in r.target.functions
            ]
            settings = self.config.grpc_server
            grace = {} if settings.grace is None else {"grace": settings.grace}
            self.grpc_server = GrpcServer(
                functions,
                max_workers=settings.max_workers,
                maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
                options=settings.options,
                reactor=self.reactor,
                **grace,
            )
        return self.grpc_server.factory(name=route.name)

    def _tls(self, route: RouteConfig, target: TLSTarget) -> IProtocolFactory:
        try:
            from ..tls import TLSTerminationFactory
        except ImportError as error:
            self._unavailable(route, "tls", error)
        inner = [self.route(name) for name in target.routes]
        # Without an "alpn" key, TLSTerminationFactory offers what the inner
        # routes speak: their matchers say, or else their factories do
        # (WebFactory and the gRPC server's relay announce theirs).
        detector = ProtocolSwitchingFactory(
            inner,
            sniff_timeout=self.config.sniff_timeout,
            max_sniff_bytes=self.config.max_sniff_bytes,
            clock=self.reactor,
        )
        return TLSTerminationFactory(
            target.certificate,
            target.key,
            detector,
            clock=self.reactor,
            **dict(target.options),
        )


@implementer(IStreamServerEndpoint)
class _Listener:
    """One ``listen`` endpoint, as the listening service listens on it.

    Notes the port (for the start-up log and the port file) and fires
    ``ready`` with it; says in one line when it cannot listen; can listen
    before the service starts (:meth:`listen_now`).
    """

    def __init__(self, description: str, endpoint: IStreamServerEndpoint) -> None:
        self.description = description
        self.endpoint = endpoint
        self.port: IListeningPort | None = None
        self.ready: defer.Deferred[IListeningPort] = defer.Deferred()
        self._early: defer.Deferred[IListeningPort] | None = None

    def listen_now(self, factory: IProtocolFactory) -> None:
        """Listen at once; ListenError if that fails at once."""
        attempt = self.endpoint.listen(factory)
        failed: list[Failure] = []

        def note(failure: Failure) -> Failure:
            failed.append(failure)
            return failure

        attempt.addErrback(note)
        if failed:
            attempt.addErrback(lambda failure: None)  # told in the ListenError
            raise ListenError(self._cannot(failed[0]))
        self._early = attempt

    def close_early(self) -> None:
        """Stop listening where :meth:`listen_now` listened (start-up failed)."""
        if self._early is not None:
            self._early.addCallback(lambda port: port.stopListening())

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        """Listen, or take what :meth:`listen_now` got (IStreamServerEndpoint).

        A failure is logged here, in one line; the service then gets None,
        nothing to stop (its own errback would log a traceback).
        """
        attempt, self._early = self._early or self.endpoint.listen(factory), None
        self.ready = defer.Deferred()
        outcome = attempt.addCallbacks(self._listened, self._failed)
        return cast("defer.Deferred[IListeningPort]", outcome)

    def _cannot(self, failure: Failure) -> str:
        return f"cannot listen on {self.description}: {failure.getErrorMessage()}"

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.ready.callback(port)
        return port

    def _failed(self, failure: Failure) -> None:
        _log.critical("txcmux: {message}", message=self._cannot(failure))
        self.ready.errback(failure)

    def address(self) -> str:
        """The address listened on: ``127.0.0.1:8080``, a path, or ``?``."""
        host = self.port.getHost() if self.port is not None else None
        port = getattr(host, "port", None)
        if port is not None:
            return f"{getattr(host, 'host', '')}:{port}"
        name = getattr(host, "name", None)
        return os.fsdecode(name) if isinstance(name, str | bytes) else "?"

    def port_file_line(self) -> str:
        """The port number for TCP, else the address (a unix socket path)."""
        port = getattr(self.port.getHost(), "port", None) if self.port else None
        return str(port) if port is not None else self.address()


class CmuxService(service.MultiService):
    """Everything a config runs: the gRPC server (if any), then the listeners.

    ``muxes`` holds the :class:`~txcmux.ProtocolSwitchingFactory` of each
    listener: listeners with the same PROXY protocol settings share one,
    and ``mux`` is the first listener's.  ``grpc_server`` is the in-process
    gRPC server service, or None; ``listeners`` one per ``listen`` endpoint,
    each run by Twisted's ``StreamServerEndpointService``.  With
    ``port_file``, once every listener listens, the file gets one line per
    listener: the TCP port number, or the address for other kinds.  A stop
    caused by SIGTERM ends twistd with exit status 0.
    """

    def __init__(
        self,
        config: Config,
        muxes: Sequence[ProtocolSwitchingFactory],
        grpc_server: service.Service | None,
        *,
        reactor: Any,
        port_file: str | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.muxes = list(muxes)
        self.mux = self.muxes[0]
        self.grpc_server = grpc_server
        self.reactor = reactor
        self.port_file = port_file
        if grpc_server is not None:
            grpc_server.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.listeners: list[_Listener] = []
        for i, (description, mux) in enumerate(zip(config.listen, muxes, strict=True)):
            where = config.listen_where.item(i)
            listener = _Listener(
                description, listen_endpoint(where, reactor, description)
            )
            StreamServerEndpointService(listener, mux).setServiceParent(self)  # type: ignore[no-untyped-call]
            self.listeners.append(listener)

    def listen_now(self) -> None:
        """Listen on every endpoint before the service starts; ListenError if one
        cannot (the ones already listening are closed again)."""
        try:
            for listener, mux in zip(self.listeners, self.muxes, strict=True):
                listener.listen_now(mux)
        except ListenError:
            for listener in self.listeners:
                listener.close_early()
            raise

    def startService(self) -> None:
        """Start the gRPC server and the listeners; log once all listen."""
        super().startService()  # type: ignore[no-untyped-call]
        self.reactor.addSystemEventTrigger(
            "after", "shutdown", clear_sigterm_exit, self.reactor
        )
        all_up = defer.gatherResults(
            [listener.ready for listener in self.listeners], consumeErrors=True
        )
        all_up.addCallbacks(lambda _: self._started(), self._not_started)

    def _started(self) -> None:
        config = self.config
        listening = ", ".join(
            f"{written.describe()} ({listener.address()})"
            for written, listener in zip(config.listeners, self.listeners, strict=True)
        )
        routes = "; ".join(
            f"{i}. {config.route(name).describe()}"
            for i, name in enumerate(config.listener_routes, 1)
        )
        extra = (
            f"; clients silent for {config.sniff_timeout:g} s go to {config.on_timeout}"
            if config.on_timeout
            else ""
        )
        _log.info(
            "txcmux: {source}: listening on {listening}; routes in priority"
            " order: {routes}{extra}",
            source=config.source,
            listening=listening,
            routes=routes,
            extra=extra,
        )
        if self.port_file is not None:
            lines = [listener.port_file_line() for listener in self.listeners]
            partial = Path(self.port_file + ".partial")
            partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            os.replace(partial, self.port_file)

    def _not_started(self, failure: Failure) -> None:
        _log.critical("txcmux: not every listener could start; stopping")
        self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening, let the factories stop, stop the gRPC server."""
        _log.info("txcmux: stopping: closing listeners")
        done: defer.Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]

        def stopped(result: object) -> None:
            for listener in self.listeners:
                listener.port = None
            _log.info("txcmux: stopped")

        return done.addCallback(stopped)


def make_service(
    config: Config, *, reactor: Any = None, port_file: str | None = None
) -> CmuxService:
    """Build the factories of ``config`` into a service that is not started yet.

    Raises :class:`~txcmux.ConfigurationError` for what only building shows
    (a ``web`` callable that returns something else, an unreadable TLS
    certificate, a target missing from this installation, a ``systemd:``
    socket that was not passed).  Modules next to the config file import
    while the callables are called.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    builder = _Builder(config, reactor)
    with importable_from(config.base_dir):
        routes = [builder.route(name) for name in config.listener_routes]
        for route in config.routes:  # build routes used only behind TLS too
            builder.factory(route.name)
    # One detector for each kind of listener: with or without a PROXY stage.
    shared: dict[tuple[str, tuple[str, ...], int], ProtocolSwitchingFactory] = {}
    muxes = []
    for listener in config.listeners:
        kind = (
            listener.proxy_protocol,
            listener.trusted_proxies,
            listener.proxy_protocol_max_bytes,
        )
        if kind not in shared:
            shared[kind] = ProtocolSwitchingFactory(
                routes,
                sniff_timeout=config.sniff_timeout,
                max_sniff_bytes=config.max_sniff_bytes,
                on_timeout=config.on_timeout,
                clock=reactor,
                prelude=listener.prelude(),
            )
        muxes.append(shared[kind])
    return CmuxService(
        config, muxes, builder.grpc_server, reactor=reactor, port_file=port_file
    )
