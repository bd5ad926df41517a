"""Turning a checked :class:`~txcmux.config.Config` into a running service.

::

    from txcmux.config import load, make_service

    service = make_service(load("cmux.toml"))
    service.setServiceParent(application)

:func:`make_service` builds every factory (calling the callables the file
names) but starts nothing: the :class:`CmuxService` it returns listens when
it is started, and on stop it stops listening, lets the factories stop (a
Site closes its log) and stops the in-process gRPC server.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site

from ._config_schema import (
    Config,
    FactoryTarget,
    GrpcTarget,
    ProxyTarget,
    RouteConfig,
    StaticTarget,
    TLSTarget,
    WebTarget,
    _quote,
)
from ._errors import ConfigurationError
from ._factory import ProtocolSwitchingFactory
from ._route import Route

if TYPE_CHECKING:
    from .grpcserver import GrpcServer

_log = Logger(namespace="txcmux")


def _route_error(config: Config, route: RouteConfig, key: str, problem: str) -> str:
    return f"{config.source}: route {_quote(route.name)}: key {_quote(key)}: {problem}"


def _unavailable(
    config: Config, route: RouteConfig, module: str, error: ImportError
) -> ConfigurationError:
    return ConfigurationError(
        _route_error(
            config,
            route,
            route.target.kind,
            f"target {route.target.kind!r} is not available in this build"
            f" ({module} cannot be imported: {error})",
        )
    )


def _called(
    config: Config,
    route: RouteConfig,
    path: str,
    obj: object,
    accepts: Callable[[object], bool],
    expected: str,
) -> object:
    """``obj`` if ``accepts`` it, else what calling it returns, checked."""
    if accepts(obj):
        return obj
    key = route.target.kind
    if not callable(obj):
        raise ConfigurationError(
            _route_error(config, route, key, f"{path} is {obj!r}; expected {expected}")
        )
    try:
        made = obj()
    except Exception as error:
        raise ConfigurationError(
            _route_error(
                config,
                route,
                key,
                f"calling {path}() raised {type(error).__name__}: {error}",
            )
        ) from None
    if not accepts(made):
        raise ConfigurationError(
            _route_error(
                config, route, key, f"{path}() returned {made!r}; expected {expected}"
            )
        )
    return made


def _is_web(obj: object) -> bool:
    return isinstance(obj, Site) or IResource.providedBy(obj)


class _Builder:
    """Builds each route's factory once, and the one shared gRPC server."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.factories: dict[str, IProtocolFactory] = {}
        self.grpc_server: GrpcServer | None = None
        grpc_functions: list[Callable[[Any], object]] = []
        for route in config.routes:
            if isinstance(route.target, GrpcTarget):
                grpc_functions += route.target.functions
        self._grpc_functions = grpc_functions

    def factory(self, name: str) -> IProtocolFactory:
        if name not in self.factories:
            route = self.config.route(name)
            try:
                self.factories[name] = self._build(route)
            except ConfigurationError as error:
                if str(error).startswith(f"{self.config.source}: "):
                    raise
                raise ConfigurationError(
                    _route_error(self.config, route, route.target.kind, str(error))
                ) from None
        return self.factories[name]

    def route(self, name: str) -> Route:
        config_route = self.config.route(name)
        return Route(
            name, [m.matcher for m in config_route.matchers], self.factory(name)
        )

    def _web(self, route: RouteConfig, site_or_resource: object) -> IProtocolFactory:
        try:
            from .web import WebFactory
        except ImportError as error:
            raise _unavailable(self.config, route, "txcmux.web", error) from None
        if isinstance(site_or_resource, Site):
            return WebFactory(site_or_resource)
        return WebFactory(site_or_resource, reactor=self.reactor)  # type: ignore[arg-type]

    def _build(self, route: RouteConfig) -> IProtocolFactory:
        target = route.target
        config = self.config
        if isinstance(target, WebTarget):
            found = _called(
                config,
                route,
                target.path,
                target.obj,
                _is_web,
                "an IResource or a twisted.web Site, or a callable returning one",
            )
            return self._web(route, found)
        if isinstance(target, StaticTarget):
            from twisted.web.static import File

            return self._web(route, File(str(target.directory)))
        if isinstance(target, FactoryTarget):
            found = _called(
                config,
                route,
                target.path,
                target.obj,
                IProtocolFactory.providedBy,
                "a protocol factory (IProtocolFactory), or a callable returning one",
            )
            return found  # type: ignore[return-value]
        if isinstance(target, ProxyTarget):
            try:
                from .relay import RelayFactory
            except ImportError as error:
                raise _unavailable(config, route, "txcmux.relay", error) from None
            return RelayFactory(target.endpoint, reactor=self.reactor, name=route.name)
        if isinstance(target, GrpcTarget):
            return self._grpc(route)
        return self._tls(route, target)

    def _grpc(self, route: RouteConfig) -> IProtocolFactory:
        try:
            from .grpcserver import GrpcServer
        except ImportError as error:
            raise _unavailable(self.config, route, "txcmux.grpcserver", error) from None
        if self.grpc_server is None:
            settings = self.config.grpc_server
            grace = {} if settings.grace is None else {"grace": settings.grace}
            self.grpc_server = GrpcServer(
                self._grpc_functions,
                max_workers=settings.max_workers,
                maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
                options=settings.options,
                reactor=self.reactor,
                **grace,
            )
        return self.grpc_server.factory(name=route.name)

    def _tls(self, route: RouteConfig, target: TLSTarget) -> IProtocolFactory:
        try:
            from .tls import TLSTerminationFactory
        except ImportError as error:
            raise _unavailable(self.config, route, "txcmux.tls", error) from None
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
        options: dict[str, Any] = dict(target.options)
        return TLSTerminationFactory(
            target.certificate, target.key, detector, clock=self.reactor, **options
        )


