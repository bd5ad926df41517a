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
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site

from .._compat import clear_sigterm_exit
from .._drain import finish
from .._errors import ConfigurationError, ListenError
from .._factory import ProtocolSwitchingFactory
from .._process import DescriptorWatch, install_signal_handler, notify_systemd
from .._route import Route
from ._endpoints import listen_endpoint
from ._schema import (
    AsgiTarget,
    Config,
    FactoryTarget,
    GrpcTarget,
    ListenerConfig,
    ProxyTarget,
    RouteConfig,
    StaticTarget,
    TLSTarget,
    WebTarget,
    WsgiTarget,
    load,
)
from ._values import Where, importable_from
from ._workers import AdoptedEndpoint, WorkerSetup

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


def _app_settings(target: WsgiTarget | AsgiTarget) -> tuple[object, ...]:
    if isinstance(target, WsgiTarget):
        return (target.threads,)
    return (target.lifespan,)


class _Builder:
    """Builds each route's factory once, and the one shared gRPC server."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        grpc_server: GrpcServer | None = None,
        apps: dict[tuple[object, ...], Any] | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        #: The WSGI and ASGI app services, by app and settings (those of the
        #: running config, on a reload, and any new ones).
        self.apps: dict[tuple[object, ...], Any] = {} if apps is None else dict(apps)
        self.factories: dict[str, IProtocolFactory] = {}
        #: A running in-process gRPC server to reuse (a reload), else None.
        self.grpc_server: GrpcServer | None = grpc_server
        #: The detectors behind the tls routes.
        self.inner: dict[str, ProtocolSwitchingFactory] = {}

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
        route = self.config.route(name)
        matchers = [m.matcher for m in route.matchers]
        return Route(
            name, matchers, self.factory(name), max_connections=route.max_connections
        )

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
        options = self._web_options(route)
        if isinstance(site_or_resource, Site):
            return WebFactory(site_or_resource, **options)
        return WebFactory(site_or_resource, reactor=self.reactor, **options)  # type: ignore[arg-type]

    def _web_options(self, route: RouteConfig) -> dict[str, Any]:
        """WebFactory's keywords for ``route``: its name, header_timeout and
        grpc_backend (where given)."""
        options: dict[str, Any] = {"name": route.name}
        if route.header_timeout is not None:
            options["header_timeout"] = route.header_timeout
        if route.grpc_backend is None:
            return options
        backend: object = route.grpc_backend
        if backend == "in-process":
            backend = self._in_process(route, "grpc_backend")
        options.update(
            grpc_backend=backend,
            grpc_web=route.grpc_web,
            grpc_web_origins=route.grpc_web_origins,
        )
        return options

    def _build(self, route: RouteConfig) -> IProtocolFactory:
        target = route.target
        if isinstance(target, WebTarget):
            return self._web(route, self._called(route, target.path, target.obj))
        if isinstance(target, StaticTarget):
            from twisted.web.static import File

            return self._web(route, File(str(target.directory)))
        if isinstance(target, (WsgiTarget, AsgiTarget)):
            app: Any = self._app(route, target)
            return app.factory(**self._web_options(route))  # type: ignore[no-any-return]
        if isinstance(target, FactoryTarget):
            return self._called(route, target.path, target.obj)  # type: ignore[no-any-return]
        if isinstance(target, ProxyTarget):
            try:
                from .._relay._relay import DEFAULT_IDLE_TIMEOUT
                from ..relay import RelayFactory
            except ImportError as error:
                self._unavailable(route, "relay", error)
            return RelayFactory(
                target.endpoint,
                reactor=self.reactor,
                name=route.name,
                idle_timeout=(
                    DEFAULT_IDLE_TIMEOUT
                    if target.idle_timeout is None
                    else target.idle_timeout
                ),
                send_proxy=target.send_proxy,
                proxy_checksum=target.send_proxy_checksum,
            )
        if isinstance(target, GrpcTarget):
            return self._grpc(route)
        return self._tls(route, target)

    def _app(self, route: RouteConfig, target: WsgiTarget | AsgiTarget) -> object:
        """The service running ``target``'s app: one per app and its settings,
        kept from the running config on a reload (so that a reload neither
        starts a second lifespan nor a second thread pool)."""
        key = (target.kind, target.path, id(target.obj), *_app_settings(target))
        if key in self.apps:
            return self.apps[key]
        try:
            if isinstance(target, WsgiTarget):
                from ..wsgi import DEFAULT_THREADS, WSGIApplication

                threads = DEFAULT_THREADS if target.threads is None else target.threads
                app: Any = WSGIApplication(
                    target.obj, threads=threads, reactor=self.reactor
                )
            else:
                from ..asgi import ASGIApplication

                app = ASGIApplication(
                    target.obj, lifespan=target.lifespan, reactor=self.reactor
                )
        except ImportError as error:
            self.where(route).fail(
                f"target {target.kind!r} needs what pip install"
                f" 'txcmux[{target.kind}]' installs ({error})"
            )
        self.apps[key] = app
        return app

    def _grpc(self, route: RouteConfig) -> IProtocolFactory:
        return self._in_process(route, "grpc").factory(name=route.name)

    def _in_process(self, route: RouteConfig, key: str) -> GrpcServer:
        """The config's in-process gRPC server, made on first use."""
        try:
            from ..grpcserver import GrpcServer
        except ImportError as error:
            self._unavailable(route, "grpcserver", error)
        if self.grpc_server is None:
            settings = self.config.grpc_server
            functions = [
                function
                for r in self.config.routes
                if isinstance(r.target, GrpcTarget)
                for function in r.target.functions
            ]
            if settings.services is not None:
                functions.extend(settings.services.functions)
            if not functions:
                Where(self.config.source).in_route(route.name).at(key).fail(
                    "the in-process gRPC server has no services; expected"
                    ' [grpc_server] services = ["module:add_services"]'
                    " (or a route with grpc = [...])"
                )
            # Running calls get the drain's time to finish, unless told.
            grace = settings.grace
            self.grpc_server = GrpcServer(
                functions,
                max_workers=settings.max_workers,
                maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
                options=settings.options,
                reactor=self.reactor,
                grace=self.config.drain_timeout if grace is None else grace,
            )
        return self.grpc_server

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
            log_decisions=self.config.log_decisions,
        )
        self.inner[route.name] = detector
        return TLSTerminationFactory(
            target.certificate,
            target.key,
            detector,
            clock=self.reactor,
            **dict(target.options),
        )


