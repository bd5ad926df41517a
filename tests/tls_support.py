"""A throwaway certificate authority and the certificates the TLS tests use.

Everything is made once per test session, with the ``cryptography`` package,
in a temporary directory removed at exit::

    from tests.tls_support import pki
    files = pki()
    files.server_certificate   # leaf + intermediate, for localhost/127.0.0.1
    files.ca                   # the root clients trust

Plain pytest tests can ask for the ``pki_files`` fixture instead.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)
_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txcmux tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Issuer | None,
    *,
    ca: bool = False,
    names: tuple[str, ...] = (),
    client: bool = False,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    subject_name = _name(subject)
    signer = issuer or _Issuer(subject_name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(signer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - _DAY)
        .not_valid_after(not_after or _NOW + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = (
            ExtendedKeyUsageOID.CLIENT_AUTH
            if client
            else (ExtendedKeyUsageOID.SERVER_AUTH)
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        entries: list[x509.GeneralName] = []
        for name in names:
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                entries.append(x509.DNSName(name))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(entries), critical=False
        )
    return builder.sign(signer.key, hashes.SHA256())


@dataclass(frozen=True)
class PKI:
    """Paths of the PEM files the TLS tests use (all in one temporary dir).

    ``ca``: the root clients and the server trust.  ``server_certificate``:
    leaf for localhost, 127.0.0.1, mtls.example and opt.example, followed by
    the intermediate that signed it;
    ``a_certificate``: for ``a.example``; ``wild_certificate``: for
    ``*.wild.example``; ``pass_certificate``: for ``pass.example`` (the
    pass-through backend's own); ``expired_certificate``: localhost, expired
    yesterday; ``client_certificate``: a client certificate with subject
    CN ``client-one``; ``other_key``: a key that matches no certificate.
    """

    directory: Path
    ca: Path
    server_certificate: Path
    server_key: Path
    a_certificate: Path
    a_key: Path
    wild_certificate: Path
    wild_key: Path
    pass_certificate: Path
    pass_key: Path
    expired_certificate: Path
    expired_key: Path
    client_certificate: Path
    client_key: Path
    other_key: Path


def _write(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    chunks = []
    for item in items:
        if isinstance(item, x509.Certificate):
            chunks.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            chunks.append(
                item.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    path.write_bytes(b"".join(chunks))
    return path


@cache
def pki() -> PKI:
    """Make the test PKI once per session and return where its files are."""
    directory = Path(tempfile.mkdtemp(prefix="txcmux-tls-"))
    atexit.register(shutil.rmtree, directory, True)

    root_key = _key()
    root = _certificate("txcmux test root", root_key, None, ca=True)
    root_issuer = _Issuer(root.subject, root_key)
    middle_key = _key()
    middle = _certificate("txcmux test intermediate", middle_key, root_issuer, ca=True)
    middle_issuer = _Issuer(middle.subject, middle_key)

    def leaf(
        stem: str,
        subject: str,
        names: tuple[str, ...],
        **options: object,
    ) -> tuple[Path, Path]:
        key = _key()
        certificate = _certificate(
            subject,
            key,
            middle_issuer,
            names=names,
            **options,  # type: ignore[arg-type]
        )
        return (
            _write(directory / f"{stem}.pem", certificate, middle),
            _write(directory / f"{stem}.key", key),
        )

    server = leaf(
        "server",
        "localhost",
        ("localhost", "127.0.0.1", "mtls.example", "opt.example"),
    )
    a = leaf("a", "a.example", ("a.example",))
    wild = leaf("wild", "*.wild.example", ("*.wild.example",))
    passed = leaf("pass", "pass.example", ("pass.example",))
    expired = leaf("expired", "localhost", ("localhost",), not_after=_NOW - _DAY / 2)
    client = leaf("client", "client-one", (), client=True)
    return PKI(
        directory=directory,
        ca=_write(directory / "ca.pem", root),
        server_certificate=server[0],
        server_key=server[1],
        a_certificate=a[0],
        a_key=a[1],
        wild_certificate=wild[0],
        wild_key=wild[1],
        pass_certificate=passed[0],
        pass_key=passed[1],
        expired_certificate=expired[0],
        expired_key=expired[1],
        client_certificate=client[0],
        client_key=client[1],
        other_key=_write(directory / "other.key", _key()),
    )


@pytest.fixture(scope="session")
def pki_files() -> PKI:
    """The session's test PKI, for plain pytest tests."""
    return pki()
