"""Matchers: pure functions deciding, from a connection's first bytes, its route.

Each function here returns a :class:`Matcher`, an object you call with the
bytes a client has sent so far and that answers ``MATCH``, ``NO_MATCH`` or
``NEED_MORE``::

    >>> from txcmux import matchers
    >>> matchers.http1_fast()(b"PATCH /x HTTP/1.1\\r\\n").outcome.value
    'match'
    >>> matchers.ssh()(b"SSH-2").outcome.value
    'need more'

Some decide on the connection's addresses rather than its bytes
(:func:`remote_ip`, :func:`local_ip`, :func:`local_port`); combinators
(:func:`all_of`, :func:`any_of`, :func:`not_`) build matchers from matchers.

Write your own with :class:`FunctionMatcher`; make one usable by name from
config files through the ``txcmux.matchers`` entry-point group.
"""

from ._address import local_ip, local_port, remote_ip
from ._combinators import all_of, any_of, not_
from ._extra import postgres, redis
from ._http1 import http1, http1_fast, http1_header
from ._http2 import (
    EMPTY_SETTINGS,
    PREFACE,
    SettingsAckFilter,
    grpc,
    http2,
    http2_header,
)
from ._params import Param, parameters
from ._protocols import amqp, mqtt, openvpn, rdp, socks4, socks5, websocket, xmpp
from ._regex import regex
from ._simple import any_, prefix, ssh
from ._tls import ClientHello, parse_client_hello, tls
from ._verdict import (
    MATCH,
    NEED_MORE,
    NO_MATCH,
    AnswerFilter,
    FunctionMatcher,
    Matcher,
    Outcome,
    Verdict,
)

# ``any`` is the public name, as in cmux; the function is defined as any_ so
# that the builtin stays usable inside the modules that implement matchers.
any = any_

__all__ = [
    "EMPTY_SETTINGS",
    "MATCH",
    "NEED_MORE",
    "NO_MATCH",
    "PREFACE",
    "AnswerFilter",
    "ClientHello",
    "FunctionMatcher",
    "Matcher",
    "Outcome",
    "Param",
    "SettingsAckFilter",
    "Verdict",
    "all_of",
    "amqp",
    "any",
    "any_of",
    "grpc",
    "http1",
    "http1_fast",
    "http1_header",
    "http2",
    "http2_header",
    "local_ip",
    "local_port",
    "mqtt",
    "not_",
    "openvpn",
    "parameters",
    "parse_client_hello",
    "postgres",
    "prefix",
    "rdp",
    "redis",
    "regex",
    "remote_ip",
    "socks4",
    "socks5",
    "ssh",
    "tls",
    "websocket",
    "xmpp",
]
