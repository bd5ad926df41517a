"""TLS termination as a route target: decrypt, then detect again.

::

    from txcmux import ProtocolSwitchingFactory, Route, matchers
    from txcmux.tls import TLSTerminationFactory

    https = TLSTerminationFactory(
        "server.pem", "server.key",
        [Route("grpc", matchers.grpc(), grpc_relay),
         Route("web", [matchers.http1(), matchers.http2()], site)],
        alpn=["h2", "http/1.1"],
    )
    mux = ProtocolSwitchingFactory([
        Route("tls", matchers.tls(), https),
        Route("web", matchers.http1(), site),
    ])

The outer detector hands the connection to a ``TLSMemoryBIOProtocol`` built
here.  Until the handshake is done a small gate protocol sits behind it: it
times the handshake, and logs and counts every connection that never gets
through it.  Once the handshake completes, the gate puts the inner protocol
(usually a second detector) in its place, so handlers run with the TLS
transport as their transport: ``negotiatedProtocol``, ``getPeerCertificate()``,
``ISSLTransport`` and ``getHandle()`` are all there.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from ._log import describe_peer
from ._errors import ConfigurationError
from ._factory import ProtocolSwitchingFactory
from ._handoff import install
from ._route import Route
from .matchers._tls import _name_matches, _record_start_verdict
from .matchers._verdict import Outcome

_log = Logger(namespace="txcmux")

PathLike = str | os.PathLike[str]
"""A file name: a ``str`` or a ``pathlib.Path``."""

ClientCertificates = Literal["required", "optional"]

_H2_MATCHERS = ("http2", "grpc")
_H1_MATCHERS = ("http1",)


# -- files -------------------------------------------------------------------


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the {what} file {os.fspath(path)!r}:"
            f" {error.strerror or error}"
        ) from None


def _load_certificates(path: PathLike, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigurationError(
            f"the {what} file {os.fspath(path)!r} holds no PEM certificate;"
            " expected one or more '-----BEGIN CERTIFICATE-----' blocks"
        )
    return certificates


_ServerKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)


def _load_key(path: PathLike) -> _ServerKey:
    data = _read(path, "TLS key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"the TLS key file {os.fspath(path)!r} holds an encrypted key;"
            " expected an unencrypted PEM private key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"the TLS key file {os.fspath(path)!r} holds no usable private key;"
            " expected an unencrypted PEM private key"
            " ('-----BEGIN PRIVATE KEY-----' or '... RSA/EC PRIVATE KEY')"
        ) from None
    if not isinstance(key, _ServerKey):
        raise ConfigurationError(
            f"the TLS key file {os.fspath(path)!r} holds a"
            f" {type(key).__name__}, which TLS servers cannot use here;"
            " expected an RSA, EC, Ed25519, Ed448 or DSA private key"
        )
    return key


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


class Identity:
    """A server certificate (with its chain) and its private key, checked.

    Made from two PEM files: ``certificate`` holds the server's certificate
    first, then any intermediates; ``key`` holds the unencrypted private key
    (it may be the same file).  Raises :class:`~txcmux.ConfigurationError`
    naming the file when a file is missing or unreadable, holds no
    certificate or key, or the key does not belong to the first certificate.
    A certificate outside its validity period is logged as a warning.
    """

    def __init__(self, certificate: PathLike, key: PathLike) -> None:
        self.certificate_path = os.fspath(certificate)
        self.key_path = os.fspath(key)
        self.chain = _load_certificates(certificate, "TLS certificate")
        self.key = _load_key(key)
        wanted = _public_der(self.key.public_key())
        leaf = self.chain[0]
        if _public_der(leaf.public_key()) != wanted:
            position = next(
                (
                    index
                    for index, other in enumerate(self.chain)
                    if _public_der(other.public_key()) == wanted
                ),
                None,
            )
            hint = (
                f"; it matches certificate number {position + 1} in the file:"
                " put the server's own certificate first"
                if position is not None
                else ""
            )
            raise ConfigurationError(
                f"the key in {self.key_path!r} does not match the certificate"
                f" in {self.certificate_path!r}"
                f" (subject {leaf.subject.rfc4514_string()}){hint};"
                " expected the private key of the first certificate in the file"
            )
        self._warn_about_validity()

    @property
    def subject(self) -> str:
        """The server certificate's subject, RFC 4514 style."""
        return self.chain[0].subject.rfc4514_string()

    def _warn_about_validity(self) -> None:
        leaf = self.chain[0]
        now = datetime.datetime.now(datetime.UTC)
        if leaf.not_valid_after_utc < now:
            _log.warn(
                "txcmux: the TLS certificate in {path} ({subject}) expired on"
                " {date}; clients will refuse it",
                path=self.certificate_path,
                subject=self.subject,
                date=leaf.not_valid_after_utc.isoformat(),
            )
        elif leaf.not_valid_before_utc > now:
            _log.warn(
                "txcmux: the TLS certificate in {path} ({subject}) is not valid"
                " before {date}; clients will refuse it until then",
                path=self.certificate_path,
                subject=self.subject,
                date=leaf.not_valid_before_utc.isoformat(),
            )

    def install(self, context: SSL.Context) -> None:
        """Make ``context`` present this certificate chain and use this key."""
        context.use_certificate(self.chain[0])
        for certificate in self.chain[1:]:
            context.add_extra_chain_cert(certificate)
        context.use_privatekey(self.key)
        context.check_privatekey()


