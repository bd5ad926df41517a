"""Log helpers shared by the detector and the targets.

::

    >>> from twisted.internet.address import IPv4Address, IPv6Address
    >>> describe_peer(IPv4Address("TCP", "127.0.0.1", 5000))
    '127.0.0.1:5000'
    >>> describe_peer(IPv6Address("TCP", "::1", 5000))
    '[::1]:5000'
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

#: The logger every txcmux module writes to (namespace ``txcmux``).
log = Logger(namespace="txcmux")

#: How many of a connection's first bytes a log line shows.
SHOWN_BYTES = 32


def describe_peer(address: IAddress | None) -> str:
    """A short, log-friendly name for a peer address."""
    host = getattr(address, "host", None)
    if host is not None:
        port = getattr(address, "port", "")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return (
            f"unix:{name.decode(errors='replace') if isinstance(name, bytes) else name}"
        )
    return repr(address)
