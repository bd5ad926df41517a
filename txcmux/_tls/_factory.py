"""TLS termination as a route target: decrypt, then detect again.

The outer detector hands the connection to a TLS protocol built here.
Until the handshake is done a small gate protocol sits behind it: it times
the handshake, and logs and counts every connection that never gets through
it.  Once the handshake completes, the gate puts the inner protocol
(usually a second detector) in its place, so handlers run with the TLS
transport as their transport: ``negotiatedProtocol``,
``getPeerCertificate()``, ``ISSLTransport`` and ``getHandle()`` are all
there.  A sketch (with real certificate files)::

    https = TLSTerminationFactory(
        "server.pem", "server.key",
        [Route("grpc", matchers.grpc(), grpc_relay),
         Route("web", [matchers.http1(), matchers.http2()], site)],
    )                                # ALPN offered: h2, http/1.1
    mux = ProtocolSwitchingFactory([
        Route("tls", matchers.tls(), https),
        Route("web", matchers.http1(), site),
    ])

Certificates and keys are read by :mod:`._pem`, ALPN worked out by
:mod:`._alpn`; the TLS half-close rests on Twisted internals listed in
:mod:`txcmux._compat`, checked when this module is imported.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import _compat
from .._errors import ConfigurationError, seconds_argument
from .._factory import ProtocolSwitchingFactory
from .._handoff import install
from .._log import describe_peer, log
from .._route import Route
from ..matchers._tls import _name_matches, _record_start_verdict
from ..matchers._verdict import Outcome
from ._alpn import alpn_selector, protocols_for_routes, protocols_of_factory
from ._inspect import server_name
from ._pem import Identity, PathLike, load_certificates

_compat.require("txcmux.tls", _compat.TLS_HALF_CLOSE)

ClientCertificates = Literal["required", "optional"]


# -- the connection creator --------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class _ServerConnections:
    """Makes the OpenSSL connection for each accepted TLS connection.

    Holds one context per certificate; the default one switches to a named
    one when the client's server name matches it.
    """

    def __init__(
        self,
        default: Identity,
        named: Sequence[tuple[str, Identity]],
        alpn: Sequence[bytes],
        client_ca: PathLike | None,
        client_certificates: ClientCertificates | None,
    ) -> None:
        self._alpn = tuple(alpn)
        self._client_ca = client_ca
        self._client_certificates = client_certificates
        self._named = [
            (pattern, self._context(identity)) for pattern, identity in named
        ]
        self.default = self._context(default)
        if self._named:
            self.default.set_tlsext_servername_callback(self._choose_by_name)

    def _context(self, identity: Identity) -> SSL.Context:
        # CertificateOptions gives Twisted's defaults: TLS 1.2 minimum, its
        # cipher list, no compression, ECDH curve, session ID context.
        context = CertificateOptions().getContext()
        identity.install(context)
        context.set_alpn_select_callback(alpn_selector(self._alpn))
        if self._client_ca is not None:
            ca = os.fsencode(self._client_ca)
            context.load_verify_locations(ca)
            context.load_client_ca(ca)
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
            if self._client_certificates == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode)
        return context

    def _choose_by_name(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        name = raw.decode("ascii", "replace").rstrip(".").lower()
        for pattern, context in self._named:
            if _name_matches(pattern, name):
                connection.set_context(context)
                return

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A new server-side OpenSSL connection with the default context."""
        return SSL.Connection(self.default, None)


# -- per connection ----------------------------------------------------------


def _describe_failure(reason: Failure) -> str:
    error = reason.value
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        parts = [
            str(entry[-1])
            for entry in error.args[0]
            if isinstance(entry, tuple) and entry
        ]
        if parts:
            return "; ".join(parts)
    return str(error) or type(error).__name__