# -- ALPN --------------------------------------------------------------------


def _protocols_of_factory(factory: object) -> list[str]:
    negotiation = IProtocolNegotiationFactory(factory, None)
    if negotiation is None:
        return []
    return [
        p.decode("ascii") if isinstance(p, bytes) else str(p)
        for p in negotiation.acceptableProtocols()
    ]


def protocols_for_routes(routes: Iterable[Route]) -> list[str]:
    """The ALPN protocols the routes can speak, guessed from their matchers.

    HTTP/2 and gRPC matchers give ``h2``, HTTP/1 matchers ``http/1.1``; a
    route with neither contributes what its factory announces through
    ``IProtocolNegotiationFactory`` (a twisted.web ``Site`` does).  ``h2``
    comes first.
    """
    found: list[str] = []
    for route in routes:
        names = [matcher.name for matcher in route.matchers]
        speaks = []
        if any(name.startswith(_H2_MATCHERS) for name in names):
            speaks.append("h2")
        if any(name.startswith(_H1_MATCHERS) for name in names):
            speaks.append("http/1.1")
        if not speaks:
            speaks = _protocols_of_factory(route.factory)
        found.extend(p for p in speaks if p not in found)
    preference = {"h2": 0, "http/1.1": 1}
    return sorted(found, key=lambda p: preference.get(p, 2))


def _alpn_selector(protocols: Sequence[bytes]) -> Any:
    """An ALPN callback: our first protocol the client offers, else none.

    Twisted's own callback answers an empty protocol when nothing overlaps,
    which OpenSSL turns into an internal-error alert; going on without ALPN
    lets the inner detector decide from the bytes instead.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> object:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


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
        context.set_alpn_select_callback(_alpn_selector(self._alpn))
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


class _TerminatingTLS(BufferingTLSTransport):
    """Twisted's TLS protocol, refusing clients that do not send TLS at all.

    It also half-closes the TLS way.  Twisted's TLS protocol copies the TCP
    connection's interfaces, ``IHalfCloseableDescriptor`` included, but has
    no ``loseWriteConnection`` of its own: the call reaches the TCP
    connection beneath, which ends the stream with no TLS close_notify, and
    the peer sees a truncated, unclean close.  Here it sends close_notify and
    goes on reading, as TLS 1.3 allows.
    """

    _checked = False
    _head = b""
    _write_closed = False

    def loseWriteConnection(self) -> None:
        """Send TLS close_notify: no more data from us; the peer may go on."""
        if self._write_closed or self.disconnecting or self._tlsConnection is None:
            return
        self._aggregator.flush()
        if not self._handshakeDone or self._appSendBuffer or self._producer:
            # Data still waits on the handshake or a producer: close fully,
            # which Twisted does once they are done.
            self.loseConnection()
            return
        self._write_closed = True
        with contextlib.suppress(SSL.Error):  # mid-state: the alert still goes
            self._tlsConnection.shutdown()
        self._flushSendBIO()  # type: ignore[no-untyped-call]

    def _write(self, data: bytes) -> None:
        if self._write_closed:
            return  # after close_notify nothing more may be sent
        super()._write(data)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
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
        _log.debug(
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
        _log.info(
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


def ssl_connection(transport: object) -> SSL.Connection | None:
    """The OpenSSL connection under ``transport``, or None if it has none.

    Works for the transport handlers get behind :class:`TLSTerminationFactory`
    and for Twisted's own TLS ports (``ssl:`` endpoints, ``listenSSL``).
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        handle = get_handle()
    except Exception:
        return None
    return handle if isinstance(handle, SSL.Connection) else None


