"""Reading a txcmux config file into a checked :class:`Config`.

Everything that can be known without running the service is checked here:
keys, types, route and matcher names, matcher parameters, endpoint strings
(parsed, never listened on or connected to), import paths (imported, not
called) and files.  Each problem is one :class:`~txcmux.ConfigurationError`
whose message names the file, the route and the key, what was found and what
was expected::

    >>> config = parse('''
    ... listen = ["tcp:8080"]
    ... [[route]]
    ... name = "ssh"
    ... match = ["ssh"]
    ... proxy = "tcp:host=127.0.0.1:port=22"
    ... ''', source="example.toml")
    >>> config.route("ssh").target.describe()
    'proxy to tcp:host=127.0.0.1:port=22'
    >>> parse('listen = ["tcp:8080"]\\nsniff_timout = 2', source="x.toml")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    txcmux._errors.ConfigurationError: x.toml: unknown key "sniff_timout" ...
"""

from __future__ import annotations

import datetime
import difflib
import importlib
import inspect
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface import implementer

from ._errors import ConfigurationError
from ._plugins import MatcherRegistry, matcher_registry
from .matchers import Matcher

_log = Logger(namespace="txcmux")

DEFAULT_SNIFF_TIMEOUT = 5.0
DEFAULT_MAX_SNIFF_BYTES = 16384

#: The keys of each table a config file may hold; docs/configuration.md
#: documents each of them (a test keeps the two in step).
TOP_LEVEL_KEYS = ("listen", "sniff_timeout", "max_sniff_bytes", "on_timeout")
TOP_LEVEL_TABLES = ("routes", "route", "grpc_server")
TARGET_KEYS = ("web", "static", "proxy", "grpc", "factory", "tls")
ROUTE_KEYS = ("name", "match", *TARGET_KEYS)
TLS_KEYS = ("certificate", "key", "routes")
TLS_OPTION_KEYS = (
    "alpn",
    "sni",
    "client_ca",
    "client_certificates",
    "handshake_timeout",
)
GRPC_SERVER_KEYS = ("max_workers", "max_concurrent_rpcs", "grace", "options")
MATCHER_TABLE_KEYS = ("type",)

#: Every key, qualified the way docs/configuration.md names them.
DOCUMENTED_KEYS = (
    *TOP_LEVEL_KEYS,
    *TOP_LEVEL_TABLES,
    *(f"route.{key}" for key in ROUTE_KEYS),
    *(f"route.tls.{key}" for key in TLS_KEYS),
    *(f"route.tls.{key}" for key in TLS_OPTION_KEYS),
    *(f"route.match.{key}" for key in MATCHER_TABLE_KEYS),
    *(f"grpc_server.{key}" for key in GRPC_SERVER_KEYS),
)


# --------------------------------------------------------------------------
# What a checked config holds


@dataclass(frozen=True)
class MatcherConfig:
    """One entry of a route's ``match`` list: as written, and built."""

    written: str
    matcher: Matcher


@dataclass(frozen=True)
class WebTarget:
    """``web = "module:attr"``: an IResource or Site, or a callable giving one."""

    path: str
    obj: object
    kind: str = field(default="web", init=False)

    def describe(self) -> str:
        """How the start-up log shows this target."""
        return f"web {self.path}"


@dataclass(frozen=True)
class StaticTarget:
    """``static = "dir"``: files served from a directory."""

    directory: Path
    kind: str = field(default="static", init=False)

    def describe(self) -> str:
        """How the start-up log shows this target."""
        return f"static files in {self.directory}"


@dataclass(frozen=True)
class ProxyTarget:
    """``proxy = "client endpoint"``: a relay to a backend."""

    endpoint: str
    kind: str = field(default="proxy", init=False)

    def describe(self) -> str:
        """How the start-up log shows this target."""
        return f"proxy to {self.endpoint}"


@dataclass(frozen=True)
class GrpcTarget:
    """``grpc = ["module:add_services", ...]``: the in-process gRPC server."""

    paths: tuple[str, ...]
    functions: tuple[Callable[[Any], object], ...]
    kind: str = field(default="grpc", init=False)

    def describe(self) -> str:
        """How the start-up log shows this target."""
        return f"in-process gRPC ({', '.join(self.paths)})"


