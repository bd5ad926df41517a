"""Checking the values of a config file, one value or one table of keys at a time.

Each problem is one :class:`~txcmux.ConfigurationError` whose message names
the file, the route and the key, says what was found and what was expected,
and offers the near miss::

    >>> where = Where("x.toml").in_route("web").at("sniff_timeout")
    >>> seconds(where, "5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    txcmux._errors.ConfigurationError: x.toml: route "web": key "sniff_timeout": ...
    >>> try:
    ...     seconds(where, "5")
    ... except ConfigurationError as error:
    ...     print(str(error).split(": ", 3)[3])
    found the string "5", expected a positive number of seconds, such as 5.0

A table is checked against a mapping of its keys to :class:`Key` (how the
value is checked, and its default): unknown keys first, with the nearest
known one, then missing ones, then each value.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from .._errors import ConfigurationError
from .._plugins import MatcherRegistry
from ..matchers._params import REQUIRED


def quote(value: str) -> str:
    """``value`` in double quotes, as messages show names and strings."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def describe_value(value: object) -> str:
    """A TOML value as a message shows what was found: ``the string "5"``."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {quote(value)}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"the date/time {value.isoformat()}"
    return repr(value)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for a near miss among ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {quote(close[0])}?)" if close else ""


@dataclass(frozen=True)
class Where:
    """Where a value sits (file, route, key), and what checking it needs.

    ``base_dir`` is where relative paths start; ``registry`` the matcher
    names known (None: those installed now).
    """

    source: str
    route: str | None = None
    key: str | None = None
    base_dir: Path = field(default=Path("."), compare=False)
    registry: MatcherRegistry | None = field(default=None, compare=False)

    def in_route(self, name: str) -> Where:
        """The route called ``name`` (``#N`` for one without a name yet)."""
        label = name if name.startswith("#") else quote(name)
        return replace(self, route=label, key=None)

    def at(self, key: str) -> Where:
        """The key ``key`` of the table here."""
        return replace(self, key=key if self.key is None else f"{self.key}.{key}")

    def item(self, index: int) -> Where:
        """Item ``index`` of the array here."""
        return replace(self, key=f"{self.key}[{index}]")

    def fail(self, problem: str) -> NoReturn:
        """Raise the one-line error: ``file: route "r": key "k": problem``."""
        parts = [self.source]
        if self.route is not None:
            parts.append(f"route {self.route}")
        if self.key is not None:
            parts.append(f"key {quote(self.key)}")
        raise ConfigurationError(": ".join(parts) + ": " + problem)

    def wrong(self, found: object, expected: str) -> NoReturn:
        """Fail with ``found <the value>, expected <expected>``."""
        self.fail(f"found {describe_value(found)}, expected {expected}")


#: How a value is checked: it returns the value to use, or calls where.fail.
Check = Callable[[Where, object], Any]


# -- single values -----------------------------------------------------------


def text(where: Where, value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        where.wrong(value, "a non-empty string")
    return value


def texts(what: str, each: Check = text) -> Check:
    """A non-empty array of ``what`` (a single one is accepted too)."""

    def check(where: Where, value: object) -> tuple[Any, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            where.wrong(value, f"a non-empty array of {what}")
        return tuple(each(where.item(i), item) for i, item in enumerate(value))

    return check


def seconds(where: Where, value: object) -> float:
    """A positive, finite number of seconds."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < float("inf")
    ):
        where.wrong(value, "a positive number of seconds, such as 5.0")
    return float(value)


def positive_int(where: Where, value: object) -> int:
    """An integer of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        where.wrong(value, "a positive integer, such as 16384")
    return value


def boolean(where: Where, value: object) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        where.wrong(value, "true or false")
    return value


def one_of(*choices: str) -> Check:
    """One of the strings ``choices``."""

    def check(where: Where, value: object) -> str:
        if value not in choices:
            quoted = [quote(choice) for choice in choices]
            if len(quoted) > 2:
                quoted = [f"one of {', '.join(quoted[:-1])}", quoted[-1]]
            where.wrong(value, " or ".join(quoted))
        return value

    return check


def directory(where: Where, value: object) -> Path:
    """An existing directory, relative to the config file's."""
    path = where.base_dir / text(where, value)
    if not path.is_dir():
        where.fail(f"{path} is not a directory; expected a directory to serve")
    return path


def pem_file(where: Where, value: object) -> Path:
    """An existing file, relative to the config file's directory."""
    path = where.base_dir / text(where, value)
    if not path.is_file():
        where.fail(f"{path} does not exist; expected a file (PEM)")
    return path


@contextlib.contextmanager
def importable_from(directory: Path) -> Iterator[None]:
    """Let modules in ``directory`` import while this lasts; then restore sys.path."""
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.append(entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def import_path(where: Where, value: object) -> tuple[str, object]:
    """``"module:attribute"``, imported: the text and the object it names."""
    path = text(where, value)
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        where.wrong(
            path, 'an import path "module:attribute", such as "myapp.site:resource"'
        )
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        where.fail(
            f"cannot import {quote(path)}: {error} (is the package installed,"
            " or next to the config file?)"
        )
    except Exception as error:
        where.fail(
            f"cannot import {quote(path)}: importing {module_name} raised"
            f" {type(error).__name__}: {error}"
        )
    walked = module_name
    for part in attribute.split("."):
        if not hasattr(found, part):
            names = [n for n in dir(found) if not n.startswith("__")]
            where.fail(
                f"cannot import {quote(path)}: {walked} has no attribute"
                f" {quote(part)}{did_you_mean(part, names)}"
            )
        found = getattr(found, part)
        walked = f"{walked}.{part}"
    return path, found


# -- tables of keys ----------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key of a table: how its value is checked, and its default.

    A key whose default is ``REQUIRED`` must be given; ``missing`` is then
    what the message says when it is not.
    """

    check: Check
    default: object = REQUIRED
    missing: str | None = None


def check_keys(
    where: Where, table: Mapping[str, object], keys: Mapping[str, Key], what: str
) -> None:
    """Refuse a key ``keys`` lacks, then a required key ``table`` lacks."""
    for key in table:
        if key not in keys:
            where.fail(
                f"unknown key {quote(key)} in {what}; expected one of"
                f" {', '.join(keys)}{did_you_mean(key, keys)}"
            )
    required = [key for key, spec in keys.items() if spec.default is REQUIRED]
    for key in required:
        if key not in table:
            where.fail(
                keys[key].missing
                or f"missing key {quote(key)}; {what} needs {', '.join(required)}"
            )


def check_values(
    where: Where, table: Mapping[str, object], keys: Mapping[str, Key]
) -> dict[str, Any]:
    """Each key's checked value, or its default, in the order of ``keys``."""
    return {
        key: spec.check(where.at(key), table[key]) if key in table else spec.default
        for key, spec in keys.items()
    }


def table_of(keys: Mapping[str, Key], what: str, example: str) -> Check:
    """A TOML table with ``keys``, checked: a dict of their values."""

    def check(where: Where, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            where.wrong(value, f"a table such as {example}")
        check_keys(where, value, keys, what)
        return check_values(where, value, keys)

    return check