def server_name(transport: object) -> str | None:
    """The server name (SNI) the client asked for, lower-cased, or None.

    ``transport`` is a protocol's transport behind
    :class:`TLSTerminationFactory` (or any Twisted TLS transport); None also
    when the connection is not TLS or the client sent no server name.

    In a twisted.web resource use ``request.channel.transport`` over HTTP/1.1;
    over HTTP/2 ``request.channel`` is the stream, whose connection's
    transport is the TLS one: :func:`server_name` accepts the request itself
    and looks in both places.
    """
    connection = ssl_connection(_tls_transport(transport))
    if connection is None:
        return None
    name = connection.get_servername()
    return name.decode("ascii", "replace").rstrip(".").lower() if name else None


def peer_certificate(transport: object) -> x509.Certificate | None:
    """The client's certificate, as a ``cryptography`` object, or None.

    Only set when the TLS layer asked for client certificates (``client_ca``)
    and the client sent one; it has then been verified against that CA.
    Accepts the same objects as :func:`server_name`.
    """
    connection = ssl_connection(_tls_transport(transport))
    if connection is None:
        return None
    return connection.get_peer_certificate(as_cryptography=True)


def _tls_transport(thing: object) -> object:
    """Find the transport in a transport, a twisted.web request or channel."""
    if ssl_connection(thing) is not None:
        return thing
    channel = getattr(thing, "channel", None)
    for candidate in (
        getattr(thing, "transport", None),
        getattr(channel, "transport", None),
        # an HTTP/2 stream keeps its connection, whose transport is the TLS one
        getattr(getattr(channel, "_conn", None), "transport", None),
        getattr(getattr(thing, "_conn", None), "transport", None),
    ):
        if candidate is not None and ssl_connection(candidate) is not None:
            return candidate
    return thing


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
        assert clock is not None
        self.clock: IReactorTime = clock
        self.inner: IProtocolFactory = self._inner_factory(routes, clock)
        if alpn is None:
            if isinstance(self.inner, ProtocolSwitchingFactory):
                alpn = protocols_for_routes(self.inner.routes)
            else:
                alpn = _protocols_of_factory(self.inner)
        if isinstance(alpn, str):
            alpn = [alpn]
        self.alpn: tuple[str, ...] = tuple(alpn)
        for protocol in self.alpn:
            if not protocol or len(protocol.encode("ascii", "replace")) > 255:
                raise ConfigurationError(
                    f"ALPN protocol {protocol!r} must be 1 to 255 ASCII characters"
                )
        if client_certificates not in (None, "required", "optional"):
            raise ConfigurationError(
                f"client_certificates is {client_certificates!r};"
                " expected 'required' or 'optional'"
            )
        if client_certificates is not None and client_ca is None:
            raise ConfigurationError(
                f"client_certificates={client_certificates!r} needs client_ca,"
                " the PEM file of the authorities client certificates chain to"
            )
        if client_ca is not None:
            _load_certificates(client_ca, "client CA")
            client_certificates = client_certificates or "required"
        self.client_certificates = client_certificates
        if handshake_timeout is not None and not handshake_timeout > 0:
            raise ConfigurationError(
                "handshake_timeout must be a positive number of seconds,"
                f" not {handshake_timeout!r}"
            )
        self.handshake_timeout = handshake_timeout
        self.identity = Identity(certificate, key)
        named: list[tuple[str, Identity]] = []
        for name, pair in (sni or {}).items():
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ConfigurationError(
                    f"sni[{name!r}] is {pair!r}; expected a (certificate, key) pair"
                )
            pattern = name.rstrip(".").lower()
            if not pattern or "*" in pattern.removeprefix("*."):
                raise ConfigurationError(
                    f"sni name {name!r}: expected a server name or *.domain"
                )
            named.append((pattern, Identity(pair[0], pair[1])))
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
                f"TLSTerminationFactory: {routes!r} is neither a list of Routes"
                " nor a protocol factory"
            ) from None
        return ProtocolSwitchingFactory(listed, clock=clock)

    def buildProtocol(self, addr: IAddress | None) -> TLSMemoryBIOProtocol:
        """The TLS layer for one connection, with the handshake gate behind it."""
        return _TerminatingTLS(self._tls, _HandshakeGate(self, addr))

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
