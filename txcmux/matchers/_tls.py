"""TLS matchers: a ClientHello, optionally by version, server name and ALPN.

The parser reads the TLS record layer (RFC 8446 section 5.1) and reassembles
the first handshake message across as many records and reads as it takes:
ClientHellos with post-quantum key shares are over 1 KiB and may be split
over several records.  It never raises on malformed bytes; it answers
``NO_MATCH`` instead.

    >>> hello = parse_client_hello(open("hello.bin", "rb").read())  # doctest: +SKIP
    >>> hello.server_name, hello.alpn                                # doctest: +SKIP
    ('example.com', ('h2', 'http/1.1'))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .._errors import ConfigurationError
from ._params import Param, parameters
from ._verdict import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_RECORD_HEADER = 5
_MAX_RECORD = 16384 + 2048  # TLSPlaintext limit plus slack for odd clients
DEFAULT_MAX_HELLO = 65536
_EXT_SERVER_NAME, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS = 0, 16, 43

VERSION_NAMES = {0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a ClientHello tells a router: versions, server name, ALPN."""

    versions: frozenset[str]
    server_name: str | None
    alpn: tuple[str, ...]


class _Malformed(Exception):
    """Raised inside the parser only; becomes ``NO_MATCH``."""


class _Reader:
    """Bounds-checked reads from one ClientHello body."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def take(self, size: int) -> bytes:
        end = self._position + size
        if end > len(self._data):
            raise _Malformed
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))

    def remaining(self) -> int:
        return len(self._data) - self._position


def _record_start_verdict(data: bytes) -> Verdict:
    """Judge the first six bytes: a handshake record holding a ClientHello."""
    head = data[:6]
    if head[:1] not in (b"", b"\x16") or head[1:2] not in (b"", b"\x03"):
        return NO_MATCH
    if len(head) >= 3 and head[2] > 4:
        return NO_MATCH
    if len(head) >= _RECORD_HEADER:
        length = int.from_bytes(head[3:5], "big")
        if length == 0 or length > _MAX_RECORD:
            return NO_MATCH
    if len(head) < 6:
        return NEED_MORE
    return MATCH if head[5] == _CLIENT_HELLO else NO_MATCH


def _handshake_message(data: bytes, limit: int) -> Verdict | bytes:
    """The first handshake message's body, reassembled from its records."""
    start = _record_start_verdict(data)
    if start is not MATCH:
        return start
    message = bytearray()
    position = 0
    while True:
        header = data[position : position + _RECORD_HEADER]
        if not header:
            return NEED_MORE
        length = int.from_bytes(header[3:5], "big")
        if header[:1] != b"\x16" or header[1:2] not in (b"", b"\x03"):
            return NO_MATCH  # another handshake record must follow
        if len(header) < _RECORD_HEADER:
            return NEED_MORE
        if not 0 < length <= _MAX_RECORD:
            return NO_MATCH
        fragment = data[position + _RECORD_HEADER : position + _RECORD_HEADER + length]
        message += fragment
        if len(message) >= 4:
            size = int.from_bytes(message[1:4], "big")
            if size > limit:
                return NO_MATCH
            if len(message) >= 4 + size:
                return bytes(message[4 : 4 + size])
        if len(fragment) < length:
            return NEED_MORE
        position += _RECORD_HEADER + length


def _parse_body(body: bytes) -> ClientHello:
    reader = _Reader(body)
    legacy_version = reader.number(2)
    reader.take(32)  # random
    reader.vector(1)  # legacy_session_id
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    offered: set[int] = set()
    if reader.remaining():
        extensions = _Reader(reader.vector(2))
        while extensions.remaining():
            kind = extensions.number(2)
            extension = _Reader(extensions.vector(2))
            if kind == _EXT_SERVER_NAME:
                names = _Reader(extension.vector(2))
                while names.remaining():
                    name_type, name = names.number(1), names.vector(2)
                    if name_type == 0:
                        server_name = (
                            name.decode("ascii", "replace").rstrip(".").lower()
                        )
            elif kind == _EXT_ALPN:
                protocols = _Reader(extension.vector(2))
                found = []
                while protocols.remaining():
                    found.append(protocols.vector(1).decode("ascii", "replace"))
                alpn = tuple(found)
            elif kind == _EXT_SUPPORTED_VERSIONS:
                listed = _Reader(extension.vector(1))
                while listed.remaining():
                    offered.add(listed.number(2))
    if not offered:  # before TLS 1.3: every version up to legacy_version
        offered = {v for v in VERSION_NAMES if v <= legacy_version}
    versions = frozenset(VERSION_NAMES[v] for v in offered if v in VERSION_NAMES)
    return ClientHello(versions, server_name, alpn)