class _Listener(service.Service):
    """One ``listen`` endpoint: listens when started, stops listening on stop."""

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
    ) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        """Listen now (before twistd drops privileges); fail loudly now."""
        self._listen()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        """Listen, unless privilegedStartService did already."""
        self._listen()
        super().startService()  # type: ignore[no-untyped-call]

    def _listen(self) -> None:
        if self.listening is not None:
            return
        listening = self.endpoint.listen(self.factory)
        early: list[object] = []

        def note(result: object) -> object:
            early.append(result)
            return result

        listening.addBoth(note)
        if early and isinstance(early[0], Failure):
            # Failed at once (the usual case: an address in use, a bad
            # interface): say it plainly and stop start-up, no traceback.
            listening.addErrback(lambda failure: None)
            message = (
                f"txcmux: cannot listen on {self.description}:"
                f" {early[0].getErrorMessage()}"
            )
            _log.critical("{message}", message=message)
            raise SystemExit(1)  # twistd's log (or stdout) has the reason
        self.listening = listening.addCallbacks(self._listened, self._failed_later)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def _failed_later(self, failure: Failure) -> Failure:
        _log.critical(
            "txcmux: cannot listen on {listen}: {error}",
            listen=self.description,
            error=failure.getErrorMessage(),
        )
        return failure

    def address(self) -> str:
        """The address listened on: ``127.0.0.1:8080``, a path, or ``?``."""
        if self.port is None:
            return "?"
        host = self.port.getHost()
        if hasattr(host, "port"):
            return f"{getattr(host, 'host', '')}:{host.port}"
        name = getattr(host, "name", None)
        return os.fsdecode(name) if isinstance(name, str | bytes) else str(host)

    def port_file_line(self) -> str:
        """The port number for TCP, else the address (a unix socket path)."""
        host = self.port.getHost() if self.port is not None else None
        if host is not None and hasattr(host, "port"):
            return str(host.port)
        return self.address()

    def stopService(self) -> defer.Deferred[None] | None:
        """Stop listening (the factories stop when the last port closes)."""
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        self.listening = None
        if port is None:
            return None
        stopped = port.stopListening()
        return stopped if isinstance(stopped, defer.Deferred) else defer.succeed(None)