@dataclass(frozen=True)
class FactoryTarget:
    """``factory = "module:attr"``: any protocol factory, or a callable giving one."""

    path: str
    obj: object
    kind: str = field(default="factory", init=False)

    def describe(self) -> str:
        """How the start-up log shows this target."""
        return f"factory {self.path}"


@dataclass(frozen=True)
class TLSTarget:
    """``tls = {certificate, key, routes}``: TLS termination, then the routes.

    ``options`` holds any further keys a later version accepts (see
    ``_TLS_EXTRA_KEYS``), already checked.
    """

    certificate: Path
    key: Path
    routes: tuple[str, ...]
    options: Mapping[str, object] = field(default_factory=dict)
    kind: str = field(default="tls", init=False)

    def describe(self) -> str:
        """How the start-up log shows this target."""
        return f"TLS ({self.certificate.name}) then {' | '.join(self.routes)}"


Target = WebTarget | StaticTarget | ProxyTarget | GrpcTarget | FactoryTarget | TLSTarget


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[route]]`` table, checked."""

    name: str
    matchers: tuple[MatcherConfig, ...]
    target: Target

    def describe(self) -> str:
        """``name [matchers] -> target``, for the start-up log."""
        written = " | ".join(m.written for m in self.matchers)
        return f"{self.name} [{written}] -> {self.target.describe()}"


@dataclass(frozen=True)
class GrpcServerConfig:
    """The ``[grpc_server]`` table: how the in-process gRPC server runs.

    None means grpcio's (or txcmux.grpcserver's) default.
    """

    max_workers: int | None = None
    max_concurrent_rpcs: int | None = None
    grace: float | None = None
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Config:
    """A checked config file.

    ``routes`` are every ``[[route]]`` in file order; ``listener_routes``
    names the ones the listeners use, in priority order (a route reached only
    through a ``tls`` route is in ``routes`` but not there).
    """

    source: str
    base_dir: Path
    listen: tuple[str, ...]
    sniff_timeout: float
    max_sniff_bytes: int
    on_timeout: str | None
    routes: tuple[RouteConfig, ...]
    listener_routes: tuple[str, ...]
    grpc_server: GrpcServerConfig = field(default_factory=lambda: GrpcServerConfig())

    def route(self, name: str) -> RouteConfig:
        """The route called ``name`` (KeyError if none)."""
        return route_by_name(self.routes, name)

    def summary(self) -> str:
        """``N listeners, M routes``, as ``--check`` prints it."""
        listeners = len(self.listen)
        routes = len(self.routes)
        return (
            f"{listeners} listener{'s' if listeners != 1 else ''},"
            f" {routes} route{'s' if routes != 1 else ''}"
        )


# --------------------------------------------------------------------------
# Error messages


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def describe_value(value: object) -> str:
    """A TOML value as a message shows what was found: ``the string "5"``."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {_quote(value)}"
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
    return f" (did you mean {_quote(close[0])}?)" if close else ""


@dataclass(frozen=True)
class _Where:
    """Where in the file a value sits: the file, the route, the key."""

    source: str
    route: str | None = None
    key: str | None = None

    def at(self, key: str) -> _Where:
        joined = key if self.key is None else f"{self.key}.{key}"
        return _Where(self.source, self.route, joined)

    def item(self, index: int) -> _Where:
        return _Where(self.source, self.route, f"{self.key}[{index}]")

    def fail(self, problem: str) -> NoReturn:
        parts = [self.source]
        if self.route is not None:
            parts.append(f"route {self.route}")
        if self.key is not None:
            parts.append(f"key {_quote(self.key)}")
        raise ConfigurationError(": ".join(parts) + ": " + problem)

    def wrong(self, found: object, expected: str) -> NoReturn:
        self.fail(f"found {describe_value(found)}, expected {expected}")


def _check_keys(
    where: _Where, table: Mapping[str, object], known: Sequence[str], what: str
) -> None:
    for key in table:
        if key not in known:
            hint = did_you_mean(key, known)
            where.fail(
                f"unknown key {_quote(key)} in {what}; expected one of"
                f" {', '.join(known)}{hint}"
            )


# --------------------------------------------------------------------------
# Scalars


def _string(where: _Where, value: object) -> str:
    if not isinstance(value, str) or not value:
        where.wrong(value, "a non-empty string")
    return value


