"""A stage before route matching: a header the connection starts with.

Behind a load balancer a connection may open with a header that is not the
client's protocol but says who the client is (the PROXY protocol's).  A
*prelude* reads such a header as a pure function of the bytes seen so far,
as a matcher does; once it has read it, the detector drops those bytes and
asks the routes about what follows, as if the connection had started there.
The header counts against the sniff timeout like any other byte::

    >>> from twisted.internet.address import IPv4Address
    >>> class Hello:
    ...     '''A toy header: "HELLO <host> <port>\\\\n" names the client.'''
    ...     name, max_bytes = "hello", 64
    ...     def __call__(self, data, peer):
    ...         end = data.find(b"\\n")
    ...         if end < 0:
    ...             return NEED_MORE
    ...         _, host, port = data[:end].decode().split()
    ...         return PreludeRead(end + 1, IPv4Address("TCP", host, int(port)))
    >>> Hello()(b"HELLO 192.0.2.7 5000\\nGET / HTTP/1.1", None).consumed
    21

A prelude answers :data:`~txcmux.matchers.NEED_MORE` while the header is
incomplete, a :class:`PreludeRead` once it is read (``consumed`` may be 0
when the header is optional and absent), or a
:class:`~txcmux._decision.Reject` with the reason the connection is refused.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from twisted.internet.interfaces import IAddress

from ._decision import Reject
from .matchers._verdict import NEED_MORE, Verdict

__all__ = ["NEED_MORE", "Prelude", "PreludeRead"]


class PreludeRead(NamedTuple):
    """A prelude's header, read.

    ``consumed`` is how many bytes it took; ``client`` the client it names
    (None: the connection's own peer) and ``destination`` the address that
    client connected to (None: the connection's own); ``info`` whatever
    else it carried, for the targets (it reaches them as
    :attr:`txcmux.Handoff.prelude`, and through ``txcmux._handoff.prelude_of``).
    From then on the transport's ``getPeer()`` and ``getHost()`` answer
    ``client`` and ``destination``.
    """

    consumed: int
    client: IAddress | None = None
    info: object = None
    destination: IAddress | None = None


class Prelude(Protocol):
    """What a :class:`~txcmux.ProtocolSwitchingFactory` reads before matching.

    ``name`` is used in logs; ``max_bytes`` bounds the header: a prelude
    still answering ``NEED_MORE`` with that many bytes in is refused as too
    long.  It is called with the bytes so far and the connection's peer.
    """

    name: str
    max_bytes: int

    def __call__(
        self, data: bytes, peer: IAddress | None
    ) -> PreludeRead | Reject | Verdict: ...