def parse_client_hello(
    data: bytes, limit: int = DEFAULT_MAX_HELLO
) -> Verdict | ClientHello:
    """Parse the ClientHello at the start of ``data``.

    Returns the :class:`ClientHello`, or ``NEED_MORE`` while it is incomplete,
    or ``NO_MATCH`` when the bytes are not a TLS ClientHello.
    """
    body = _handshake_message(data, limit)
    if isinstance(body, Verdict):
        return body
    try:
        return _parse_body(body)
    except (_Malformed, KeyError):
        return NO_MATCH


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


class ServerNames:
    """A list of server names and ``*.`` wildcards, asked in time that does
    not grow with its length: a set of exact names, and a set of wildcard
    suffixes looked up once per dot of the name (``*.example.org`` covers
    ``a.example.org`` and ``a.b.example.org``, not ``example.org``).

    >>> names = ServerNames(["api.example.com", "*.example.org"])
    >>> [names.match(n) for n in ("api.example.com", "a.b.example.org", "example.org")]
    [True, True, False]
    """

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self._exact = frozenset(p for p in patterns if not p.startswith("*."))
        self._suffixes = frozenset(p[1:] for p in patterns if p.startswith("*."))

    def match(self, name: str) -> bool:
        """Whether ``name`` (lower case, no trailing dot) is in the list."""
        if name in self._exact:
            return True
        if self._suffixes:
            at = name.find(".", 1)
            while at > 0:
                if name[at:] in self._suffixes:
                    return True
                at = name.find(".", at + 1)
        return False


_VERSION_ALIASES = {
    "1.0": "1.0", "1.1": "1.1", "1.2": "1.2", "1.3": "1.3",
    "tls1.0": "1.0", "tls1.1": "1.1", "tls1.2": "1.2", "tls1.3": "1.3",
    "tlsv1.0": "1.0", "tlsv1.1": "1.1", "tlsv1.2": "1.2", "tlsv1.3": "1.3",
}  # fmt: skip


def _one_or_many(
    label: str, value: str | Iterable[str] | None
) -> tuple[str, ...] | None:
    if value is None:
        return None
    found = (value,) if isinstance(value, str) else tuple(value)
    if not found:
        raise ConfigurationError(
            f"tls(): {label} is an empty list, which nothing would match;"
            f" give at least one value, or None not to filter by {label}"
        )
    return found


@parameters(
    Param("versions", list[str], None),
    Param("sni", list[str], None),
    Param("alpn", list[str], None),
    Param("max_bytes", int, DEFAULT_MAX_HELLO),
)
def tls(
    versions: str | Iterable[str] | None = None,
    sni: str | Iterable[str] | None = None,
    alpn: str | Iterable[str] | None = None,
    max_bytes: int = DEFAULT_MAX_HELLO,
) -> FunctionMatcher:
    """Match a TLS ClientHello, optionally only some versions, names, ALPN.

    ``versions``: any of ``"1.0"`` ... ``"1.3"`` (``"TLSv1.3"`` also reads);
    the hello matches if it offers one of them.  ``sni``: server names,
    exact or ``*.example.com`` (any name below example.com), compared
    case-insensitively; a hello without SNI does not match.  ``alpn``: the
    hello matches if it offers one of these protocols.  Without any of the
    three the matcher decides on the first six bytes.
    """
    wanted_versions = _one_or_many("versions", versions)
    if wanted_versions is not None:
        try:
            wanted_versions = tuple(
                _VERSION_ALIASES[v.lower()] for v in wanted_versions
            )
        except KeyError as error:
            raise ConfigurationError(
                f"tls(): unknown TLS version {error.args[0]!r};"
                " expected one of 1.0, 1.1, 1.2, 1.3"
            ) from None
    names = _one_or_many("sni", sni)
    patterns = (
        tuple(n.lower().rstrip(".") for n in names) if names is not None else None
    )
    protocols = _one_or_many("alpn", alpn)
    listed = ServerNames(patterns or ())

    if wanted_versions is None and patterns is None and protocols is None:
        return FunctionMatcher("tls", 6, _record_start_verdict)

    def verdict(data: bytes) -> Verdict:
        # Records of a few bytes each make the hello longer on the wire than
        # the message itself: only the first max_bytes count, however many
        # arrived in one read, and a hello unfinished there does not match.
        data = data[:max_bytes]
        hello = parse_client_hello(data, max_bytes)
        if isinstance(hello, Verdict):
            return NO_MATCH if hello is NEED_MORE and len(data) >= max_bytes else hello
        if wanted_versions is not None and hello.versions.isdisjoint(wanted_versions):
            return NO_MATCH
        if patterns is not None and not (
            hello.server_name is not None and listed.match(hello.server_name)
        ):
            return NO_MATCH
        if protocols is not None and not set(protocols) & set(hello.alpn):
            return NO_MATCH
        return MATCH

    parts = [
        f"{label}={list(value)}"
        for label, value in (
            ("versions", wanted_versions),
            ("sni", patterns),
            ("alpn", protocols),
        )
        if value is not None
    ]
    return FunctionMatcher(f"tls({', '.join(parts)})", max_bytes, verdict)
