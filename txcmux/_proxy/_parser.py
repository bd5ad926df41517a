"""The PROXY protocol header (v1 and v2), parsed from the bytes seen so far.

A load balancer in front of a server opens each connection with one header
saying who the client is (HAProxy's doc/proxy-protocol.txt, the
specification quoted below).  :func:`parse` is a pure function of the bytes
received so far: it answers ``NEED_MORE`` while the header is incomplete, a
:class:`ProxyHeader` once it is whole, or a :class:`ProxyError` saying what
is wrong with it; it never raises::

    >>> header = parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 443\\r\\nGET /")
    >>> header.source, header.length
    (IPv4Address(type='TCP', host='192.0.2.7', port=5000), 44)
    >>> parse(b"PROXY TCP4 192.0.2.7 198.51") is NEED_MORE
    True
    >>> parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 99999\\r\\n").detail
    'PROXY v1: destination port 99999 is not a port number (0 to 65535)'

:func:`signature` tells from the first bytes whether a header is there at
all: the v1 (``PROXY ``) and v2 (twelve bytes starting ``\\r\\n\\r\\n\\0``)
signatures differ from the start of every protocol txcmux matches.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from ..matchers._verdict import NEED_MORE, Verdict
from ._crc32c import crc32c

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: "a 108-byte buffer is always enough to store all the line and a trailing
#: zero": 107 bytes with the CRLF.
V1_MAX_BYTES = 107
#: The largest v2 header accepted unless told otherwise (the specification
#: allows 16 + 65,535 bytes).
DEFAULT_V2_MAX_BYTES = 4096

_V2_FIXED = 16
_ADDRESS_BYTES = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX

#: TLV types (section 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
#: "the value [of UNIQUE_ID] MUST NOT exceed 128 bytes".
UNIQUE_ID_MAX_BYTES = 128


@dataclass(frozen=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV: what the balancer knew of the client's TLS.

    ``client`` holds the PP2_CLIENT_* bits (0x01 SSL, 0x02 a certificate on
    this connection, 0x04 one in the session); ``verify`` is 0 when the
    client presented a certificate that verified.
    """

    client: int
    verify: int
    version: str | None = None
    common_name: str | None = None
    cipher: str | None = None
    signature_algorithm: str | None = None
    key_algorithm: str | None = None

    @property
    def verified(self) -> bool:
        """Whether a client certificate was presented and verified."""
        return bool(self.client & 0x06) and self.verify == 0


@dataclass(frozen=True)
class ProxyHeader:
    """A PROXY protocol header, read whole.

    ``command`` is ``"PROXY"`` (the connection was relayed for ``source``)
    or ``"LOCAL"`` (the balancer's own connection, a health check: keep the
    real peer).  ``source`` and ``destination`` are None for LOCAL and for
    an UNKNOWN/unspecified family.  ``tlvs`` are the v2 TLVs as
    (type, value) pairs in order; ``length`` is the header's size in bytes.
    """

    version: int
    command: str
    source: IAddress | None
    destination: IAddress | None
    length: int
    tlvs: tuple[tuple[int, bytes], ...] = ()
    ssl: SSLInfo | None = field(default=None, compare=False)

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, if any."""
        for found, value in self.tlvs:
            if found == kind:
                return value
        return None

    @property
    def alpn(self) -> bytes | None:
        """The ALPN protocol the client negotiated with the balancer."""
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (TLS SNI), as UTF-8 text."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def unique_id(self) -> bytes | None:
        """The balancer's unique id for this connection."""
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        """The network namespace the connection was accepted in."""
        value = self.tlv(PP2_TYPE_NETNS)
        return None if value is None else value.decode("ascii", "replace")


@dataclass(frozen=True)
class ProxyError:
    """A header that is not a valid PROXY protocol header; ``detail`` says why."""

    detail: str


Parsed = ProxyHeader | ProxyError | Verdict


def signature(data: bytes) -> bool | None:
    """Whether ``data`` starts with a PROXY header: True, False, or None (can't tell).

    >>> signature(b"PRO"), signature(b"PROXY "), signature(b"GET ")
    (None, True, False)
    """
    for start in (V1_SIGNATURE, V2_SIGNATURE):
        if data.startswith(start):
            return True
        if start.startswith(data):
            return None
    return False