class _Listener:
    """One endpoint listened on, and the factory it serves.

    Notes the port (for the start-up log and the port file) and fires
    ``ready`` with it; says in one line when it cannot listen; can listen
    before the service starts (:meth:`listen_now`, so that twistd can say
    an address is in use before it daemonizes).
    """

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        front: Any,
        config: ListenerConfig | None,
    ) -> None:
        self.description = description
        self.endpoint = endpoint
        #: The factory the port serves (a listener's :class:`_Front`, or the
        #: admin Site).
        self.front = front
        #: What the file says of this listener (None for the admin one).
        self.config = config
        self.port: IListeningPort | None = None
        self.ready: defer.Deferred[IListeningPort] = defer.Deferred()
        self._early: defer.Deferred[IListeningPort] | None = None
        self._attempt: defer.Deferred[Any] | None = None

    def listen_now(self) -> None:
        """Listen at once; ListenError if that fails at once."""
        attempt = self.endpoint.listen(self.front)
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

    def listen(self) -> None:
        """Listen, or take what :meth:`listen_now` got.

        A failure is logged here, in one line, and fails ``ready``.
        """
        attempt, self._early = self._early or self.endpoint.listen(self.front), None
        self.ready = defer.Deferred()
        self._attempt = attempt.addCallbacks(self._listened, self._failed)

    def stop(self) -> None:
        """Stop listening (connections already made go on)."""
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()
        elif self._attempt is not None and not self._attempt.called:
            self._attempt.cancel()

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


class _Front(Factory):
    """The factory a listening port keeps for its whole life.

    It hands each new connection to the listener's current detector
    factory, which a reload replaces; connections already made keep the
    one they started with.
    """

    noisy = False

    def __init__(self, mux: ProtocolSwitchingFactory) -> None:
        self.mux = mux

    def buildProtocol(self, addr: Any) -> Any:
        return self.mux.buildProtocol(addr)

    def logPrefix(self) -> str:
        """How the port's "starting on" log line names it."""
        return "txcmux"