def _strings(where: _Where, value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        where.wrong(value, f"a non-empty array of {what}")
    return tuple(_string(where.item(i), v) for i, v in enumerate(value))


def _positive_number(where: _Where, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or value == float("inf")
    ):
        where.wrong(value, "a positive number of seconds, such as 5.0")
    return float(value)


def _positive_integer(where: _Where, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        where.wrong(value, "a positive integer, such as 16384")
    return value


# --------------------------------------------------------------------------
# Endpoint strings, parsed against a reactor that can do nothing


@implementer(IReactorPluggableNameResolver)
class _InertReactor:
    """A stand-in reactor: endpoint constructors store it and never use it."""

    nameResolver = None

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        """Part of IReactorPluggableNameResolver; never called here."""
        raise NotImplementedError("an inert reactor resolves nothing")


def _endpoint_types(server: bool) -> list[str]:
    builtin = ["tcp", "unix", "ssl"]
    if server:
        return builtin + [
            p.prefix for p in getPlugins(IStreamServerEndpointStringParser)
        ]
    plugins = getPlugins(IStreamClientEndpointStringParserWithReactor)
    return builtin + [p.prefix for p in plugins]


def _endpoint(where: _Where, value: object, *, server: bool) -> str:
    text = _string(where, value)
    kind = "server" if server else "client"
    example = "tcp:8080" if server else "tcp:host=127.0.0.1:port=22"
    endpoint_type = text.split(":", 1)[0]
    types = _endpoint_types(server)
    if endpoint_type.lower() not in {t.lower() for t in types}:
        where.fail(
            f"{_quote(text)} is not a Twisted {kind} endpoint string: unknown"
            f" endpoint type {_quote(endpoint_type)}; expected one of"
            f" {', '.join(types)}{did_you_mean(endpoint_type, types)},"
            f" as in {_quote(example)}"
        )
    try:
        if server and endpoint_type == "systemd":
            # Its parser reads the inherited descriptors: only check the form.
            endpoints._parse(text)  # type: ignore[no-untyped-call]
        elif server:
            endpoints.serverFromString(_InertReactor(), text)  # type: ignore[no-untyped-call]
        else:
            endpoints.clientFromString(_InertReactor(), text)  # type: ignore[no-untyped-call]
    except Exception as error:
        where.fail(
            f"{_quote(text)} is not a valid Twisted {kind} endpoint string"
            f" ({type(error).__name__}: {error}); expected something like"
            f" {_quote(example)}"
        )
    return text


# --------------------------------------------------------------------------
# Import paths


def _import(where: _Where, value: object) -> tuple[str, object]:
    text = _string(where, value)
    module_name, colon, attribute = text.partition(":")
    if not colon or not module_name or not attribute:
        where.fail(
            f"found {describe_value(text)}, expected an import path"
            ' "module:attribute", such as "myapp.site:resource"'
        )
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        where.fail(
            f"cannot import {_quote(text)}: {error} (is the package installed,"
            " or next to the config file?)"
        )
    except Exception as error:
        where.fail(
            f"cannot import {_quote(text)}: importing {module_name} raised"
            f" {type(error).__name__}: {error}"
        )
    walked = module_name
    for part in attribute.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("__")]
            where.fail(
                f"cannot import {_quote(text)}: {walked} has no attribute"
                f" {_quote(part)}{did_you_mean(part, names)}"
            )
        obj = getattr(obj, part)
        walked = f"{walked}.{part}"
    return text, obj


# --------------------------------------------------------------------------
# Matchers


def _encode(where: _Where, value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        where.fail(
            f"found {describe_value(value)}, expected bytes written as a string"
            " of characters U+0000 to U+00FF (write byte 0xNN as \\u00NN)"
        )


def _wants_bytes(annotation: object) -> bool:
    text = str(annotation)
    return "bytes" in text and "str" not in text


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Simple parameter annotations checked before a matcher function is called:
#: what a message says is expected, and the test.
_SIMPLE_TYPES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "int": ("an integer", _is_int),
    "float": ("a number", lambda v: _is_int(v) or isinstance(v, float)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bytes": ("a string", lambda v: isinstance(v, str)),
    "str | bytes": ("a string", lambda v: isinstance(v, str)),
    "bytes | str": ("a string", lambda v: isinstance(v, str)),
}


def _check_type(where: _Where, annotation: object, value: object) -> None:
    """Refuse a value that plainly does not fit a simple annotation."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    known = _SIMPLE_TYPES.get(text)
    if known is not None and not known[1](value):
        where.wrong(value, known[0])


def _convert(where: _Where, value: object, to_bytes: bool) -> object:
    if to_bytes and isinstance(value, str):
        return _encode(where, value)
    if to_bytes and isinstance(value, list):
        return [_convert(where.item(i), v, True) for i, v in enumerate(value)]
    return value


def _singular(name: str) -> str | None:
    return name[:-1] if name.endswith("s") and len(name) > 1 else None


def _parameter_keys(signature: inspect.Signature) -> list[str]:
    keys: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            singular = _singular(parameter.name)
            keys += [parameter.name] + ([singular] if singular else [])
        elif parameter.kind is not inspect.Parameter.VAR_KEYWORD:
            keys.append(parameter.name)
    return keys


def _matcher_arguments(
    where: _Where,
    name: str,
    signature: inspect.Signature,
    params: Mapping[str, object],
) -> tuple[list[object], dict[str, object]]:
    args: list[object] = []
    kwargs: dict[str, object] = {}
    accepted = _parameter_keys(signature)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    for key in params:
        if key not in accepted and not takes_any:
            listed = ", ".join(accepted) if accepted else "none"
            where.at(key).fail(
                f"matcher {_quote(name)} has no parameter {_quote(key)};"
                f" its parameters are: {listed}{did_you_mean(key, accepted)}"
            )
    for parameter in signature.parameters.values():
        to_bytes = _wants_bytes(parameter.annotation)
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            singular = _singular(parameter.name)
            given = [k for k in (parameter.name, singular) if k and k in params]
            if len(given) > 1:
                where.fail(
                    f"matcher {_quote(name)} takes {_quote(given[0])} or"
                    f" {_quote(given[1])}, not both"
                )
            if given:
                value = params[given[0]]
                at = where.at(given[0])
                items = list(enumerate(value)) if isinstance(value, list) else None
                for i, item in items or [(0, value)]:
                    item_at = at.item(i) if items is not None else at
                    _check_type(item_at, parameter.annotation, item)
                    args.append(_convert(item_at, item, to_bytes))
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            kwargs.update({k: v for k, v in params.items() if k not in accepted})
        elif parameter.name in params:
            at = where.at(parameter.name)
            _check_type(at, parameter.annotation, params[parameter.name])
            kwargs[parameter.name] = _convert(at, params[parameter.name], to_bytes)
    return args, kwargs


def _written(item: object) -> str:
    if isinstance(item, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in item.items())
        return "{ " + inner + " }"
    return str(item)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _matcher(where: _Where, item: object, registry: MatcherRegistry) -> MatcherConfig:
    if isinstance(item, str):
        name, params = item, {}
        name_where = where
    elif isinstance(item, dict):
        if "type" not in item:
            where.fail(
                'a matcher table needs "type", the matcher name, as in'
                ' { type = "prefix", value = "PING" }'
            )
        name_where = where.at("type")
        name = _string(name_where, item["type"])
        params = {k: v for k, v in item.items() if k != "type"}
    else:
        where.wrong(
            item,
            'a matcher name such as "http1", or a table such as'
            ' { type = "prefix", value = "PING" }',
        )
    names = registry.names()
    try:
        source = registry.get(name)
    except KeyError:
        name_where.fail(
            f"unknown matcher {_quote(name)}; expected one of"
            f" {', '.join(names)}{did_you_mean(name, names)}"
        )
    except ConfigurationError as error:
        name_where.fail(str(error))
    try:
        function = source.load()
    except ConfigurationError as error:
        name_where.fail(str(error))
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        signature = inspect.Signature(
            [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
        )
    args, kwargs = _matcher_arguments(where, name, signature, params)
    try:
        matcher = function(*args, **kwargs)
    except Exception as error:
        accepted = ", ".join(_parameter_keys(signature)) or "none"
        form = (
            f"; write it as a table, e.g. {{ type = {_quote(name)}, ... }}"
            if isinstance(item, str)
            else ""
        )
        reason = (
            str(error)
            if isinstance(error, ValueError | TypeError)
            else (f"{type(error).__name__}: {error}")
        )
        where.fail(
            f"matcher {_quote(name)} refused its parameters ({reason});"
            f" its parameters are: {accepted}{form}"
        )
    if not (
        callable(matcher)
        and isinstance(getattr(matcher, "max_bytes", None), int)
        and isinstance(getattr(matcher, "name", None), str)
    ):
        where.fail(
            f"matcher {_quote(name)} ({source.source}) returned {matcher!r},"
            " which is not a txcmux matcher (a callable with name and max_bytes)"
        )
    return MatcherConfig(_written(item), matcher)


# --------------------------------------------------------------------------
# Targets


def _existing(where: _Where, base_dir: Path, value: object, kind: str) -> Path:
    path = base_dir / _string(where, value)
    if kind == "directory" and not path.is_dir():
        where.fail(f"{path} is not a directory; expected a directory to serve")
    if kind == "file" and not path.is_file():
        where.fail(f"{path} does not exist; expected a {kind} (PEM)")
    return path


def _tls_alpn(where: _Where, base_dir: Path, value: object) -> object:
    if value == []:
        return []
    return list(_strings(where, value, 'protocol names such as "h2", "http/1.1"'))


def _tls_sni(where: _Where, base_dir: Path, value: object) -> object:
    expected = '{ "example.com" = { certificate = "a.pem", key = "a.key" } }'
    if not isinstance(value, dict) or not value:
        where.wrong(value, f"a table of server names, such as {expected}")
    pairs: dict[str, tuple[Path, Path]] = {}
    for name, pair in value.items():
        at = where.at(_quote(name))
        if not isinstance(pair, dict):
            at.wrong(pair, '{ certificate = "a.pem", key = "a.key" }')
        _check_keys(at, pair, ("certificate", "key"), "an sni entry")
        for required in ("certificate", "key"):
            if required not in pair:
                at.at(required).fail("missing; an sni entry needs certificate, key")
        pairs[name] = (
            _existing(at.at("certificate"), base_dir, pair["certificate"], "file"),
            _existing(at.at("key"), base_dir, pair["key"], "file"),
        )
    return pairs


def _tls_client_ca(where: _Where, base_dir: Path, value: object) -> object:
    return _existing(where, base_dir, value, "file")


def _tls_client_certificates(where: _Where, base_dir: Path, value: object) -> object:
    if value not in ("required", "optional"):
        where.wrong(value, '"required" or "optional"')
    return value


def _tls_handshake_timeout(where: _Where, base_dir: Path, value: object) -> object:
    return _positive_number(where, value)


#: Keys of the ``tls`` table beyond certificate, key and routes, each with
#: the function that checks its value and gives the keyword argument of
#: txcmux.tls.TLSTerminationFactory of the same name.  A new option of that
#: class is one entry here (and a row in docs/configuration.md).
_TLS_EXTRA_KEYS: dict[str, Callable[[_Where, Path, object], object]] = {
    "alpn": _tls_alpn,
    "sni": _tls_sni,
    "client_ca": _tls_client_ca,
    "client_certificates": _tls_client_certificates,
    "handshake_timeout": _tls_handshake_timeout,
}


def _tls(where: _Where, base_dir: Path, value: object) -> TLSTarget:
    if not isinstance(value, dict):
        where.wrong(
            value,
            'a table such as { certificate = "server.pem", key = "server.key",'
            ' routes = ["grpc", "web"] }',
        )
    known = (*TLS_KEYS, *_TLS_EXTRA_KEYS)
    _check_keys(where, value, known, "the tls table")
    for required in TLS_KEYS:
        if required not in value:
            where.at(required).fail(
                f"missing; the tls table needs {', '.join(TLS_KEYS)}"
            )
    options = {
        key: check(where.at(key), base_dir, value[key])
        for key, check in _TLS_EXTRA_KEYS.items()
        if key in value
    }
    return TLSTarget(
        certificate=_existing(
            where.at("certificate"), base_dir, value["certificate"], "file"
        ),
        key=_existing(where.at("key"), base_dir, value["key"], "file"),
        routes=_strings(where.at("routes"), value["routes"], "route names"),
        options=options,
    )


def _target(where: _Where, base_dir: Path, key: str, value: object) -> Target:
    at = where.at(key)
    if key == "web":
        return WebTarget(*_import(at, value))
    if key == "static":
        return StaticTarget(_existing(at, base_dir, value, "directory"))
    if key == "proxy":
        return ProxyTarget(_endpoint(at, value, server=False))
    if key == "grpc":
        paths = _strings(at, value, 'import paths such as "myapp.rpc:add_services"')
        found = [_import(at.item(i), p) for i, p in enumerate(paths)]
        for i, (path, function) in enumerate(found):
            if not callable(function):
                at.item(i).fail(
                    f"{path} is {function!r}; expected a callable f(server)"
                    " that adds services to a grpc.Server"
                )
        return GrpcTarget(paths, tuple(f for _, f in found))  # type: ignore[misc]
    if key == "factory":
        return FactoryTarget(*_import(at, value))
    return _tls(at, base_dir, value)


# --------------------------------------------------------------------------
# Routes and the whole file


def _route(
    source: str,
    index: int,
    table: object,
    base_dir: Path,
    registry: MatcherRegistry,
) -> RouteConfig:
    anonymous = _Where(source, f"#{index + 1}")
    if not isinstance(table, dict):
        anonymous.at("route").wrong(table, "a [[route]] table")
    given = table.get("name")
    named = _Where(source, _quote(given)) if isinstance(given, str) else anonymous
    _check_keys(named, table, ROUTE_KEYS, "a [[route]] table")
    if "name" not in table:
        anonymous.fail('missing key "name"; every [[route]] needs a name')
    name = _string(anonymous.at("name"), table["name"])
    where = _Where(source, _quote(name))
    if "match" not in table:
        where.fail(
            'missing key "match"; expected a list of matchers, such as'
            ' match = ["http1", "http2"]'
        )
    items = table["match"]
    if isinstance(items, str | dict):
        items = [items]
    if not isinstance(items, list) or not items:
        where.at("match").wrong(
            items, 'a non-empty array of matchers, such as ["http1", "http2"]'
        )
    matchers = tuple(
        _matcher(where.at("match").item(i), item, registry)
        for i, item in enumerate(items)
    )
    targets = [key for key in TARGET_KEYS if key in table]
    if not targets:
        where.fail(
            f"missing target; expected exactly one of the keys {', '.join(TARGET_KEYS)}"
        )
    if len(targets) > 1:
        where.fail(
            f"two targets, {' and '.join(targets)}; expected exactly one of"
            f" {', '.join(TARGET_KEYS)}"
        )
    target = _target(where, base_dir, targets[0], table[targets[0]])
    return RouteConfig(name, matchers, target)


def _grpc_server(where: _Where, value: object) -> GrpcServerConfig:
    if not isinstance(value, dict):
        where.wrong(value, "a table such as [grpc_server] max_workers = 16")
    _check_keys(where, value, GRPC_SERVER_KEYS, "the grpc_server table")
    options = value.get("options", {})
    if not isinstance(options, dict):
        where.at("options").wrong(
            options,
            "a table of grpcio channel arguments, such as"
            ' { "grpc.max_receive_message_length" = 16777216 }',
        )
    for name, option in options.items():
        if isinstance(option, bool) or not isinstance(option, int | str):
            where.at("options").at(name).wrong(option, "an integer or a string")
    workers, rpcs, grace = (
        value.get(key) for key in ("max_workers", "max_concurrent_rpcs", "grace")
    )
    return GrpcServerConfig(
        max_workers=None
        if workers is None
        else _positive_integer(where.at("max_workers"), workers),
        max_concurrent_rpcs=None
        if rpcs is None
        else _positive_integer(where.at("max_concurrent_rpcs"), rpcs),
        grace=None if grace is None else _positive_number(where.at("grace"), grace),
        options=tuple(options.items()),
    )


def _route_name(where: _Where, value: object, names: Sequence[str]) -> str:
    name = _string(where, value)
    if name not in names:
        where.fail(
            f"no route is named {_quote(name)}; the routes are"
            f" {', '.join(names)}{did_you_mean(name, names)}"
        )
    return name


def _add_to_path(base_dir: Path) -> None:
    directory = str(base_dir)
    if directory not in sys.path:
        sys.path.append(directory)


def validate(
    table: Mapping[str, object],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    registry: MatcherRegistry | None = None,
    listen: Sequence[str] | None = None,
) -> Config:
    """Check a parsed config table; ``source`` names it in error messages.

    Relative paths (``static``, ``tls`` files) are taken from ``base_dir``,
    which is also appended to ``sys.path`` so that modules next to the file
    import.  ``listen``, if given, replaces the table's ``listen`` (as the
    ``--listen`` option does).
    """
    base_dir = (base_dir or Path.cwd()).resolve()
    registry = registry if registry is not None else matcher_registry()
    top = _Where(source)
    _check_keys(top, table, (*TOP_LEVEL_KEYS, *TOP_LEVEL_TABLES), "the top level")
    if listen is not None:
        listen_where = _Where("the command line", None, "--listen")
        found: object = list(listen)
    elif "listen" not in table:
        top.fail('missing key "listen"; expected listen = ["tcp:8080"]')
    else:
        listen_where, found = top.at("listen"), table["listen"]
    listen_on = _strings(listen_where, found, "server endpoint strings")
    for i, text in enumerate(listen_on):
        _endpoint(listen_where.item(i), text, server=True)
    sniff_timeout = _positive_number(
        top.at("sniff_timeout"), table.get("sniff_timeout", DEFAULT_SNIFF_TIMEOUT)
    )
    max_sniff_bytes = _positive_integer(
        top.at("max_sniff_bytes"),
        table.get("max_sniff_bytes", DEFAULT_MAX_SNIFF_BYTES),
    )
    tables = table.get("route")
    if tables is None:
        top.fail(
            "no [[route]] table; expected at least one, such as"
            ' [[route]] name = "web" match = ["http1"] web = "myapp.site:resource"'
        )
    if not isinstance(tables, list):
        top.at("route").wrong(tables, "[[route]] tables")
    _add_to_path(base_dir)
    routes: list[RouteConfig] = []
    for index, route_table in enumerate(tables):
        route = _route(source, index, route_table, base_dir, registry)
        if any(r.name == route.name for r in routes):
            _Where(source, _quote(route.name), "name").fail(
                f"two routes are named {_quote(route.name)}; names must be unique"
            )
        routes.append(route)
    names = [r.name for r in routes]
    if "routes" in table:
        listed = _strings(top.at("routes"), table["routes"], "route names")
        for i, name in enumerate(listed):
            _route_name(top.at("routes").item(i), name, names)
            if name in listed[:i]:
                top.at("routes").item(i).fail(
                    f"route {_quote(name)} is listed twice; expected each once"
                )
        listener_routes = listed
    else:
        listener_routes = tuple(names)
    for route in routes:
        if isinstance(route.target, TLSTarget):
            where = _Where(source, _quote(route.name), "tls.routes")
            for i, name in enumerate(route.target.routes):
                _route_name(where.item(i), name, names)
                if isinstance(route_by_name(routes, name).target, TLSTarget):
                    where.item(i).fail(
                        f"route {_quote(name)} terminates TLS itself; expected"
                        " routes for the decrypted connection (TLS in TLS is"
                        " not supported)"
                    )
    grpc_server = _grpc_server(top.at("grpc_server"), table.get("grpc_server", {}))
    on_timeout = table.get("on_timeout")
    if on_timeout is not None:
        on_timeout = _route_name(top.at("on_timeout"), on_timeout, listener_routes)
    used = set(listener_routes)
    for route in routes:
        if isinstance(route.target, TLSTarget):
            used.update(route.target.routes)
    for name in names:
        if name not in used:
            _log.warn(
                "txcmux: {source}: route {route!r} is used by no listener and"
                " no tls route",
                source=source,
                route=name,
            )
    return Config(
        source=source,
        base_dir=base_dir,
        listen=listen_on,
        sniff_timeout=sniff_timeout,
        max_sniff_bytes=max_sniff_bytes,
        on_timeout=on_timeout,
        routes=tuple(routes),
        listener_routes=tuple(listener_routes),
        grpc_server=grpc_server,
    )


def route_by_name(routes: Iterable[RouteConfig], name: str) -> RouteConfig:
    """The route of ``routes`` called ``name``."""
    for route in routes:
        if route.name == name:
            return route
    raise KeyError(name)


def parse(
    text: str,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    registry: MatcherRegistry | None = None,
    listen: Sequence[str] | None = None,
) -> Config:
    """Parse and check the TOML ``text`` of a config (see :func:`validate`)."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{source}: not valid TOML: {error}") from None
    return validate(
        table, source=source, base_dir=base_dir, registry=registry, listen=listen
    )


def load(
    path: str | Path,
    *,
    registry: MatcherRegistry | None = None,
    listen: Sequence[str] | None = None,
) -> Config:
    """Read, parse and check the config file at ``path`` (see :func:`validate`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(
            f"{path}: cannot read the config file: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"{path}: not valid TOML: the file is not UTF-8 ({error.reason}"
            f" at byte {error.start})"
        ) from None
    return parse(
        text,
        source=str(path),
        base_dir=path.resolve().parent,
        registry=registry,
        listen=listen,
    )
