"""The PROXY header a relay sends its backend, for the client it serves.

::

    header, unique_id = header_for(client_transport, handoff, "v2")
    backend.write(header)       # before any byte of the client's

The client is what the client transport's ``getPeer()`` answers (the
original client, when one came in a PROXY header), the destination what
its ``getHost()`` answers.  A v2 header also carries what txcmux knows of
the connection: the server name (``PP2_TYPE_AUTHORITY``) from the
ClientHello it routed by or from the TLS it terminated, the ALPN protocol
TLS negotiated (``PP2_TYPE_ALPN``), and a unique id for the connection
(``PP2_TYPE_UNIQUE_ID``, also in the relay's log line), with a CRC32C TLV
if asked.
"""

from __future__ import annotations

import secrets
from typing import Any

from .._errors import ConfigurationError
from .._handoff import Handoff
from .._tls._inspect import server_name
from ..matchers._tls import ClientHello, parse_client_hello
from ._build import v1, v2
from ._parser import PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_UNIQUE_ID

VERSIONS = ("v1", "v2")


def check_version(where: str, version: object) -> str | None:
    """``version`` if it is None, "v1" or "v2"; else a ConfigurationError."""
    if version is None or version in VERSIONS:
        return version
    raise ConfigurationError(
        f'{where}: send_proxy is {version!r}; expected "v1" or "v2" (or none)'
    )


def header_for(
    transport: Any,
    handoff: Handoff | None,
    version: str,
    checksum: bool = False,
) -> tuple[bytes, str | None]:
    """The header to send for the client on ``transport``, and its unique id."""
    source, destination = transport.getPeer(), transport.getHost()
    if version == "v1":
        return v1(source, destination), None
    unique_id = secrets.token_hex(8)
    tlvs: list[tuple[int, bytes]] = []
    negotiated = getattr(transport, "negotiatedProtocol", None) or (
        handoff.negotiated if handoff is not None else None
    )
    if negotiated:
        tlvs.append((PP2_TYPE_ALPN, negotiated))
    name = server_name(transport)
    if name is None and handoff is not None:
        hello = parse_client_hello(handoff.buffered)
        if isinstance(hello, ClientHello):
            name = hello.server_name
    if name:
        tlvs.append((PP2_TYPE_AUTHORITY, name.encode("utf-8")))
    tlvs.append((PP2_TYPE_UNIQUE_ID, unique_id.encode("ascii")))
    return v2(source, destination, tlvs, checksum=checksum), unique_id