def parse(data: bytes, max_v2_bytes: int = DEFAULT_V2_MAX_BYTES) -> Parsed:
    """Read the PROXY header at the start of ``data`` (see the module)."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data, max_v2_bytes)
    if data.startswith(V1_SIGNATURE):
        return _parse_v1(data)
    if V1_SIGNATURE.startswith(data) or V2_SIGNATURE.startswith(data):
        return NEED_MORE
    return ProxyError(f"no PROXY protocol signature: {bytes(data[:16])!r}")


# -- v1 -----------------------------------------------------------------------


def _parse_v1(data: bytes) -> Parsed:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            return ProxyError(f"PROXY v1: no CRLF within {V1_MAX_BYTES} bytes")
        if b"\n" in data or b"\0" in data:
            return ProxyError("PROXY v1: a line that does not end in CRLF")
        return NEED_MORE
    if b"\n" in data[:end] or b"\0" in data[:end]:
        # As refused above while the CRLF has not arrived: the answer must
        # not depend on whether it came in the same read.
        return ProxyError("PROXY v1: a line that does not end in CRLF")
    length = end + 2
    words = data[len(V1_SIGNATURE) : end].split(b" ")
    family = words[0]
    if (
        family == b"UNKNOWN"
    ):  # "the receiver must ignore anything presented before the CRLF"
        return ProxyHeader(1, "PROXY", None, None, length)
    if family not in (b"TCP4", b"TCP6"):
        return ProxyError(f"PROXY v1: unknown protocol family {bytes(family)!r}")
    if len(words) != 5:
        return ProxyError(
            "PROXY v1: expected 'PROXY TCP4|TCP6 <source> <destination>"
            f" <source port> <destination port>', got {bytes(data[:end])!r}"
        )
    kind = IPv4Address if family == b"TCP4" else IPv6Address
    version = 4 if family == b"TCP4" else 6
    addresses = []
    for what, host, port in (
        ("source", words[1], words[3]),
        ("destination", words[2], words[4]),
    ):
        try:
            parsed = ipaddress.ip_address(host.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if parsed is None or parsed.version != version:
            return ProxyError(
                f"PROXY v1: {what} address {bytes(host)!r} is not an IPv{version}"
                " address"
            )
        number = _port(port)
        if number is None:
            return ProxyError(
                f"PROXY v1: {what} port {port.decode('ascii', 'replace')} is not a"
                " port number (0 to 65535)"
            )
        addresses.append(kind("TCP", str(parsed), number))
    return ProxyHeader(1, "PROXY", addresses[0], addresses[1], length)


def _port(text: bytes) -> int | None:
    """A decimal port number without sign, spaces or leading zeros."""
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[:1] == b"0"):
        return None
    number = int(text)
    return number if number <= 65535 else None


# -- v2 -----------------------------------------------------------------------


def _parse_v2(data: bytes, max_bytes: int) -> Parsed:
    if len(data) < _V2_FIXED:
        return NEED_MORE
    version_command, family_protocol, size = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        return ProxyError(f"PROXY v2: version {version_command >> 4}, expected 2")
    command = {0x0: "LOCAL", 0x1: "PROXY"}.get(version_command & 0xF)
    if command is None:
        return ProxyError(f"PROXY v2: unknown command {version_command & 0xF:#x}")
    length = _V2_FIXED + size
    if length > max_bytes:
        return ProxyError(
            f"PROXY v2: a {length}-byte header, more than the {max_bytes} allowed"
        )
    if len(data) < length:
        return NEED_MORE
    header = bytes(data[:length])
    family, transport = family_protocol >> 4, family_protocol & 0xF
    if family > 0x3 or transport > 0x2:
        return ProxyError(f"PROXY v2: unknown family/protocol {family_protocol:#04x}")
    address_bytes = _ADDRESS_BYTES.get(family, 0)
    if command == "PROXY" and transport == 0x2:
        return ProxyError("PROXY v2: a datagram (DGRAM) header on a stream connection")
    if size < address_bytes:
        return ProxyError(
            f"PROXY v2: {size} bytes of addresses and TLVs, less than the"
            f" {address_bytes} the address family needs"
        )
    # LOCAL: "the receiver must accept the connection and ignore any address
    # information"; so must it for an unspecified family or protocol.
    source = destination = None
    if command == "PROXY" and address_bytes and transport == 0x1:
        source, destination = _addresses(family, header[_V2_FIXED:])
    found = _tlvs(header, _V2_FIXED + address_bytes)
    if isinstance(found, ProxyError):
        return found
    problem = _check_tlvs(header, found)
    if problem is not None:
        return problem
    tlvs = [(kind, header[start:end]) for kind, start, end in found]
    ssl = _ssl(tlvs)
    if isinstance(ssl, ProxyError):
        return ssl
    return ProxyHeader(2, command, source, destination, length, tuple(tlvs), ssl)


def _addresses(family: int, block: bytes) -> tuple[IAddress, IAddress]:
    if family == 0x1:
        source, destination, source_port, destination_port = struct.unpack_from(
            "!4s4sHH", block
        )
        return (
            IPv4Address("TCP", str(ipaddress.IPv4Address(source)), source_port),
            IPv4Address(
                "TCP", str(ipaddress.IPv4Address(destination)), destination_port
            ),
        )
    if family == 0x2:
        source, destination, source_port, destination_port = struct.unpack_from(
            "!16s16sHH", block
        )
        return (
            IPv6Address("TCP", str(ipaddress.IPv6Address(source)), source_port),
            IPv6Address(
                "TCP", str(ipaddress.IPv6Address(destination)), destination_port
            ),
        )
    source_path, destination_path = struct.unpack_from("!108s108s", block)
    return (
        UNIXAddress(source_path.split(b"\0", 1)[0]),
        UNIXAddress(destination_path.split(b"\0", 1)[0]),
    )


def _tlvs(block: bytes, position: int) -> list[tuple[int, int, int]] | ProxyError:
    """The TLVs in ``block`` from ``position`` on: (type, value start, value end)."""
    found: list[tuple[int, int, int]] = []
    while position < len(block):
        if len(block) - position < 3:
            return ProxyError("PROXY v2: a TLV cut short (less than 3 bytes)")
        kind = block[position]
        size = int.from_bytes(block[position + 1 : position + 3])
        start = position + 3
        if len(block) - start < size:
            return ProxyError(
                f"PROXY v2: TLV {kind:#04x} says {size} bytes,"
                f" {len(block) - start} follow"
            )
        found.append((kind, start, start + size))
        position = start + size
    return found


def _check_tlvs(header: bytes, tlvs: list[tuple[int, int, int]]) -> ProxyError | None:
    for kind, start, end in tlvs:
        if kind == PP2_TYPE_CRC32C:
            if end - start != 4:
                return ProxyError("PROXY v2: a CRC32C TLV whose value is not 4 bytes")
            # "The checksum is ... computed over the whole PROXY protocol
            # header ... with the CRC32C field set to zeros."
            zeroed = header[:start] + b"\0\0\0\0" + header[end:]
            if crc32c(zeroed) != int.from_bytes(header[start:end]):
                return ProxyError("PROXY v2: the CRC32C checksum does not match")
        elif kind == PP2_TYPE_UNIQUE_ID and end - start > UNIQUE_ID_MAX_BYTES:
            return ProxyError(
                f"PROXY v2: a {end - start}-byte UNIQUE_ID TLV (at most"
                f" {UNIQUE_ID_MAX_BYTES})"
            )
    return None


def _ssl(tlvs: list[tuple[int, bytes]]) -> SSLInfo | ProxyError | None:
    value = next((v for k, v in tlvs if k == PP2_TYPE_SSL), None)
    if value is None:
        return None
    if len(value) < 5:
        return ProxyError("PROXY v2: an SSL TLV shorter than its 5 fixed bytes")
    inner = _tlvs(value, 5)
    if isinstance(inner, ProxyError):
        return ProxyError(inner.detail.replace("TLV", "SSL sub-TLV", 1))
    text = {k: value[a:b].decode("utf-8", "replace") for k, a, b in inner}
    return SSLInfo(
        client=value[0],
        verify=int.from_bytes(value[1:5]),
        version=text.get(PP2_SUBTYPE_SSL_VERSION),
        common_name=text.get(PP2_SUBTYPE_SSL_CN),
        cipher=text.get(PP2_SUBTYPE_SSL_CIPHER),
        signature_algorithm=text.get(PP2_SUBTYPE_SSL_SIG_ALG),
        key_algorithm=text.get(PP2_SUBTYPE_SSL_KEY_ALG),
    )
