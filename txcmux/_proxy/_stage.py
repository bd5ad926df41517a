"""The PROXY protocol as the detector's prelude: who may send it, and must.

::

    >>> from twisted.internet.address import IPv4Address
    >>> stage = ProxyPrelude("optional", ["10.0.0.0/8"])
    >>> balancer = IPv4Address("TCP", "10.1.2.3", 40000)
    >>> stage(b"PROXY TCP4 192.0.2.7 10.0.0.1 5000 443\\r\\n", balancer).client
    IPv4Address(type='TCP', host='192.0.2.7', port=5000)
    >>> stranger = IPv4Address("TCP", "203.0.113.9", 40000)
    >>> stage(b"PROXY TCP4 192.0.2.7 10.0.0.1 5000 443\\r\\n", stranger).reason
    <Reason.PROXY_UNTRUSTED: 'proxy_untrusted'>
    >>> stage(b"GET / HTTP/1.1\\r\\n", stranger).consumed  # no header: a direct client
    0

``required`` (the default) refuses a connection without a header;
``optional`` lets one through as a direct client, and therefore needs
``trusted_proxies``: the specification says a receiver "MUST not try to
guess whether the PROXY protocol header is present or not", because
otherwise any client could claim any address.  Only a peer inside
``trusted_proxies`` (any peer, when the list is empty) may send a header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from .._decision import Reason, Reject
from .._errors import ConfigurationError
from .._log import describe_peer
from .._prelude import PreludeRead
from ..matchers._verdict import NEED_MORE, Verdict
from ._parser import (
    DEFAULT_V2_MAX_BYTES,
    V1_MAX_BYTES,
    ProxyError,
    ProxyHeader,
    parse,
    signature,
)

MODES = ("off", "optional", "required")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(written: Iterable[str]) -> tuple[tuple[Network, ...], bool]:
    """The CIDR blocks of ``trusted_proxies``, and whether ``"unix"`` is among them.

    Raises :class:`~txcmux.ConfigurationError` for an entry that is neither.
    """
    networks: list[Network] = []
    unix = False
    for entry in written:
        if entry == "unix":
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (ValueError, TypeError):
            raise ConfigurationError(
                f"trusted_proxies: {entry!r} is not an address or CIDR block"
                ' (such as "10.0.0.0/8", "192.0.2.7" or "::1"), nor "unix"'
            ) from None
    return tuple(networks), unix


class ProxyPrelude:
    """Reads the PROXY header (v1 or v2) before the routes are asked."""

    name = "PROXY"

    def __init__(
        self,
        mode: str = "required",
        trusted_proxies: Iterable[str] = (),
        max_v2_bytes: int = DEFAULT_V2_MAX_BYTES,
    ) -> None:
        if mode not in ("optional", "required"):
            raise ConfigurationError(
                f"proxy_protocol: {mode!r}; expected one of"
                f" {', '.join(repr(m) for m in MODES)}"
            )
        listed = list(trusted_proxies)
        if mode == "optional" and not listed:
            raise ConfigurationError(
                'proxy_protocol = "optional" needs trusted_proxies: without it any'
                " client could claim any address"
            )
        if max_v2_bytes < 16:
            raise ConfigurationError(
                f"the PROXY v2 header bound must be at least 16 bytes, not"
                f" {max_v2_bytes}"
            )
        self.mode = mode
        self.networks, self.trust_unix = parse_networks(listed)
        self.trust_all = not listed
        self.max_v2_bytes = max_v2_bytes
        self.max_bytes = max(V1_MAX_BYTES, max_v2_bytes)

    def trusts(self, peer: IAddress | None) -> bool:
        """Whether ``peer`` may tell us who the client is."""
        if self.trust_all:
            return True
        if isinstance(peer, UNIXAddress):
            return self.trust_unix
        if not isinstance(peer, IPv4Address | IPv6Address):
            return False
        try:
            address = ipaddress.ip_address(peer.host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __call__(
        self, data: bytes, peer: IAddress | None
    ) -> PreludeRead | Reject | Verdict:
        present = signature(data)
        if present is None:
            return NEED_MORE
        if not self.trusts(peer):
            if present:
                return Reject(
                    Reason.PROXY_UNTRUSTED,
                    f"a PROXY header from {describe_peer(peer)}, which is not in"
                    " trusted_proxies",
                )
            if self.mode == "required":
                return Reject(
                    Reason.PROXY_UNTRUSTED,
                    f"{describe_peer(peer)} is not in trusted_proxies, and this"
                    " listener takes connections only through them",
                )
            return PreludeRead(0)
        if not present:
            if self.mode == "required":
                return Reject(
                    Reason.PROXY_MISSING,
                    "no PROXY header, which this listener requires",
                )
            return PreludeRead(0)
        header = parse(data, self.max_v2_bytes)
        if isinstance(header, ProxyError):
            return Reject(Reason.PROXY_INVALID, header.detail)
        if not isinstance(header, ProxyHeader):
            return NEED_MORE
        if header.command == "LOCAL":  # the balancer's own health check
            return PreludeRead(header.length, None, header)
        return PreludeRead(header.length, header.source, header, header.destination)

    def __repr__(self) -> str:
        return f"<ProxyPrelude {self.mode}>"
