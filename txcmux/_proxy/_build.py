"""Building PROXY protocol headers, for backends that read them.

A relay that sends PROXY writes one of these before any byte of the
client's, so the backend learns who the client is::

    >>> from twisted.internet.address import IPv4Address
    >>> client = IPv4Address("TCP", "192.0.2.7", 5000)
    >>> server = IPv4Address("TCP", "198.51.100.1", 443)
    >>> v1(client, server)
    b'PROXY TCP4 192.0.2.7 198.51.100.1 5000 443\\r\\n'
    >>> from ._parser import parse
    >>> parse(v2(client, server, [(0x02, b"example.com")], checksum=True)).authority
    'example.com'

Addresses of a kind the header cannot carry (unix sockets in v1, an IPv4
client to an IPv6 server) are sent as UNKNOWN (v1) or an unspecified
family (v2): the backend then uses the connection's own addresses, as the
specification says.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from ._crc32c import crc32c
from ._parser import PP2_TYPE_CRC32C, V2_SIGNATURE


def v1(source: IAddress | None, destination: IAddress | None) -> bytes:
    """A v1 (text) header for a connection from ``source`` to ``destination``."""
    for kind, family in ((IPv4Address, b"TCP4"), (IPv6Address, b"TCP6")):
        if isinstance(source, kind) and isinstance(destination, kind):
            return b"PROXY %s %s %s %d %d\r\n" % (
                family,
                source.host.encode("ascii"),
                destination.host.encode("ascii"),
                source.port,
                destination.port,
            )
    return b"PROXY UNKNOWN\r\n"


def v2(
    source: IAddress | None,
    destination: IAddress | None,
    tlvs: Iterable[tuple[int, bytes]] = (),
    checksum: bool = False,
) -> bytes:
    """A v2 (binary) PROXY header, with ``tlvs`` and optionally a CRC32C TLV.

    With ``source`` None it is a LOCAL header (the sender's own connection).
    """
    command = 0x1 if source is not None else 0x0
    family, addresses = _v2_addresses(source, destination) if command else (0, b"")
    body = addresses + b"".join(
        struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs
    )
    if checksum:
        body += struct.pack("!BH", PP2_TYPE_CRC32C, 4) + b"\0\0\0\0"
    header = V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body))
    whole = header + body
    if checksum:
        whole = whole[:-4] + crc32c(whole).to_bytes(4)
    return whole


def _v2_addresses(
    source: IAddress | None, destination: IAddress | None
) -> tuple[int, bytes]:
    """The family/protocol byte and the address block; (0, b"") if unsupported."""
    if isinstance(source, IPv4Address) and isinstance(destination, IPv4Address):
        return 0x11, struct.pack(
            "!4s4sHH",
            ipaddress.IPv4Address(source.host).packed,
            ipaddress.IPv4Address(destination.host).packed,
            source.port,
            destination.port,
        )
    if isinstance(source, IPv6Address) and isinstance(destination, IPv6Address):
        return 0x21, struct.pack(
            "!16s16sHH",
            ipaddress.IPv6Address(source.host.split("%")[0]).packed,
            ipaddress.IPv6Address(destination.host.split("%")[0]).packed,
            source.port,
            destination.port,
        )
    if isinstance(source, UNIXAddress) and isinstance(destination, UNIXAddress):
        paths = [os.fsencode(a.name or b"")[:108] for a in (source, destination)]
        return 0x31, struct.pack("!108s108s", *paths)
    return 0x00, b""
