"""GrpcServer: grpcio in this process, on a private unix socket, as a Twisted service.

grpcio cannot take a Twisted transport, so the gRPC route relays each
connection to it.  :meth:`GrpcServer.factory` is that relay: its endpoint
connects a named unix socket (:mod:`._unix_endpoint`) to the server's, and
it reports each connection to the registry (:mod:`._peers`) that
:func:`client_address` reads::

    >>> server = GrpcServer([lambda grpc_server: None])
    >>> relay = server.factory(name="grpc")
    >>> relay.acceptableProtocols(), relay.clients is CLIENTS
    ([b'h2'], True)
    >>> relay.backend
    'in-process gRPC server (not running)'
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorFromThreads,
    IReactorSocket,
    IReactorTime,
    IStreamClientEndpoint,
)
from zope.interface import implementer

from .._errors import ConfigurationError, GrpcServerError
from .._log import log
from .._relay._relay import RelayFactory
from ._peers import CLIENTS, lookup_client
from ._unix_endpoint import NamedUNIXClientEndpoint

#: What :class:`GrpcServer` takes: functions that add services to a server,
#: such as ``lambda server: add_GreeterServicer_to_server(Greeter(), server)``.
AddServices = Callable[[grpc.Server], object]


def client_address(context: Any) -> IAddress | None:
    """The real client of a gRPC call that came in through a txcmux relay.

    ``context`` is the ``grpc.ServicerContext`` a servicer method receives.
    Returns the address the client connected to the txcmux port from (for
    example ``IPv4Address('TCP', '203.0.113.9', 51234)``), or None when the
    call did not come through a relay of this process (a direct client, or
    a backend in another process).  Safe to call from servicer threads.
    """
    peer = context.peer()
    return lookup_client(peer) if isinstance(peer, str) else None


class GrpcServer(Service):
    """A grpcio server in this process, serving the txcmux gRPC route.

    On ``startService`` it builds ``grpc.server`` with a thread pool of
    ``max_workers`` (Python's default when None; every running call holds
    one thread, a streaming call for its whole life), calls each function
    of ``add_services`` with the server, listens on a unix socket in a new
    private directory (mode 0700) and starts.  ``stopService`` stops it,
    giving running calls ``grace`` seconds, and removes the directory; the
    Deferred it returns fires once grpcio has stopped.

    ``options`` are grpcio channel arguments, such as
    ``[("grpc.max_receive_message_length", 16 * 1024 * 1024)]``;
    ``maximum_concurrent_rpcs`` makes grpcio refuse calls beyond that many
    (RESOURCE_EXHAUSTED) instead of queueing them for a free thread.
    ``reactor`` (the global one by default) is told from grpcio's thread
    when it has stopped (``callFromThread``), adopts the relay's unix
    sockets (``IReactorSocket``) and times their connects.  A value that
    does not fit raises :class:`~txcmux.ConfigurationError`; grpcio failing
    to listen raises :class:`~txcmux.grpcserver.GrpcServerError`.
    """

    def __init__(
        self,
        add_services: Iterable[AddServices],
        *,
        max_workers: int | None = None,
        options: Sequence[tuple[str, Any]] = (),
        maximum_concurrent_rpcs: int | None = None,
        grace: float | None = 5.0,
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        adders = list(add_services)
        for adder in adders:
            if not callable(adder):
                raise ConfigurationError(
                    f"GrpcServer: {adder!r} in add_services is not callable;"
                    " expected functions that take a grpc.Server, such as"
                    " lambda server: add_GreeterServicer_to_server(Greeter(), server)"
                )
        for key, value in (
            ("max_workers", max_workers),
            ("maximum_concurrent_rpcs", maximum_concurrent_rpcs),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(
                    f"GrpcServer: {key} is {value!r}; expected a whole number,"
                    " at least 1 (or None)"
                )
        if grace is not None and (
            isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0
        ):
            raise ConfigurationError(
                f"GrpcServer: grace is {grace!r}; expected seconds (0 or more) or None"
            )
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = IReactorFromThreads(global_reactor)
        clock = IReactorTime(reactor, None)
        if clock is None:
            raise ConfigurationError(
                f"GrpcServer: reactor is {reactor!r}, which keeps no time;"
                " expected a reactor providing IReactorTime"
            )
        self.add_services = adders
        self.max_workers = max_workers
        self.options = list(options)
        self.maximum_concurrent_rpcs = maximum_concurrent_rpcs
        self.grace = grace
        self._reactor = reactor
        self._clock: IReactorTime = clock
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._directory: str | None = None
        self._leftover: weakref.finalize[Any, Any] | None = None

    @property
    def directory(self) -> str | None:
        """The private directory holding the socket, while running."""
        return self._directory

    @property
    def socket_path(self) -> str | None:
        """The unix socket grpcio listens on, while running."""
        if self._directory is None:
            return None
        return os.path.join(self._directory, "grpc.sock")

    def startService(self) -> None:
        """Create, fill, bind and start the grpcio server (once)."""
        if self._server is not None:
            return
        directory = tempfile.mkdtemp(prefix="txcmux-grpc-")
        os.chmod(directory, 0o700)
        path = os.path.join(directory, "grpc.sock")
        executor = ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix="txcmux-grpc"
        )
        server = grpc.server(
            executor,
            options=self.options,
            maximum_concurrent_rpcs=self.maximum_concurrent_rpcs,
        )
        try:
            for adder in self.add_services:
                adder(server)
            try:
                bound = server.add_insecure_port("unix:" + path)
            except RuntimeError as problem:
                raise GrpcServerError(
                    f"grpcio could not listen on unix:{path}: {problem}"
                ) from problem
            if not bound:
                raise GrpcServerError(f"grpcio could not listen on unix:{path}")
            server.start()
        except BaseException:
            server.stop(None)
            executor.shutdown(wait=False)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._server, self._executor, self._directory = server, executor, directory
        # Should the process end without stopService, remove the directory
        # at exit all the same.
        self._leftover = weakref.finalize(self, shutil.rmtree, directory, True)
        super().startService()  # type: ignore[no-untyped-call]
        log.info("txcmux: in-process gRPC server listening on unix:{path}", path=path)

    def stopService(self) -> Deferred[None]:
        """Stop grpcio (``grace`` seconds for running calls), then clean up."""
        super().stopService()  # type: ignore[no-untyped-call]
        server, self._server = self._server, None
        executor, self._executor = self._executor, None
        directory, self._directory = self._directory, None
        if self._leftover is not None:
            self._leftover.detach()  # removed below, once grpcio has stopped
            self._leftover = None
        if server is None:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        event = server.stop(self.grace)
        reactor = self._reactor

        def wait() -> None:
            event.wait()
            if executor is not None:
                executor.shutdown(wait=False)
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            reactor.callFromThread(stopped.callback, None)

        threading.Thread(target=wait, name="txcmux-grpc-stop", daemon=True).start()
        return stopped

    def factory(
        self, *, name: str | None = None, connect_timeout: float = 10
    ) -> RelayFactory:
        """A relay factory for the gRPC route: relays to this server.

        Usable before the service starts; connections that arrive while it
        is not running are closed and counted as ``backend_failed``.
        """
        return _GrpcRelayFactory(
            _InProcessEndpoint(self, self._reactor, self._clock),
            clock=self._clock,
            name=name,
            connect_timeout=connect_timeout,
            clients=CLIENTS,
        )

    def endpoint(self) -> IStreamClientEndpoint:
        """A client endpoint that connects to this server while it runs.

        What a web route's ``grpc_backend`` uses for ``"in-process"``: its
        connections fail while the service is not running.
        """
        return _InProcessEndpoint(self, self._reactor, self._clock)

    def __repr__(self) -> str:
        where = self.socket_path or "not running"
        return f"<GrpcServer {where}>"


@implementer(IProtocolNegotiationFactory)
class _GrpcRelayFactory(RelayFactory):
    """The relay to a GrpcServer: it speaks HTTP/2, and says so to TLS routes."""

    def acceptableProtocols(self) -> list[bytes]:
        """gRPC is HTTP/2: ``h2``, for a TLS route's ALPN."""
        return [b"h2"]


@implementer(IStreamClientEndpoint)
class _InProcessEndpoint:
    """Connects to a GrpcServer's current socket, with a named client socket."""

    def __init__(
        self, server: GrpcServer, reactor: object, clock: IReactorTime
    ) -> None:
        self._server = server
        self._reactor = reactor
        self._clock = clock
        self._last_path: str | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        path, directory = self._server.socket_path, self._server.directory
        if path is None or directory is None:
            return fail(
                error.ConnectError(  # type: ignore[no-untyped-call]
                    string="the in-process gRPC server is not running"
                )
            )
        sockets = IReactorSocket(self._reactor, None)
        if sockets is None:
            problem = f"{self._reactor!r} cannot adopt sockets (IReactorSocket)"
            return fail(error.ConnectError(string=problem))
        self._last_path = path
        endpoint = NamedUNIXClientEndpoint(
            sockets, path, name_dir=directory, clock=self._clock
        )
        return endpoint.connect(protocolFactory)

    def __repr__(self) -> str:
        path = self._server.socket_path or self._last_path
        return f"in-process gRPC server ({'unix:' + path if path else 'not running'})"
