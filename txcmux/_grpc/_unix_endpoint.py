"""Unix-socket client connections a server can tell apart.

An ordinary unix client socket has no name, so the server sees every
client as ``unix:`` and cannot say which relayed client is behind which
connection.  :class:`NamedUNIXClientEndpoint` binds each client socket to a
fresh name first, and retries while the server's listen queue is full::

    >>> from twisted.internet.testing import MemoryReactorClock
    >>> endpoint = NamedUNIXClientEndpoint(
    ...     MemoryReactorClock(), "/run/app/grpc.sock", name_dir="/run/txcmux"
    ... )
    >>> endpoint
    unix:/run/app/grpc.sock

The in-process gRPC server's relay connects with it; relay's own users may
too (``RelayFactory(NamedUNIXClientEndpoint(...))``).
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorSocket,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ServerFactory
from zope.interface import implementer

from .._errors import ConfigurationError

_sequence = itertools.count(1)
#: Seconds between connect attempts while the listen queue is full.
_RETRY = 0.005
_MAX_UNIX_PATH = 107


@implementer(IStreamClientEndpoint)
class NamedUNIXClientEndpoint:
    """A unix-socket client endpoint whose sockets are bound to unique names.

    Each client socket is bound to a fresh path in ``name_dir`` (then the
    file is unlinked; the socket keeps the name), so the server's
    ``getpeername`` (and grpcio's ``context.peer()``) is unique per
    connection, and ``txcmux.relay.lookup_client`` can map it back to the
    relayed client.  ``name_dir`` should be a private directory (mode 0700)
    of this process.  ``timeout`` bounds the wait while the server's listen
    queue is full.  ``reactor`` adopts the connected sockets; ``clock``
    (default: ``reactor``) times the retries::

        endpoint = NamedUNIXClientEndpoint(reactor, "/run/app/grpc.sock",
                                           name_dir="/run/txcmux")
        relay = RelayFactory(endpoint, name="grpc")
    """

    def __init__(
        self,
        reactor: IReactorSocket,
        path: str,
        name_dir: str,
        timeout: float = 30.0,
        *,
        clock: IReactorTime | None = None,
    ) -> None:
        if not IReactorSocket.providedBy(reactor):
            raise ConfigurationError(
                f"NamedUNIXClientEndpoint: reactor is {reactor!r}, which cannot"
                " adopt sockets; expected a reactor providing IReactorSocket"
            )
        if clock is None:
            try:
                clock = IReactorTime(reactor)
            except TypeError:
                raise ConfigurationError(
                    f"NamedUNIXClientEndpoint: reactor {reactor!r} keeps no time;"
                    " pass clock=, an IReactorTime"
                ) from None
        self._reactor = reactor
        self._clock: IReactorTime = clock
        self._path = path
        self.name_dir = name_dir
        self.timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect a fresh, uniquely named socket to the server's path."""
        name = os.path.join(
            self.name_dir,
            f"c{os.getpid()}-{next(_sequence)}-{secrets.token_hex(4)}",
        )
        if len(os.fsencode(name)) > _MAX_UNIX_PATH:
            return fail(
                error.ConnectError(  # type: ignore[no-untyped-call]
                    string=f"client socket name {name!r} is too long for a"
                    " unix socket; use a shorter name_dir"
                )
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind(name)
            os.unlink(name)  # the socket keeps its name; no file is left over
        except OSError as problem:
            sock.close()
            return fail(
                error.ConnectError(  # type: ignore[no-untyped-call]
                    string=f"cannot name a client socket in {self.name_dir}: {problem}"
                )
            )
        attempt = _UNIXConnect(self._reactor, self._clock, sock, self._path)
        return attempt.start(protocolFactory, self.timeout)

    def __repr__(self) -> str:
        return f"unix:{self._path}"


class _OnceFactory(ServerFactory):
    """Builds one protocol with another factory and keeps it."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        self.built = self._factory.buildProtocol(addr)
        return self.built


class _UNIXConnect:
    """One non-blocking unix connect, retried while the listen queue is full."""

    def __init__(
        self,
        reactor: IReactorSocket,
        clock: IReactorTime,
        sock: socket.socket,
        path: str,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._sock: socket.socket | None = sock
        self._path = path
        self._deadline = 0.0
        self._retry: IDelayedCall | None = None
        self._factory: IProtocolFactory | None = None
        self._result: Deferred[IProtocol] = Deferred(self._cancel)

    def start(self, factory: IProtocolFactory, timeout: float) -> Deferred[IProtocol]:
        self._factory = factory
        self._deadline = self._clock.seconds() + timeout
        self._attempt()
        return self._result

    def _attempt(self) -> None:
        self._retry = None
        sock = self._sock
        assert sock is not None
        code = sock.connect_ex(self._path)
        if code in (0, errno.EISCONN):
            self._adopt(sock)
        elif code in (errno.EAGAIN, errno.EINPROGRESS, errno.EALREADY):
            if self._clock.seconds() >= self._deadline:
                self._give_up(
                    error.TimeoutError(string=f"connecting to {self._path}")  # type: ignore[no-untyped-call]
                )
            else:
                self._retry = self._clock.callLater(_RETRY, self._attempt)
        elif code == errno.ECONNREFUSED:
            self._give_up(error.ConnectionRefusedError(string=self._path))  # type: ignore[no-untyped-call]
        else:
            self._give_up(
                error.ConnectError(string=f"{self._path}: {os.strerror(code)}")  # type: ignore[no-untyped-call]
            )

    def _adopt(self, sock: socket.socket) -> None:
        self._sock = None
        assert self._factory is not None
        once = _OnceFactory(self._factory)
        try:
            self._reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, once)
        except Exception:
            self._result.errback()
            return
        finally:
            sock.close()  # the reactor holds its own duplicate
        if once.built is not None:
            self._result.callback(once.built)
        else:
            self._result.errback(
                error.ConnectError(string="the factory built nothing")  # type: ignore[no-untyped-call]
            )

    def _give_up(self, problem: Exception) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._result.errback(problem)

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