class CmuxService(service.MultiService):
    """Everything a config runs: the gRPC server (if any), then the listeners.

    ``mux`` is the :class:`~txcmux.ProtocolSwitchingFactory` every listener
    shares; ``grpc_server`` the in-process gRPC server service, or None.
    With ``port_file``, once every listener listens, the file gets one line
    per listener: the TCP port number, or the address for other kinds.
    A stop caused by SIGTERM ends twistd with exit status 0.
    """

    def __init__(
        self,
        config: Config,
        mux: ProtocolSwitchingFactory,
        grpc_server: service.Service | None,
        *,
        reactor: Any,
        port_file: str | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.mux = mux
        self.grpc_server = grpc_server
        self.reactor = reactor
        self.port_file = port_file
        if grpc_server is not None:
            grpc_server.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.listeners: list[_Listener] = []
        for description in config.listen:
            endpoint = endpoints.serverFromString(reactor, description)  # type: ignore[no-untyped-call]
            listener = _Listener(description, endpoint, mux)
            listener.setServiceParent(self)  # type: ignore[no-untyped-call]
            self.listeners.append(listener)

    def startService(self) -> None:
        """Start the gRPC server and the listeners; log once all listen."""
        super().startService()  # type: ignore[no-untyped-call]
        self.reactor.addSystemEventTrigger(
            "after", "shutdown", _exit_zero_on_sigterm, self.reactor
        )
        waiting = [listener.listening for listener in self.listeners]
        all_up = defer.gatherResults(
            [d for d in waiting if d is not None], consumeErrors=True
        )
        all_up.addCallbacks(lambda _: self._started(), self._not_started)

    def _started(self) -> None:
        config = self.config
        listening = ", ".join(
            f"{listener.description} ({listener.address()})"
            for listener in self.listeners
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
            _write_port_file(self.port_file, self.listeners)

    def _not_started(self, failure: Failure) -> None:
        _log.critical("txcmux: not every listener could start; stopping")
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening, let the factories stop, stop the gRPC server."""
        _log.info("txcmux: stopping: closing listeners")
        done: defer.Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]

        def stopped(result: object) -> None:
            _log.info("txcmux: stopped")

        return done.addCallback(stopped)


def _write_port_file(path: str, listeners: list[_Listener]) -> None:
    lines = [listener.port_file_line() for listener in listeners]
    partial = Path(path + ".partial")
    partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(partial, path)


def _exit_zero_on_sigterm(reactor: Any) -> None:
    """SIGTERM is how services are asked to stop: a clean stop is a success.

    twistd re-raises the signal that stopped the reactor once it returns
    (``reactor._exitSignal``), so the process would die of SIGTERM; after an
    orderly shutdown we clear it and twistd exits 0.
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None


def make_service(
    config: Config, *, reactor: Any = None, port_file: str | None = None
) -> CmuxService:
    """Build the factories of ``config`` into a service that is not started yet.

    Raises :class:`~txcmux.ConfigurationError` for what only building shows
    (a ``web`` callable that returns something else, an unreadable TLS
    certificate, a target missing from this installation).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    builder = _Builder(config, reactor)
    routes = [builder.route(name) for name in config.listener_routes]
    for route in config.routes:  # build routes used only behind TLS too
        builder.factory(route.name)
    mux = ProtocolSwitchingFactory(
        routes,
        sniff_timeout=config.sniff_timeout,
        max_sniff_bytes=config.max_sniff_bytes,
        on_timeout=config.on_timeout,
        clock=reactor,
    )
    return CmuxService(
        config, mux, builder.grpc_server, reactor=reactor, port_file=port_file
    )
