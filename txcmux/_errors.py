"""The exceptions txcmux raises, under one root."""

from __future__ import annotations


class TxcmuxError(Exception):
    """The root of every error txcmux raises."""


class ConfigurationError(TxcmuxError, ValueError):
    """Routes, matchers or a config file do not fit together.

    The message says what was wrong, where (file, route, key) and what would
    be right.
    """


class GrpcServerError(TxcmuxError):
    """The in-process gRPC server could not start (grpcio could not listen)."""


class TwistedCompatibilityError(TxcmuxError, ImportError):
    """The installed Twisted lacks a private name a txcmux feature relies on.

    The message names what is missing, what txcmux uses it for, and the
    Twisted releases txcmux was checked against.  It is an ``ImportError``
    because it is raised when the module that needs the name is imported.
    """


class ListenError(TxcmuxError):
    """A listener could not listen (an address in use, a port needing root).

    The message names the listener's endpoint string and the reason.
    """
