"""Matchers: pure functions deciding, from a connection's first bytes, its route.

Each function here returns a :class:`Matcher`, an object you call with the
bytes a client has sent so far and that answers ``MATCH``, ``NO_MATCH`` or
``NEED_MORE``::

    >>> from txcmux import matchers
    >>> matchers.http1_fast()(b"PATCH /x HTTP/1.1\\r\\n").outcome.value
    'match'
    >>> matchers.ssh()(b"SSH-2").outcome.value
    'need more'

Write your own with :class:`FunctionMatcher`; make one usable by name from
config files through the ``txcmux.matchers`` entry-point group.
"""

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
    "any",
    "grpc",
    "http1",
    "http1_fast",
    "http1_header",
    "http2",
    "http2_header",
    "parameters",
    "parse_client_hello",
    "postgres",
    "prefix",
    "redis",
    "ssh",
    "tls",
]
