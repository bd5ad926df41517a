"""Matchers on a connection's addresses: where the client is, where it came in.

``remote_ip``, ``local_ip`` and ``local_port`` decide without reading a byte,
so one port can send internal networks to an admin route and the world
elsewhere::

    >>> from twisted.internet.address import IPv4Address
    >>> from txcmux import matchers
    >>> internal = matchers.remote_ip("10.0.0.0/8", "192.168.0.0/16")
    >>> client = IPv4Address("TCP", "10.1.2.3", 50000)
    >>> local = IPv4Address("TCP", "203.0.113.5", 443)
    >>> internal.bind(client, local)(b"").outcome.value
    'match'
    >>> matchers.local_port(8443).bind(client, local)(b"").outcome.value
    'no match'

How the detector asks them: a matcher that depends on the connection has a
``bind(client, local)`` method returning the matcher to use for one
connection (:func:`depends_on_connection` tells whether one does).  The
detector binds once per connection, before its first decision and after any
PROXY header, so ``client`` is then the client the header named and
``local`` the destination it named.  An address matcher binds to a
:class:`Constant`, ``MATCH`` or ``NO_MATCH`` for every byte; the combinators
(``all_of``, ``any_of``, ``not_``) bind their parts and simplify, so that
``all_of(tls(sni=...), remote_ip(...))`` becomes the ``tls`` matcher for a
client inside the networks and a constant no-match for the others.  Only
configurations that use such matchers pay for binding; the others are
decided exactly as before.

Asked about bytes without being bound (no connection known), a matcher that
depends on the connection answers ``NO_MATCH``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable

from twisted.internet.interfaces import IAddress

from ._params import Param, parameters
from ._verdict import MATCH, NO_MATCH, Matcher, Outcome, Verdict


class Constant:
    """A matcher whose answer no byte changes: what an address test binds to."""

    __slots__ = ("_verdict", "name")

    max_bytes = 0
    alpn: tuple[bytes, ...] = ()

    def __init__(self, name: str, verdict: Verdict) -> None:
        self.name = name
        self._verdict = verdict

    @property
    def outcome(self) -> Outcome:
        """What it answers, to every input."""
        return self._verdict.outcome

    def __call__(self, data: bytes) -> Verdict:
        return self._verdict

    def __repr__(self) -> str:
        return f"<Matcher {self.name}>"


#: The constant that matches every connection (an address test that passed).
ALWAYS = Constant("always", MATCH)
#: The constant that matches no connection (an address test that failed).
NEVER = Constant("never", NO_MATCH)


def depends_on_connection(matcher: object) -> bool:
    """Whether ``matcher`` must be bound to each connection (has ``bind``)."""
    return callable(getattr(matcher, "bind", None))


def bind_matcher(
    matcher: Matcher, client: IAddress | None, local: IAddress | None
) -> Matcher:
    """The matcher to ask about one connection's bytes.

    ``matcher`` itself unless it depends on the connection; else what its
    ``bind`` returns for this ``client`` and ``local`` address.
    """
    bind = getattr(matcher, "bind", None)
    if not callable(bind):
        return matcher
    bound: Matcher = bind(client, local)
    return bound


class AddressMatcher:
    """A test of a connection's two addresses, made a matcher by binding.

    ``test(client, local)`` says whether a connection passes; bound, the
    matcher is :data:`ALWAYS` or :data:`NEVER`.  Unbound, it answers
    ``NO_MATCH``.
    """

    __slots__ = ("_test", "name")

    max_bytes = 0
    alpn: tuple[bytes, ...] = ()

    def __init__(
        self, name: str, test: Callable[[IAddress | None, IAddress | None], bool]
    ) -> None:
        self.name = name
        self._test = test

    def __call__(self, data: bytes) -> Verdict:
        return NO_MATCH

    def bind(self, client: IAddress | None, local: IAddress | None) -> Constant:
        """:data:`ALWAYS` if this connection passes the test, else :data:`NEVER`."""
        return ALWAYS if self._test(client, local) else NEVER

    def __repr__(self) -> str:
        return f"<Matcher {self.name}>"


# -- IP networks ---------------------------------------------------------------

_Ranges = dict[int, tuple[tuple[int, int], ...]]


def _networks(caller: str, cidrs: tuple[str, ...]) -> _Ranges:
    """Each IP version's (first, last) address ranges, as integers."""
    if not cidrs:
        raise ValueError(f"{caller}() needs at least one network, such as 10.0.0.0/8")
    ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for cidr in cidrs:
        if not isinstance(cidr, str):
            raise ValueError(
                f"{caller}() takes networks as strings such as '10.0.0.0/8',"
                f" not {cidr!r}"
            )
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as error:
            raise ValueError(
                f"{caller}(): {cidr!r} is not a network ({error})"
            ) from None
        ranges[network.version].append(
            (int(network.network_address), int(network.broadcast_address))
        )
    return {version: tuple(found) for version, found in ranges.items()}


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> tuple[int, int] | None:
    """An address text as (version, integer); IPv4-mapped IPv6 as IPv4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.version, int(address)


def _in_networks(ranges: _Ranges, address: IAddress | None) -> bool:
    host = getattr(address, "host", None)
    found = _ip(host) if isinstance(host, str) else None
    if found is None:
        return False  # a UNIX socket, or no address known
    version, value = found
    return any(first <= value <= last for first, last in ranges[version])


@parameters(Param("cidrs", list[str], repeats=True, singular="cidr"))
def remote_ip(*cidrs: str) -> AddressMatcher:
    """Match a client whose IP address is in one of the networks ``cidrs``.

    Networks are written ``10.0.0.0/8``, ``2001:db8::/32``, or as one
    address; an IPv4 client seen on a dual-stack socket (``::ffff:10.1.2.3``)
    counts as IPv4.  After a PROXY header the client is the one the header
    named.  A client without an IP address (a UNIX socket) does not match.
    """
    ranges = _networks("remote_ip", cidrs)
    return AddressMatcher(
        f"remote_ip({', '.join(cidrs)})",
        lambda client, local: _in_networks(ranges, client),
    )


@parameters(Param("cidrs", list[str], repeats=True, singular="cidr"))
def local_ip(*cidrs: str) -> AddressMatcher:
    """Match a connection that came in on an IP address in one of ``cidrs``.

    The listener's own address (after a PROXY header: the destination the
    header named); useful on a listener bound to several addresses.
    """
    ranges = _networks("local_ip", cidrs)
    return AddressMatcher(
        f"local_ip({', '.join(cidrs)})",
        lambda client, local: _in_networks(ranges, local),
    )


@parameters(Param("ports", list[int], repeats=True, singular="port"))
def local_port(*ports: int) -> AddressMatcher:
    """Match a connection that came in on one of the TCP ``ports``.

    The listener's own port (after a PROXY header: the destination port the
    header named), so routes can be shared by several listeners and still
    tell them apart.
    """
    if not ports:
        raise ValueError("local_port() needs at least one port")
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"local_port(): {port!r} is not a port (1 to 65535)")
    wanted = frozenset(ports)
    return AddressMatcher(
        f"local_port({', '.join(str(p) for p in ports)})",
        lambda client, local: getattr(local, "port", None) in wanted,
    )
