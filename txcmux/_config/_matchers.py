"""The entries of a route's ``match`` list, made into matchers.

An entry is a matcher name (``"http1"``) or a table whose ``type`` is the
name and whose other keys are parameters (``{ type = "prefix", value =
"PING" }``).  The name is looked up among the built-ins and the plugins;
the keys are checked against the parameters the function declares with
:func:`txcmux.matchers.parameters` and become the arguments of the call.

A plugin function that declares nothing takes the parameters of its
signature, each value passed as TOML gives it (a string stays a ``str``).

The parameters a combinator marks as taking matchers (``all_of``'s and
``not``'s ``of``) hold entries of the same kind, built first, at any depth::

    { type = "all_of", of = [
        { type = "tls", sni = "admin.example.com" },
        { type = "remote_ip", cidrs = ["10.0.0.0/8"] },
    ] }
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigurationError
from .._plugins import MatcherRegistry
from ..matchers import Matcher
from ..matchers._params import REQUIRED, Param, parameters_of
from ._values import Where, did_you_mean, quote, text


@dataclass(frozen=True)
class MatcherConfig:
    """One entry of a route's ``match`` list: as written, and built."""

    written: str
    matcher: Matcher


def matcher_entry(
    where: Where, item: object, registry: MatcherRegistry
) -> MatcherConfig:
    """The matcher that ``item``, one entry of a ``match`` list, names."""
    if isinstance(item, str):
        name, given, name_where = item, {}, where
    elif isinstance(item, dict):
        if "type" not in item:
            where.fail(
                'a matcher table needs "type", the matcher name, as in'
                ' { type = "prefix", value = "PING" }'
            )
        name_where = where.at("type")
        name = text(name_where, item["type"])
        given = {k: v for k, v in item.items() if k != "type"}
    else:
        where.wrong(
            item,
            'a matcher name such as "http1", or a table such as'
            ' { type = "prefix", value = "PING" }',
        )
    try:
        function = registry.get(name).load()
    except KeyError:
        names = registry.names()
        name_where.fail(
            f"unknown matcher {quote(name)}; expected one of"
            f" {', '.join(names)}{did_you_mean(name, names)}"
        )
    except ConfigurationError as error:
        name_where.fail(str(error))
    params, open_ended = _parameters(function)
    given = _inner_matchers(where, function, given, registry)
    listed = ", ".join(k for p in params for k in p.keys) or "none"
    form = (
        f"; write it as a table, e.g. {{ type = {quote(name)}, ... }}"
        if isinstance(item, str)
        else ""
    )
    args, kwargs = _arguments(where, name, params, open_ended, given, listed + form)
    try:
        matcher = function(*args, **kwargs)
    except Exception as error:
        reason = str(error)
        if not isinstance(error, ValueError | TypeError):
            reason = f"{type(error).__name__}: {error}"
        where.fail(
            f"matcher {quote(name)} refused its parameters ({reason});"
            f" its parameters are: {listed}{form}"
        )
    if not (
        callable(matcher)
        and isinstance(getattr(matcher, "max_bytes", None), int)
        and isinstance(getattr(matcher, "name", None), str)
    ):
        where.fail(
            f"matcher {quote(name)} ({registry.get(name).source}) returned"
            f" {matcher!r}, which is not a txcmux matcher (a callable with name"
            " and max_bytes)"
        )
    return MatcherConfig(_written(item), matcher)


def _inner_matchers(
    where: Where,
    function: Callable[..., object],
    given: dict[str, object],
    registry: MatcherRegistry,
) -> dict[str, object]:
    """``given`` with the entries of parameters that take matchers built."""
    built = dict(given)
    declared = {param.name: param for param in parameters_of(function) or ()}
    for key in getattr(function, "txcmux_matcher_parameters", ()):
        if key not in built:
            continue
        value, at = built[key], where.at(key)
        one = key in declared and not declared[key].repeats
        if one and isinstance(value, list):
            at.fail(
                "takes one matcher (a name or a table), not an array; for"
                ' several, write { type = "any_of", of = [...] } or "all_of"'
            )
        if isinstance(value, list):
            if not value:
                at.fail('needs at least one matcher, as in of = ["http1", "ssh"]')
            built[key] = [
                matcher_entry(at.item(i), item, registry).matcher
                for i, item in enumerate(value)
            ]
        else:
            built[key] = matcher_entry(at, value, registry).matcher
    return built


def _parameters(function: Callable[..., object]) -> tuple[tuple[Param, ...], bool]:
    """What ``function`` takes, and whether it takes any other keyword too."""
    declared = parameters_of(function)
    if declared is not None:
        return declared, False
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return (), True
    params = []
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            singular = p.name[:-1] if p.name.endswith("s") and len(p.name) > 1 else None
            params.append(Param(p.name, list[object], (), True, singular))
        elif p.kind is not p.VAR_KEYWORD:
            default = REQUIRED if p.default is p.empty else p.default
            params.append(Param(p.name, object, default))
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return tuple(params), takes_any


def _arguments(
    where: Where,
    name: str,
    params: tuple[Param, ...],
    open_ended: bool,
    given: Mapping[str, object],
    listed: str,
) -> tuple[list[object], dict[str, object]]:
    """The positional and keyword arguments that ``given`` makes."""
    keys = [key for p in params for key in p.keys]
    for key in given:
        if key not in keys and not open_ended:
            where.at(key).fail(
                f"matcher {quote(name)} has no parameter {quote(key)};"
                f" its parameters are: {listed}{did_you_mean(key, keys)}"
            )
    args: list[object] = []
    kwargs = {key: value for key, value in given.items() if key not in keys}
    for p in params:
        present = [key for key in p.keys if key in given]
        keys_of_p = " or ".join(quote(key) for key in p.keys)
        if len(present) > 1:
            where.fail(f"matcher {quote(name)} takes {keys_of_p}, not both")
        if not present:
            if p.default is REQUIRED:
                where.fail(
                    f"matcher {quote(name)} needs {keys_of_p};"
                    f" its parameters are: {listed}"
                )
            continue
        at, value = where.at(present[0]), given[present[0]]
        if not p.is_list:
            kwargs[p.name] = _value(at, p.item_type, value)
            continue
        items = value if isinstance(value, list) else [value]
        checked = [
            _value(at.item(i) if isinstance(value, list) else at, p.item_type, v)
            for i, v in enumerate(items)
        ]
        if p.repeats:
            args += checked
        else:
            kwargs[p.name] = checked
    return args, kwargs


_EXPECTED: dict[object, tuple[str, Callable[[object], bool]]] = {
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: (
        "a number",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    ),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    bytes: ("a string", lambda v: isinstance(v, str)),
}


def _value(where: Where, kind: object, value: object) -> Any:
    """``value`` checked against the parameter type ``kind``, and converted."""
    if kind not in _EXPECTED:  # object: any TOML value, unchanged
        return value
    expected, fits = _EXPECTED[kind]
    if not fits(value):
        where.wrong(value, expected)
    if kind is float:
        return float(value)  # type: ignore[arg-type]
    if kind is bytes:
        try:
            return value.encode("latin-1")  # type: ignore[attr-defined]
        except UnicodeEncodeError:
            where.wrong(
                value,
                "bytes written as a string of characters U+0000 to U+00FF"
                " (write byte 0xNN as \\u00NN)",
            )
    return value


def _written(item: object) -> str:
    """A match entry as the start-up log shows it."""
    if isinstance(item, dict):
        inner = ", ".join(f"{k} = {_toml(v)}" for k, v in item.items())
        return "{ " + inner + " }"
    return str(item)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return _written(value)
    return str(value)