class _TerminatingTLS(_compat.HalfClosingTLSTransport):
    """Twisted's TLS protocol, refusing clients that do not send TLS at all.

    It also half-closes the TLS way (with close_notify; see
    :class:`txcmux._compat.HalfClosingTLSTransport`).
    """

    _checked = False
    _head = b""
    #: The owning factory's counters (``bytes_in``, ``bytes_out``).
    stats: Counter[str]

    def dataReceived(self, data: bytes) -> None:
        self.stats["bytes_in"] += len(data)
        if not self._checked:
            self._head += data[:6]
            verdict = _record_start_verdict(self._head)
            if verdict.outcome is Outcome.NO_MATCH:
                gate = self.wrappedProtocol
                if isinstance(gate, _HandshakeGate):
                    gate.refuse(
                        "not_tls",
                        "the client did not send a TLS ClientHello",
                        self._head,
                    )
                self.abortConnection()  # type: ignore[no-untyped-call]
                return
            if len(self._head) >= 6:
                self._checked = True
                del self._head
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _write(self, data: bytes) -> None:
        self.stats["bytes_out"] += len(data)
        super()._write(data)


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """Stands behind the TLS layer until the handshake is done.

    Then it hands the decrypted connection to the inner factory's protocol;
    if the handshake never completes it logs and counts why.
    """

    def __init__(self, owner: TLSTerminationFactory, address: IAddress | None) -> None:
        self._owner = owner
        self._address = address
        self._timer: IDelayedCall | None = None
        self._finished = False

    def connectionMade(self) -> None:
        timeout = self._owner.handshake_timeout
        if timeout is not None:
            self._timer = self._owner.clock.callLater(timeout, self._timed_out)

    def handshakeCompleted(self) -> None:
        """Put the inner protocol in the gate's place."""
        self._cancel_timer()
        self._finished = True
        transport = self.transport
        assert transport is not None
        owner = self._owner
        negotiated = getattr(transport, "negotiatedProtocol", None)
        alpn = negotiated.decode("ascii", "replace") if negotiated else "none"
        owner.stats["handshakes"] += 1
        owner.stats["alpn." + alpn] += 1
        log.debug(
            "txcmux: TLS from {peer}: server name {name}, ALPN {alpn}",
            peer=describe_peer(self._peer()),
            name=server_name(transport),
            alpn=alpn,
        )
        inner = owner.inner.buildProtocol(self._address)  # type: ignore[arg-type]
        if inner is None:
            self._finished = False
            self.refuse("no_protocol", "the inner factory returned no protocol", b"")
            transport.loseConnection()
            return
        install(transport, self, inner)
        inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        """Only reached when no inner protocol was installed; drop it."""

    def refuse(self, reason: str, detail: str, head: bytes) -> None:
        """Count and log a connection closed before the handshake finished."""
        if self._finished:
            return
        self._finished = True
        self._cancel_timer()
        self._owner.stats["closed." + reason] += 1
        log.info(
            "txcmux: closing TLS connection from {peer}: {detail}{shown}",
            peer=describe_peer(self._peer()),
            detail=detail,
            shown=f" (first bytes: {head!r})" if head else "",
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        if self._finished:
            return
        if reason.check(ConnectionDone, ConnectionLost):  # type: ignore[no-untyped-call]
            self.refuse("peer", "the client left during the TLS handshake", b"")
        else:
            self.refuse(
                "handshake_failed",
                f"TLS handshake failed: {_describe_failure(reason)}",
                b"",
            )

    def _timed_out(self) -> None:
        self._timer = None
        self.refuse(
            "handshake_timeout",
            f"no TLS handshake after {self._owner.handshake_timeout} seconds",
            b"",
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _peer(self) -> IAddress | None:
        if self.transport is not None:
            try:
                peer: IAddress = self.transport.getPeer()
                return peer
            except Exception:
                pass
        return self._address


# -- the factory -------------------------------------------------------------


def _checked_alpn(alpn: Iterable[str] | str) -> tuple[str, ...]:
    """``alpn`` as a tuple of protocol names, or ConfigurationError."""
    if isinstance(alpn, str):
        alpn = [alpn]
    try:
        protocols = tuple(alpn)
    except TypeError:
        raise ConfigurationError(
            f"TLSTerminationFactory: alpn is {alpn!r}; expected a list of"
            " protocol names such as ['h2', 'http/1.1']"
        ) from None
    for protocol in protocols:
        if (
            not isinstance(protocol, str)
            or not protocol
            or not protocol.isascii()
            or len(protocol) > 255
        ):
            raise ConfigurationError(
                f"TLSTerminationFactory: ALPN protocol {protocol!r} in alpn;"
                " expected a name of 1 to 255 ASCII characters"
            )
    return protocols


def _named_identities(
    sni: Mapping[str, tuple[PathLike, PathLike]] | None,
) -> list[tuple[str, Identity]]:
    """The per-server-name identities ``sni`` asks for, checked."""
    if sni is None:
        return []
    if not isinstance(sni, Mapping):
        raise ConfigurationError(
            f"TLSTerminationFactory: sni is {sni!r}; expected a mapping of"
            " server names to (certificate, key) pairs"
        )
    named: list[tuple[str, Identity]] = []
    for name, pair in sni.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ConfigurationError(
                f"TLSTerminationFactory: sni[{name!r}] is {pair!r}; expected a"
                " (certificate, key) pair"
            )
        pattern = name.rstrip(".").lower() if isinstance(name, str) else ""
        if not pattern or "*" in pattern.removeprefix("*."):
            raise ConfigurationError(
                f"TLSTerminationFactory: sni name {name!r}; expected a server"
                " name or *.domain"
            )
        named.append((pattern, Identity(pair[0], pair[1])))
    return named


class TLSTerminationFactory(Factory):
    """A route target that terminates TLS and hands the plaintext on.

    ``certificate`` and ``key`` are PEM files (the certificate file may hold
    the chain: the server's certificate first, then intermediates).
    ``routes`` is what runs behind TLS: a list of :class:`~txcmux.Route`
    (a second detector is built from them), a
    :class:`~txcmux.ProtocolSwitchingFactory` of your own (with its own
    ``sniff_timeout``), or any protocol factory (no second detection).

    ``alpn``: the protocols to offer in ALPN, most preferred first, e.g.
    ``["h2", "http/1.1"]``; by default they are worked out from the inner
    routes (see :func:`protocols_for_routes`); ``[]`` turns ALPN off.
    ``sni``: server name (exact, or ``*.example.com``) to a
    ``(certificate, key)`` pair presented to clients asking for that name;
    others get the default.  ``client_ca``: a PEM file of the authorities
    client certificates must chain to; with it, ``client_certificates`` is
    ``"required"`` (the default) or ``"optional"`` (a client may send none,
    but one it sends must verify).  ``handshake_timeout``: seconds a client
    has to complete the handshake (None: no limit).

    ``stats`` counts ``handshakes``, ``alpn.<protocol>`` (``alpn.none``
    without ALPN) and, for connections closed before the handshake
    completed, ``closed.handshake_failed``, ``closed.not_tls``,
    ``closed.handshake_timeout``, ``closed.peer`` and ``closed.no_protocol``.
    Each such close is logged once at info level.

    Raises :class:`~txcmux.ConfigurationError` when a file cannot be read or
    used; the message names the file and what was expected.
    """

    def __init__(
        self,
        certificate: PathLike,
        key: PathLike,
        routes: Sequence[Route] | IProtocolFactory,
        *,
        alpn: Iterable[str] | None = None,
        sni: Mapping[str, tuple[PathLike, PathLike]] | None = None,
        client_ca: PathLike | None = None,
        client_certificates: ClientCertificates | None = None,
        handshake_timeout: float | None = 10.0,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.inner: IProtocolFactory = self._inner_factory(routes, clock)
        if alpn is None:
            if isinstance(self.inner, ProtocolSwitchingFactory):
                alpn = protocols_for_routes(self.inner.routes)
            else:
                alpn = protocols_of_factory(self.inner)
        self.alpn: tuple[str, ...] = _checked_alpn(alpn)
        if client_certificates not in (None, "required", "optional"):
            raise ConfigurationError(
                f"TLSTerminationFactory: client_certificates is"
                f" {client_certificates!r}; expected 'required' or 'optional'"
            )
        if client_certificates is not None and client_ca is None:
            raise ConfigurationError(
                f"TLSTerminationFactory: client_certificates={client_certificates!r}"
                " needs client_ca, the PEM file of the authorities client"
                " certificates chain to"
            )
        if client_ca is not None:
            load_certificates(client_ca, "client CA")
            client_certificates = client_certificates or "required"
        self.client_certificates = client_certificates
        self.handshake_timeout = seconds_argument(
            "TLSTerminationFactory", "handshake_timeout", handshake_timeout, off="None"
        )
        self.identity = Identity(certificate, key)
        named = _named_identities(sni)
        self._connections = _ServerConnections(
            self.identity,
            named,
            [p.encode("ascii") for p in self.alpn],
            client_ca,
            client_certificates,
        )
        self._tls = TLSMemoryBIOFactory(self._connections, False, self.inner, clock)
        self.stats: Counter[str] = Counter()

    @staticmethod
    def _inner_factory(
        routes: Sequence[Route] | IProtocolFactory, clock: IReactorTime
    ) -> IProtocolFactory:
        if IProtocolFactory.providedBy(routes):
            return routes
        try:
            listed = list(routes)
        except TypeError:
            raise ConfigurationError(
                f"TLSTerminationFactory: routes is {routes!r}, neither a list of"
                " Routes nor a protocol factory; expected one of those"
            ) from None
        return ProtocolSwitchingFactory(listed, clock=clock)

    def buildProtocol(self, addr: IAddress | None) -> TLSMemoryBIOProtocol:
        """The TLS layer for one connection, with the handshake gate behind it."""
        protocol = _TerminatingTLS(self._tls, _HandshakeGate(self, addr))
        protocol.stats = self.stats
        return protocol

    def startFactory(self) -> None:
        """Start the inner factories (a Site opens its log here)."""
        self._tls.doStart()  # type: ignore[no-untyped-call]

    def stopFactory(self) -> None:
        """Stop the inner factories."""
        self._tls.doStop()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return (
            f"<TLSTerminationFactory {self.identity.subject}"
            f" alpn={list(self.alpn)} inner={self.inner!r}>"
        )
