"""The exceptions txcmux raises, under one root; and the check of a duration
argument that raises one for the Python API."""

from __future__ import annotations

from typing import Literal, overload


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


@overload
def seconds_argument(
    where: str, name: str, value: object, *, off: Literal["", "0"] = ""
) -> float: ...
@overload
def seconds_argument(
    where: str, name: str, value: object, *, off: Literal["None"]
) -> float | None: ...
def seconds_argument(
    where: str, name: str, value: object, *, off: str = ""
) -> float | None:
    """``value``, checked as the duration in seconds passed as ``where``'s
    argument ``name``; a :class:`ConfigurationError` saying what was
    expected otherwise.

    ``off`` says what turns the bound off: ``""``, nothing (a positive
    number is required); ``"None"``, None (returned as it is); ``"0"``, 0
    or None (both returned as 0).  Booleans and infinity are refused.

    >>> seconds_argument("RelayFactory", "idle_timeout", None, off="0")
    0
    >>> seconds_argument("RelayFactory", "connect_timeout", 0)
    Traceback (most recent call last):
      ...
    txcmux._errors.ConfigurationError: RelayFactory: connect_timeout is 0; ...
    """
    if value is None and off:
        return 0 if off == "0" else None
    lowest = 0 if off == "0" else None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and value < float("inf")
        and (value > 0 or (lowest == 0 and value == 0))
    ):
        return value
    also = {"": "", "None": ", or None for none", "0": ", or 0 for none"}[off]
    raise ConfigurationError(
        f"{where}: {name} is {value!r}; expected a positive number of seconds{also}"
    )
