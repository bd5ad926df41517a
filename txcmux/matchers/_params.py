"""What a matcher function takes, said once, so config files can call it.

A config file names a matcher and gives its parameters as TOML values
(``{ type = "prefix", values = ["PING", "PONG"] }``).  A matcher function
says which parameters it has, of which type, with which default, with the
:func:`parameters` decorator; the config layer reads that declaration to
check a file's values and to turn them into the arguments of the call::

    >>> from txcmux.matchers import FunctionMatcher, Param, parameters
    >>> @parameters(Param("word", bytes, default=b"PING"))
    ... def ping(word: bytes = b"PING") -> FunctionMatcher:
    ...     return FunctionMatcher("ping", len(word), lambda data: ...)
    >>> [(p.name, p.type, p.default) for p in parameters_of(ping)]
    [('word', <class 'bytes'>, b'PING')]

The types a parameter may have are ``int``, ``float``, ``bool``, ``str``,
``bytes`` (written in TOML as a string of characters U+0000 to U+00FF, one
per byte), ``object`` (any TOML value, passed unchanged) and ``list[T]`` of
one of these (an array; a single value is accepted too).  A parameter that
``repeats`` is the function's ``*args``: the file gives an array under its
name, or one value under its ``singular``.

The declaration is checked against the function's signature when the
decorator runs, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a parameter that a config file must give.
REQUIRED: Final = _Required()

_SCALARS = (int, float, bool, str, bytes, object)

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class Param:
    """One parameter of a matcher function, as config files give it."""

    name: str
    type: type | types.GenericAlias
    default: object = REQUIRED
    repeats: bool = False
    singular: str | None = None

    def __post_init__(self) -> None:
        if self.item_type not in _SCALARS:
            raise TypeError(
                f"Param {self.name!r}: type {self.type!r} is not one of int,"
                " float, bool, str, bytes, object, or a list[...] of one"
            )
        if (self.repeats or self.singular) and not self.is_list:
            raise TypeError(
                f"Param {self.name!r}: repeats and singular need a list[...] type"
            )

    @property
    def is_list(self) -> bool:
        """Whether the parameter takes an array (or one value of its items)."""
        return (
            isinstance(self.type, types.GenericAlias) and self.type.__origin__ is list
        )

    @property
    def item_type(self) -> object:
        """The type of the parameter's value, or of each item of its array."""
        if not isinstance(self.type, types.GenericAlias):
            return self.type
        items = self.type.__args__
        return items[0] if self.is_list and len(items) == 1 else None

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys a config file may give it under: the name, the singular."""
        return (self.name,) if self.singular is None else (self.name, self.singular)


def parameters(*params: Param) -> Callable[[F], F]:
    """Declare the parameters of a matcher function, in signature order.

    Raises TypeError, when the function is defined, for a declaration its
    signature contradicts (a name it lacks, a default it does not have, a
    repeated parameter that is not its ``*args``).
    """

    def declare(function: F) -> F:
        _check_signature(function, params)
        function.txcmux_parameters = params  # type: ignore[attr-defined]
        return function

    return declare


def parameters_of(function: Callable[..., object]) -> tuple[Param, ...] | None:
    """The parameters ``function`` declares with :func:`parameters`, or None."""
    declared = getattr(function, "txcmux_parameters", None)
    return declared if isinstance(declared, tuple) else None


def _check_signature(
    function: Callable[..., object], params: tuple[Param, ...]
) -> None:
    signature = inspect.signature(function)
    found = signature.parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in found.values())
    for param in params:
        problem = None
        actual = found.get(param.name)
        if param.repeats:
            if actual is None or actual.kind is not actual.VAR_POSITIONAL:
                problem = f"repeats, but is not its *{param.name}"
            elif param.default not in (REQUIRED, ()):
                problem = "repeats: its default must be REQUIRED or ()"
        elif actual is None:
            problem = None if open_ended else "is not in its signature"
        elif actual.kind is actual.VAR_POSITIONAL:
            problem = "is its *args: declare it with repeats=True"
        elif actual.default is actual.empty:
            if param.default is not REQUIRED:
                problem = "has a default, but the function has none"
        elif param.default is REQUIRED or param.default != actual.default:
            problem = (
                f"is declared with default {param.default!r}, but the function's"
                f" default is {actual.default!r}"
            )
        if problem is not None:
            name = getattr(function, "__qualname__", repr(function))
            raise TypeError(f"{name}(): parameter {param.name!r} {problem}")