@dataclass
class Generation:
    """What one load of the config file built: its detectors, and when.

    ``muxes`` has one :class:`~txcmux.ProtocolSwitchingFactory` per
    listener, ``inner`` those behind the ``tls`` routes, by route name.
    Connections made while a generation was current keep it until they
    close.
    """

    number: int
    config: Config
    muxes: list[ProtocolSwitchingFactory]
    inner: dict[str, ProtocolSwitchingFactory]
    #: The WSGI and ASGI app services its routes use (see ``_Builder._app``).
    apps: dict[tuple[object, ...], Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    def all_muxes(self) -> list[ProtocolSwitchingFactory]:
        """Every detector factory of this generation."""
        return [*self.muxes, *self.inner.values()]

    def open_connections(self) -> int:
        """Connections still open through this generation's listeners."""
        return sum(mux.connections.active for mux in self.all_muxes())

    def start(self) -> None:
        """Start the route factories (a Site opens its log)."""
        for mux in self.muxes:
            mux.doStart()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """Stop the route factories."""
        for mux in self.muxes:
            mux.doStop()  # type: ignore[no-untyped-call]


def build_generation(
    config: Config,
    reactor: Any,
    *,
    number: int = 1,
    grpc_server: GrpcServer | None = None,
    apps: dict[tuple[object, ...], Any] | None = None,
    measure: bool = False,
) -> tuple[Generation, GrpcServer | None]:
    """Build every factory of ``config``: a :class:`Generation`, and the
    in-process gRPC server (``grpc_server`` if one is given, to reuse; the
    app services of ``apps`` likewise)."""
    builder = _Builder(config, reactor, grpc_server, apps)
    with importable_from(config.base_dir):
        routes = [builder.route(name) for name in config.listener_routes]
        for route in config.routes:  # build routes used only behind TLS too
            builder.factory(route.name)
    muxes = [
        ProtocolSwitchingFactory(
            routes,
            sniff_timeout=config.sniff_timeout,
            max_sniff_bytes=config.max_sniff_bytes,
            on_timeout=config.on_timeout,
            clock=reactor,
            prelude=listener.prelude(),
            log_decisions=config.log_decisions,
            limits=listener.limits,
        )
        for listener in config.listeners
    ]
    generation = Generation(number, config, muxes, builder.inner, builder.apps)
    if measure:
        for mux in generation.all_muxes():
            mux.measure()
    return generation, builder.grpc_server


class CmuxService(service.MultiService):
    """Everything a config runs: the gRPC server (if any), the listeners, and
    the admin site (if the config has an ``[admin]`` table).

    ``muxes`` holds the current :class:`~txcmux.ProtocolSwitchingFactory`
    of each listener, ``mux`` the first listener's; ``generation`` is what
    the config file built (a :meth:`reload` makes a new one);
    ``grpc_server`` is the in-process gRPC server service, or None;
    ``listeners`` one per ``listen`` endpoint.  With ``port_file``, once
    every listener listens, the file gets one line per listener: the TCP
    port number, or the address for other kinds.

    Stopping drains (see ``txcmux._drain``): the listeners close, the
    connections still undecided are closed, HTTP/1.1 and HTTP/2 connections
    finish what they have, the gRPC server stops gracefully, relays go on;
    after ``drain_timeout`` seconds what is left is cut.  With
    :meth:`handle_signals` (``twistd cmux`` calls it) SIGHUP reloads the
    config file, a second SIGTERM cuts the drain short, and a stop caused
    by SIGTERM ends twistd with exit status 0.
    """

    def __init__(
        self,
        config: Config,
        generation: Generation,
        grpc_server: GrpcServer | None,
        *,
        reactor: Any,
        port_file: str | None = None,
        listen: Sequence[str] | None = None,
        worker: WorkerSetup | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        #: How this process was started, if it is a worker of ``workers = N``.
        self.worker = worker
        self.generation = generation
        #: Earlier generations whose connections are still open.
        self.retired: list[Generation] = []
        self.grpc_server = grpc_server
        self.reactor = reactor
        self.port_file = port_file
        self._listen = listen
        #: ``starting``, ``serving``, ``draining`` or ``stopped``.
        self.state = "starting"
        self.started_at = time.time()
        #: Why the last reload was refused, or None.
        self.reload_error: str | None = None
        self._drained: defer.Deferred[None] | None = None
        self._signals = False
        if grpc_server is not None:
            grpc_server.setServiceParent(self)  # type: ignore[no-untyped-call]
        self._adopt_apps(generation)
        self.listeners = [
            self._listener(i, listener, mux)
            for i, (listener, mux) in enumerate(
                zip(config.listeners, generation.muxes, strict=True)
            )
        ]
        #: Pauses accepting while nearly out of file descriptors.
        self.descriptors = DescriptorWatch(
            reactor, lambda: [x.port for x in self.listeners if x.port is not None]
        )
        self.admin: _Listener | None = None
        if config.admin is not None:
            self.admin = self._admin_listener(
                config.admin.listen
                if worker is None or worker.admin_socket is None
                else f"unix:{worker.admin_socket}"
            )

    @property
    def muxes(self) -> list[ProtocolSwitchingFactory]:
        """The current detector factory of each listener."""
        return self.generation.muxes

    @property
    def mux(self) -> ProtocolSwitchingFactory:
        """The first listener's current detector factory."""
        return self.generation.muxes[0]

    def _listener(
        self, index: int, config: ListenerConfig, mux: ProtocolSwitchingFactory
    ) -> _Listener:
        endpoint: IStreamServerEndpoint
        if self.worker is not None:  # the supervisor's socket, passed down
            endpoint = AdoptedEndpoint(
                self.reactor,
                self.worker.fd(index),
                haproxy=config.endpoint.startswith("haproxy:"),
            )
        else:
            where = self.config.listen_where.item(index)
            endpoint = listen_endpoint(where, self.reactor, config.endpoint)
        return _Listener(config.endpoint, endpoint, _Front(mux), config)

    def _admin_listener(self, description: str) -> _Listener:
        from ._site import admin_site
        from ._status import ServiceStatus

        where = Where(self.config.source).at("admin.listen")
        endpoint = listen_endpoint(where, self.reactor, description)
        self.status = ServiceStatus(self)
        return _Listener(description, endpoint, admin_site(self.status), None)

    def _adopt_apps(self, generation: Generation) -> None:
        """Make the WSGI and ASGI app services of ``generation`` children of
        this service (started now if it runs); the ones already are stay."""
        for app in generation.apps.values():
            if app.parent is None:
                app.setServiceParent(self)

    def _all_listeners(self) -> list[_Listener]:
        return [*self.listeners, *([self.admin] if self.admin else [])]

    def listen_now(self) -> None:
        """Listen on every endpoint before the service starts; ListenError if one
        cannot (the ones already listening are closed again)."""
        try:
            for listener in self._all_listeners():
                listener.listen_now()
        except ListenError:
            for listener in self._all_listeners():
                listener.close_early()
            raise

    def startService(self) -> None:
        """Start the gRPC server and the listeners; log once all listen."""
        super().startService()  # type: ignore[no-untyped-call]
        self.generation.start()
        self.reactor.addSystemEventTrigger(
            "after", "shutdown", clear_sigterm_exit, self.reactor
        )
        for listener in self._all_listeners():
            listener.listen()
        # Ready once every listener listens and every ASGI app's lifespan
        # startup is complete (requests that come earlier wait for it).
        all_up = defer.gatherResults(
            [
                *(listener.ready for listener in self._all_listeners()),
                *(
                    app.when_started()
                    for app in self.generation.apps.values()
                    if hasattr(app, "when_started")
                ),
            ],
            consumeErrors=True,
        )
        all_up.addCallbacks(lambda _: self._started(), self._not_started)

    def handle_signals(self) -> None:
        """SIGHUP reloads the config file; SIGTERM while draining cuts it short.

        A worker also stops (draining) once its supervisor is gone.
        """
        self._signals = True
        install_signal_handler(signal.SIGHUP, self.reactor, self._on_sighup)
        if self.worker is not None:
            self.worker.watch_supervisor(self.reactor, self._supervisor_gone)

    def _supervisor_gone(self) -> None:
        if self.state in ("starting", "serving") and self.reactor.running:
            _log.warn("txcmux: the supervisor is gone; stopping")
            self.reactor.stop()

    def _on_sighup(self) -> None:
        self.reload()

    def _started(self) -> None:
        if self.state == "starting":
            self.state = "serving"
        self._log_listening("listening on")
        if self.worker is not None:
            self.worker.report("ready")
        if self.port_file is not None:
            lines = [listener.port_file_line() for listener in self.listeners]
            partial = Path(self.port_file + ".partial")
            partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            os.replace(partial, self.port_file)
        notify_systemd("READY=1", f"STATUS=serving {self.config.summary()}")
        self._check_descriptors()
        self.descriptors.start()

    def _check_descriptors(self) -> None:
        """Warn when the limits allow more connections than file descriptors."""
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError):  # not on this platform
            return
        if soft == resource.RLIM_INFINITY:
            return
        limits = [listener.limits.max_connections for listener in self.config.listeners]
        allowed = None if None in limits else sum(filter(None, limits))
        if allowed is None or allowed >= soft:
            _log.warn(
                "txcmux: max_connections ({allowed}) allows more connections than"
                " this process has file descriptors ({soft}, ulimit -n; systemd's"
                " LimitNOFILE): past that, accepting fails with EMFILE and Twisted"
                " closes new connections at once",
                allowed="none" if allowed is None else allowed,
                soft=soft,
            )

    def _log_listening(self, what: str) -> None:
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
        if self.admin is not None:
            extra += f"; admin on {self.admin.address()}"
        _log.info(
            "txcmux: {source}: {what} {listening}; routes in priority"
            " order: {routes}{extra}",
            source=config.source,
            what=what,
            listening=listening,
            routes=routes,
            extra=extra,
        )

    def _not_started(self, failure: Failure) -> None:
        _log.critical("txcmux: not every listener or app could start; stopping")
        self.reactor.callWhenRunning(self.reactor.stop)

    # -- reload ----------------------------------------------------------------

    def reload(self) -> bool:
        """Load the config file again and serve new connections with it.

        Connections already made keep what they started with; listeners
        added to the file are opened and those removed are closed.  A file
        with any error is refused (logged in one line, kept in
        ``reload_error``) and the running config stays.  The in-process
        gRPC server keeps running as it is.  Returns whether the new config
        is live.
        """
        if self.state not in ("serving", "starting"):
            return False
        source = self.config.source
        notify_systemd("RELOADING=1")
        try:
            config = load(source, listen=self._listen)
            generation, _ = build_generation(
                config,
                self.reactor,
                number=self.generation.number + 1,
                grpc_server=self.grpc_server,
                apps=self.generation.apps,
                measure=self.admin is not None,
            )
            if config.admin != self.config.admin:
                self._warn_kept("the [admin] table")
            if config.workers != self.config.workers:
                self._warn_kept("workers")
            if self.worker is not None and config.listen != self.config.listen:
                raise ConfigurationError(
                    f'{source}: key "listen": with workers, the listeners are'
                    " the supervisor's sockets; a listener added, removed or"
                    " changed takes effect after a restart"
                )
            new_listeners = self._relisten(config, generation)
        except (ConfigurationError, ListenError) as error:
            self.reload_error = str(error)
            _log.error(
                "txcmux: reload refused, the running config stays: {error}",
                error=self.reload_error,
            )
            notify_systemd("READY=1", "STATUS=reload refused")
            if self.worker is not None:
                self.worker.report(f"refused {self.reload_error}")
            return False
        old = self.generation
        before = {
            written.endpoint: mux
            for written, mux in zip(old.config.listeners, old.muxes, strict=True)
        } | {f"tls:{name}": mux for name, mux in old.inner.items()}
        now = [
            *zip((w.endpoint for w in config.listeners), generation.muxes, strict=True),
            *((f"tls:{name}", mux) for name, mux in generation.inner.items()),
        ]
        for name, new in now:
            # The counters of a listener (or of a tls route's detector) go on
            # where they were.  (Limits count each generation apart.)
            mux = before.get(name)
            if mux is None:
                continue
            new.stats = mux.stats
            if mux.decision_seconds is not None:
                new.decision_seconds = mux.decision_seconds
                new.decision_bytes = mux.decision_bytes
        self._adopt_apps(generation)
        generation.start()
        self.generation, self.config, self.reload_error = generation, config, None
        for listener, mux in zip(new_listeners, generation.muxes, strict=True):
            listener.front.mux = mux
        closing = [old for old in self.listeners if old not in new_listeners]
        self.listeners = new_listeners
        for listener in closing:
            listener.stop()
        self.retired.append(old)
        self._retire_idle()
        self._log_listening("reloaded; listening on")
        notify_systemd("READY=1", f"STATUS=serving {config.summary()}")
        if self.worker is not None:
            self.worker.report(f"reloaded generation {generation.number}")
        return True

    def _warn_kept(self, what: str) -> None:
        _log.warn(
            "txcmux: reload: {what} changed in the file; it takes effect"
            " only after a restart",
            what=what,
        )

    def _relisten(self, config: Config, generation: Generation) -> list[_Listener]:
        """The listeners of ``config``: kept where the endpoint is the same,
        new ones listening at once (ListenError if one cannot)."""
        kept = {listener.description: listener for listener in self.listeners}
        result: list[_Listener] = []
        opened: list[_Listener] = []
        try:
            for i, (written, mux) in enumerate(
                zip(config.listeners, generation.muxes, strict=True)
            ):
                listener = kept.pop(written.endpoint, None)
                if listener is None:
                    where = config.listen_where.item(i)
                    endpoint = listen_endpoint(where, self.reactor, written.endpoint)
                    listener = _Listener(
                        written.endpoint, endpoint, _Front(mux), written
                    )
                    listener.listen_now()
                    listener.listen()
                    opened.append(listener)
                listener.config = written
                result.append(listener)
        except (ConfigurationError, ListenError):
            for listener in opened:
                listener.stop()
            raise
        return result

    def _retire_idle(self) -> None:
        """Stop the factories of earlier generations whose connections closed."""
        for generation in list(self.retired):
            if generation.open_connections() == 0:
                generation.stop()
                self.retired.remove(generation)
        if self.retired and self.running:
            self.reactor.callLater(5, self._retire_idle)

    # -- stop: drain -----------------------------------------------------------

    def generations(self) -> list[Generation]:
        """The current generation and the retired ones still open."""
        return [self.generation, *self.retired]

    def open_connections(self) -> int:
        """Connections still open through any listener."""
        return sum(g.open_connections() for g in self.generations())

    def stopService(self) -> defer.Deferred[None]:
        """Drain (see the class docstring), then stop everything."""
        if self._drained is not None:
            return self._drained
        self.state = "draining"
        config = self.config
        notify_systemd("STOPPING=1")
        if self._signals:
            install_signal_handler(signal.SIGTERM, self.reactor, self._cut)
        self.descriptors.stop()
        for listener in self.listeners:
            listener.stop()
        closed = sum(
            mux.drain()
            for generation in self.generations()
            for mux in generation.all_muxes()
        )
        _log.info(
            "txcmux: draining: listeners closed, {closed} undecided connections"
            " closed, {open} open connections have {timeout:g} s to finish",
            closed=closed,
            open=self.open_connections(),
            timeout=config.drain_timeout,
        )
        self._deadline = self.reactor.callLater(config.drain_timeout, self._cut)
        self._poll = task.LoopingCall(self._finish_connections)
        self._poll.clock = self.reactor
        self._drained = defer.Deferred()
        grpc_stopped: defer.Deferred[object] = defer.succeed(None)
        if self.grpc_server is not None and self.grpc_server.running:
            grpc_stopped = defer.maybeDeferred(self.grpc_server.stopService)
        self._grpc_stopped = grpc_stopped
        self._poll.start(0.1, now=True)
        return self._drained

    def _finish_connections(self) -> None:
        for generation in self.generations():
            for mux in generation.all_muxes():
                for protocol in mux.connections:
                    finish(protocol)
        if self.open_connections() == 0 and self._grpc_stopped.called:
            self._done(cut=0)

    def _cut(self) -> None:
        """The drain's deadline, or a second SIGTERM: cut what is left."""
        if self._drained is None or self._drained.called:
            return
        left: list[Any] = []
        for generation in self.generations():
            for mux in generation.all_muxes():
                left.extend(mux.connections)
        for protocol in left:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self._done(cut=len(left))

    def _done(self, cut: int) -> None:
        if self._poll.running:
            self._poll.stop()
        if self._deadline.active():
            self._deadline.cancel()
        if cut:
            _log.warn("txcmux: drain: cut {cut} connections still open", cut=cut)
        else:
            _log.info("txcmux: drained: every connection finished")
        for generation in self.generations():
            generation.stop()
        self.retired = []
        if self.admin is not None:
            self.admin.stop()
        done: defer.Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]

        def stopped(result: object) -> None:
            self.state = "stopped"
            _log.info("txcmux: stopped")
            assert self._drained is not None
            self._drained.callback(None)

        done.addCallback(stopped)


def make_service(
    config: Config,
    *,
    reactor: Any = None,
    port_file: str | None = None,
    listen: Sequence[str] | None = None,
    worker: WorkerSetup | None = None,
) -> CmuxService:
    """Build the factories of ``config`` into a service that is not started yet.

    Raises :class:`~txcmux.ConfigurationError` for what only building shows
    (a ``web`` callable that returns something else, an unreadable TLS
    certificate, a target missing from this installation, a ``systemd:``
    socket that was not passed).  Modules next to the config file import
    while the callables are called.  ``listen``, when the command line
    replaced the file's listeners, is kept for :meth:`CmuxService.reload`.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    generation, grpc_server = build_generation(
        config, reactor, measure=config.admin is not None
    )
    return CmuxService(
        config,
        generation,
        grpc_server,
        reactor=reactor,
        port_file=port_file,
        listen=listen,
        worker=worker,
    )
