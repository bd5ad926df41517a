"""Server identities from PEM files: a certificate chain and its key, checked.

:class:`Identity` reads both files once and says, naming the file, what is
wrong with them: missing, unreadable, no certificate, an encrypted or
unusable key, or a key that belongs to another certificate::

    >>> Identity("/nonexistent/server.pem", "/nonexistent/server.key")
    Traceback (most recent call last):
    ...
    txcmux._errors.ConfigurationError: cannot read the TLS certificate file ...
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL

from .._errors import ConfigurationError
from .._log import log

PathLike = str | os.PathLike[str]
"""A file name: a ``str`` or a ``pathlib.Path``."""


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the {what} file {os.fspath(path)!r}:"
            f" {error.strerror or error}"
        ) from None


def load_certificates(path: PathLike, what: str) -> list[x509.Certificate]:
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
        self.chain = load_certificates(certificate, "TLS certificate")
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
            date = leaf.not_valid_after_utc
            problem = "expired on {date}; clients will refuse it"
        elif leaf.not_valid_before_utc > now:
            date = leaf.not_valid_before_utc
            problem = "is not valid before {date}; clients will refuse it until then"
        else:
            return
        log.warn(
            "txcmux: the TLS certificate in {path} ({subject}) " + problem,
            path=self.certificate_path,
            subject=self.subject,
            date=date.isoformat(),
        )

    def install(self, context: SSL.Context) -> None:
        """Make ``context`` present this certificate chain and use this key."""
        context.use_certificate(self.chain[0])
        for certificate in self.chain[1:]:
            context.add_extra_chain_cert(certificate)
        context.use_privatekey(self.key)
        context.check_privatekey()
