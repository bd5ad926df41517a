"""What a config file may say, and reading one into a checked :class:`Config`.

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

The keys of each table are the ``*_KEYS`` mappings below: each key's check
and default, in the order messages list them.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from twisted.logger import Logger

from .._connections import Limits
from .._errors import ConfigurationError
from .._plugins import MatcherRegistry, matcher_registry
from .._proxy._parser import DEFAULT_V2_MAX_BYTES
from .._proxy._stage import MODES, ProxyPrelude, parse_networks
from ._endpoints import client_endpoint, server_endpoint
from ._matchers import MatcherConfig, matcher_entry
from ._values import (
    Key,
    Where,
    boolean,
    check_keys,
    check_values,
    did_you_mean,
    directory,
    import_path,
    importable_from,
    one_of,
    pem_file,
    positive_int,
    quote,
    seconds,
    table_of,
    text,
    texts,
)

_log = Logger(namespace="txcmux")

DEFAULT_SNIFF_TIMEOUT = 5.0
DEFAULT_MAX_SNIFF_BYTES = 16384
#: The connection limits of a listener when the file sets none (0: no limit).
#: Ten thousand open connections need as many file descriptors (raise
#: systemd's LimitNOFILE, 1024 by default); a thousand undecided ones is more
#: than honest traffic holds for the few milliseconds each takes to decide,
#: and past it the oldest undecided connection makes room for the new one,
#: so a flood of silent clients cannot keep honest ones out.
DEFAULT_LIMITS = Limits(max_connections=10000, max_sniffing=1000)
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_ADMIN_LISTEN = "tcp:9901:interface=127.0.0.1"


# -- what a checked config holds ---------------------------------------------


class _Target:
    """What a route's target key says, checked; ``kind`` is the key."""

    kind: ClassVar[str]
    shown: ClassVar[str]  # how the start-up log shows it

    def describe(self) -> str:
        """How the start-up log shows this target."""
        return self.shown.format(self=self)


@dataclass(frozen=True)
class WebTarget(_Target):
    """``web = "module:attr"``: an IResource or Site, or a callable giving one."""

    path: str
    obj: object
    kind, shown = "web", "web {self.path}"


@dataclass(frozen=True)
class StaticTarget(_Target):
    """``static = "dir"``: files served from a directory."""

    directory: Path
    kind, shown = "static", "static files in {self.directory}"


@dataclass(frozen=True)
class WsgiTarget(_Target):
    """``wsgi = "module:app"``: a WSGI app on a thread pool of ``threads``
    (None: WSGIApplication's default)."""

    path: str
    obj: object
    threads: int | None = None
    kind, shown = "wsgi", "WSGI app {self.path}{self.pool}"

    @property
    def pool(self) -> str:
        """`` (N threads)`` where the file says how many."""
        return "" if self.threads is None else f" ({self.threads} threads)"


@dataclass(frozen=True)
class AsgiTarget(_Target):
    """``asgi = "module:app"``: an ASGI 3 app on an asyncio loop of its own."""

    path: str
    obj: object
    lifespan: str = "auto"
    kind, shown = "asgi", "ASGI app {self.path}"


@dataclass(frozen=True)
class ProxyTarget(_Target):
    """``proxy = "client endpoint"``: a relay to a backend."""

    endpoint: str
    send_proxy: str | None = None
    send_proxy_checksum: bool = False
    idle_timeout: float | None = None  # None: the relay's default
    kind, shown = "proxy", "proxy to {self.endpoint}{self.sending}"

    @property
    def sending(self) -> str:
        """`` with PROXY v2`` when the relay sends a header, else nothing."""
        return "" if self.send_proxy is None else f" with PROXY {self.send_proxy}"


@dataclass(frozen=True)
class GrpcTarget(_Target):
    """``grpc = ["module:add_services", ...]``: the in-process gRPC server."""

    paths: tuple[str, ...]
    functions: tuple[Callable[[Any], object], ...]
    kind, shown = "grpc", "in-process gRPC ({self.listed})"

    @property
    def listed(self) -> str:
        """The import paths, comma-separated."""
        return ", ".join(self.paths)


@dataclass(frozen=True)
class FactoryTarget(_Target):
    """``factory = "module:attr"``: any protocol factory, or a callable giving one."""

    path: str
    obj: object
    kind, shown = "factory", "factory {self.path}"


@dataclass(frozen=True)
class TLSTarget(_Target):
    """``tls = {certificate, key, routes}``: TLS termination, then the routes.

    ``options`` are the other keys given: TLSTerminationFactory's keywords.
    """

    certificate: Path
    key: Path
    routes: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    kind, shown = "tls", "TLS ({self.certificate.name}) then {self.listed}"

    @property
    def listed(self) -> str:
        """The inner routes, as ``a | b``."""
        return " | ".join(self.routes)


Target = (
    WebTarget
    | StaticTarget
    | WsgiTarget
    | AsgiTarget
    | ProxyTarget
    | GrpcTarget
    | FactoryTarget
    | TLSTarget
)


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[route]]`` table, checked."""

    name: str
    matchers: tuple[MatcherConfig, ...]
    target: Target
    max_connections: int | None = None
    #: A web route's gRPC streams go here: "in-process" or a client endpoint.
    grpc_backend: str | None = None
    #: Whether a web route translates gRPC-Web calls for ``grpc_backend``.
    grpc_web: bool = False
    #: The page origins a gRPC-Web call may come from ("*": any).
    grpc_web_origins: tuple[str, ...] = ()
    #: A web route's deadline for each HTTP/1.1 header block (None: the
    #: WebFactory's default; 0: none).
    header_timeout: float | None = None

    def describe(self) -> str:
        """``name [matchers] -> target``, for the start-up log."""
        written = " | ".join(m.written for m in self.matchers)
        shown = f"{self.name} [{written}] -> {self.target.describe()}"
        if self.grpc_backend is not None:
            web = " and gRPC-Web" if self.grpc_web else ""
            shown += f", gRPC{web} -> {self.grpc_backend}"
        return shown


@dataclass(frozen=True)
class ListenerConfig:
    """One ``listen`` entry: the endpoint, and whether clients arrive behind a
    load balancer that sends the PROXY protocol (see docs/load-balancers.md).
    """

    endpoint: str
    proxy_protocol: str = "off"
    trusted_proxies: tuple[str, ...] = ()
    proxy_protocol_max_bytes: int = DEFAULT_V2_MAX_BYTES
    limits: Limits = DEFAULT_LIMITS

    def prelude(self) -> ProxyPrelude | None:
        """The stage that reads the PROXY header here, or None when it is off."""
        if self.proxy_protocol == "off":
            return None
        return ProxyPrelude(
            self.proxy_protocol, self.trusted_proxies, self.proxy_protocol_max_bytes
        )

    def describe(self) -> str:
        """The endpoint, and the PROXY mode when it is on, for the start-up log."""
        if self.proxy_protocol == "off":
            return self.endpoint
        trusted = ", ".join(self.trusted_proxies) or "any peer"
        return f"{self.endpoint} (PROXY {self.proxy_protocol} from {trusted})"


@dataclass(frozen=True)
class GrpcServerConfig:
    """The ``[grpc_server]`` table: how the in-process gRPC server runs.

    None means grpcio's (or txcmux.grpcserver's) default.
    """

    max_workers: int | None = None
    max_concurrent_rpcs: int | None = None
    grace: float | None = None
    options: tuple[tuple[str, object], ...] = ()
    #: ``services = [...]``: more add_services functions (for ``grpc_backend``).
    services: GrpcTarget | None = None


@dataclass(frozen=True)
class AdminConfig:
    """The ``[admin]`` table: where the metrics and status pages listen."""

    listen: str = DEFAULT_ADMIN_LISTEN


@dataclass(frozen=True)
class Config:
    """A checked config file.

    ``routes`` are every ``[[route]]`` in file order; ``listener_routes``
    names the ones the listeners use, in priority order (a route reached only
    through a ``tls`` route is in ``routes`` but not there).  ``warnings``
    are what checking logged (a route used nowhere, a plugin ignored);
    ``listen_where`` is where ``listen`` came from (the file, or --listen).
    ``listen`` holds the endpoint strings, ``listeners`` the same listeners
    with their PROXY protocol settings.
    """

    source: str
    base_dir: Path
    listen: tuple[str, ...]
    listeners: tuple[ListenerConfig, ...]
    sniff_timeout: float
    max_sniff_bytes: int
    on_timeout: str | None
    routes: tuple[RouteConfig, ...]
    listener_routes: tuple[str, ...]
    grpc_server: GrpcServerConfig = field(default_factory=GrpcServerConfig)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    admin: AdminConfig | None = None
    log_decisions: bool = False
    workers: int = 1
    warnings: tuple[str, ...] = ()
    listen_where: Where = field(default=Where("<config>", key="listen"), repr=False)

    def route(self, name: str) -> RouteConfig:
        """The route called ``name`` (KeyError if none)."""
        return route_by_name(self.routes, name)

    def summary(self) -> str:
        """``N listeners, M routes``, as ``--check`` prints it."""
        listeners, routes = len(self.listen), len(self.routes)
        return (
            f"{listeners} listener{'s' if listeners != 1 else ''},"
            f" {routes} route{'s' if routes != 1 else ''}"
        )


def route_by_name(routes: Iterable[RouteConfig], name: str) -> RouteConfig:
    """The route of ``routes`` called ``name``."""
    for route in routes:
        if route.name == name:
            return route
    raise KeyError(name)


# -- checks of the values that are particular to one key ---------------------


def _match(where: Where, value: object) -> tuple[MatcherConfig, ...]:
    items = [value] if isinstance(value, str | dict) else value
    if not isinstance(items, list) or not items:
        where.wrong(items, 'a non-empty array of matchers, such as ["http1", "http2"]')
    registry = where.registry or matcher_registry()
    return tuple(matcher_entry(where.item(i), m, registry) for i, m in enumerate(items))


def _app(where: Where, value: object, kind: str) -> tuple[str, object]:
    """A web app named ``"module:app"``, or ``"module:make_app()"`` to call.

    A WSGI app is a callable; an ASGI 3 app a coroutine function, or an
    object whose ``__call__`` is one (FastAPI, Starlette).
    """
    path = text(where, value)
    factory = path.endswith("()")
    path, app = import_path(where, path[:-2] if factory else path)
    if factory:
        if not callable(app):
            where.fail(f"{path} is {app!r}; expected a function returning the app")
        try:
            app = app()
        except Exception as error:
            where.fail(f"calling {path}() raised {type(error).__name__}: {error}")
        path += "()"
    is_async = inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        getattr(app, "__call__", None)  # noqa: B004 - the method, not callable()
    )
    if not callable(app):
        article = "an" if kind == "asgi" else "a"
        where.fail(f"{path} is {app!r}; expected {article} {kind.upper()} application")
    if kind == "wsgi" and is_async:
        where.fail(
            f"{path} is an ASGI application (it is async); serve it with"
            f' asgi = "{path}"'
        )
    if kind == "asgi" and not is_async:
        where.fail(
            f"{path} is not an ASGI 3 application (calling it is not async);"
            f' a WSGI app is served with wsgi = "{path}"'
        )
    return path, app


def _grpc(where: Where, value: object) -> GrpcTarget:
    paths = texts('import paths such as "myapp.rpc:add_services"')(where, value)
    functions: list[Callable[[Any], object]] = []
    for i, path in enumerate(paths):
        function = import_path(where.item(i), path)[1]
        if not callable(function):
            where.item(i).fail(
                f"{path} is {function!r}; expected a callable f(server)"
                " that adds services to a grpc.Server"
            )
        functions.append(function)
    return GrpcTarget(paths, tuple(functions))


def _alpn(where: Where, value: object) -> list[str]:
    names = 'protocol names such as "h2", "http/1.1"'
    return [] if value == [] else list(texts(names)(where, value))


_SNI_ENTRY_KEYS = {"certificate": Key(pem_file), "key": Key(pem_file)}


def _sni(where: Where, value: object) -> dict[str, tuple[Path, Path]]:
    pair = '{ certificate = "a.pem", key = "a.key" }'
    if not isinstance(value, dict) or not value:
        where.wrong(
            value, f'a table of server names, such as {{ "example.com" = {pair} }}'
        )
    entry = table_of(_SNI_ENTRY_KEYS, "an sni entry", pair)
    return {
        name: tuple(entry(where.at(quote(name)), files).values())
        for name, files in value.items()
    }


def _grpc_options(where: Where, value: object) -> tuple[tuple[str, object], ...]:
    if not isinstance(value, dict):
        where.wrong(
            value,
            "a table of grpcio channel arguments, such as"
            ' { "grpc.max_receive_message_length" = 16777216 }',
        )
    for name, option in value.items():
        if isinstance(option, bool) or not isinstance(option, int | str):
            where.at(name).wrong(option, "an integer or a string")
    return tuple(value.items())


def _trusted(where: Where, value: object) -> tuple[str, ...]:
    if value == []:
        return ()
    written = texts('addresses or CIDR blocks such as "10.0.0.0/8"')(where, value)
    for i, entry in enumerate(written):
        try:
            parse_networks([entry])
        except ConfigurationError:
            where.item(i).wrong(
                entry, 'an address or CIDR block such as "10.0.0.0/8", or "unix"'
            )
    return tuple(written)


def _limit(where: Where, value: object) -> int:
    """A connection limit: a positive integer, or 0 for none."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        where.wrong(value, "a number of connections such as 1000, or 0 for no limit")
    return value


def _v2_bound(where: Where, value: object) -> int:
    bound = positive_int(where, value)
    if bound < 16:
        where.wrong(value, "at least 16 (the fixed part of a PROXY v2 header)")
    return bound


def _listen(where: Where, value: object) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``listen``: endpoint strings, or tables that also set PROXY keys."""
    example = '"tcp:8080" or { endpoint = "tcp:8080", proxy_protocol = "required" }'
    items = [value] if isinstance(value, str | dict) else value
    if not isinstance(items, list) or not items:
        where.wrong(value, f"a non-empty array of server endpoint strings ({example})")
    entries = []
    for i, item in enumerate(items):
        here = where.item(i)
        if isinstance(item, dict):
            values = _LISTENER_TABLE(here, item)
            entries.append((values.pop("endpoint"), values))
        elif isinstance(item, str):
            entries.append((server_endpoint(here, item), {}))
        else:
            here.wrong(item, f"a server endpoint string or a table ({example})")
    return tuple(entries)


def _listener(
    top: Where,
    where: Where,
    endpoint: str,
    defaults: Mapping[str, Any],
    given: Mapping[str, Any],
) -> ListenerConfig:
    """One listener: its own PROXY keys, else the top level's, checked together."""
    chosen = {k: v for k, v in given.items() if v is not None}
    values = {k: v for k, v in defaults.items() if v is not None} | chosen
    limits = {
        key: (values.pop(key) or None)
        if key in values
        else getattr(DEFAULT_LIMITS, key)
        for key in LIMIT_KEYS
    }
    listener = ListenerConfig(endpoint, **values, limits=Limits(**limits))
    at = (where if "proxy_protocol" in chosen else top).at("proxy_protocol")
    try:
        listener.prelude()  # ProxyPrelude's own checks: "optional" needs trust
    except ConfigurationError as error:
        at.fail(str(error))
    if listener.proxy_protocol != "off" and endpoint.lower().startswith("haproxy:"):
        at.fail(
            f"{quote(endpoint)} already reads a PROXY header (Twisted's haproxy:"
            " endpoint); use either the haproxy: endpoint or proxy_protocol,"
            " not both"
        )
    return listener


def _record(
    make: Callable[..., Any], keys: Mapping[str, Key], what: str, example: str
) -> Any:
    """A table checked against ``keys``, made into ``make(**values)``."""
    check = table_of(keys, what, example)
    return lambda where, value: make(**check(where, value))


def _tls(**values: Any) -> TLSTarget:
    certificate, key, routes = (values.pop(k) for k in ("certificate", "key", "routes"))
    options = {k: v for k, v in values.items() if v is not None}
    return TLSTarget(certificate, key, routes, options)


def _routes(where: Where, value: object) -> tuple[RouteConfig, ...]:
    if not isinstance(value, list):
        where.wrong(value, "[[route]] tables")
    routes: list[RouteConfig] = []
    for index, table in enumerate(value):
        route = _route(where.in_route(f"#{index + 1}"), table)
        if any(r.name == route.name for r in routes):
            where.in_route(route.name).at("name").fail(
                f"two routes are named {quote(route.name)}; names must be unique"
            )
        routes.append(route)
    return tuple(routes)


def _route(anonymous: Where, table: object) -> RouteConfig:
    if not isinstance(table, dict):
        anonymous.at("route").wrong(table, "a [[route]] table")
    name = table.get("name")
    where = anonymous.in_route(name) if isinstance(name, str) and name else anonymous
    check_keys(where, table, ROUTE_KEYS, "a [[route]] table")
    targets = [key for key in TARGET_KEYS if key in table]
    if len(targets) != 1:
        count = "two" if len(targets) == 2 else len(targets)
        found = (
            f"{count} targets, {' and '.join(targets)}" if targets else "missing target"
        )
        where.fail(
            f"{found}; expected exactly one of the keys {', '.join(TARGET_KEYS)}"
        )
    values = check_values(where, table, ROUTE_KEYS)
    target = values[targets[0]]
    for key, kind in _TARGET_OPTIONS.items():
        if key in table and target.kind != kind:
            where.at(key).fail(
                f"{key} is a key of {kind} routes; this route's target is {target.kind}"
            )
    if isinstance(target, WsgiTarget) and values["wsgi_threads"] is not None:
        target = replace(target, threads=values["wsgi_threads"])
    if isinstance(target, AsgiTarget) and values["asgi_lifespan"] is not None:
        target = replace(target, lifespan=values["asgi_lifespan"])
    for key in ("send_proxy", "send_proxy_checksum"):
        if key in table and not isinstance(target, ProxyTarget):
            where.at(key).fail(
                f"only a proxy route sends a PROXY header; this route's target"
                f" is {target.kind}"
            )
    if values["send_proxy_checksum"] and values["send_proxy"] != "v2":
        where.at("send_proxy_checksum").fail(
            'a checksum is part of PROXY v2 only; expected send_proxy = "v2"'
        )
    if "idle_timeout" in table and not isinstance(target, ProxyTarget):
        where.at("idle_timeout").fail(
            f"idle_timeout is a key of proxy routes; this route's target is"
            f" {target.kind}"
        )
    if isinstance(target, ProxyTarget):
        target = replace(
            target,
            send_proxy=values["send_proxy"],
            send_proxy_checksum=values["send_proxy_checksum"],
            idle_timeout=values["idle_timeout"],
        )
    for key in _WEB_OPTIONS:
        if key in table and target.kind not in _WEB_KINDS:
            where.at(key).fail(
                f"{key} is a key of web, static, wsgi and asgi routes; this"
                f" route's target is {target.kind}"
            )
    grpc_web, origins = values["grpc_web"], values["grpc_web_origins"]
    if grpc_web and values["grpc_backend"] is None:
        where.at("grpc_web").fail(
            "gRPC-Web calls go to the route's grpc_backend; expected"
            ' grpc_backend = "in-process" or a client endpoint as well'
        )
    if "grpc_web_origins" in table and not grpc_web:
        where.at("grpc_web_origins").fail(
            "origins are for gRPC-Web calls; expected grpc_web = true as well"
        )
    return RouteConfig(
        values["name"],
        values["match"],
        target,
        max_connections=values["max_connections"] or None,
        grpc_backend=values["grpc_backend"],
        grpc_web=grpc_web,
        grpc_web_origins=origins,
        header_timeout=values["header_timeout"],
    )


def _grpc_backend(where: Where, value: object) -> str:
    if value == "in-process":
        return "in-process"
    if not isinstance(value, str):
        where.wrong(
            value,
            '"in-process" or a client endpoint string such as'
            ' "tcp:host=127.0.0.1:port=50051"',
        )
    return client_endpoint(where, value)


def _origins(where: Where, value: object) -> tuple[str, ...]:
    origins = texts('page origins such as "https://app.example.com", or "*"')(
        where, value
    )
    for i, origin in enumerate(origins):
        if origin != "*" and (
            "://" not in origin or origin.endswith("/") or origin.count("/") > 2
        ):
            where.item(i).wrong(
                origin, 'an origin: scheme://host[:port] with no path, or "*"'
            )
    return tuple(origins)


# -- the keys of each table --------------------------------------------------

TLS_KEYS = {
    "certificate": Key(pem_file),
    "key": Key(pem_file),
    "routes": Key(texts("route names")),
    "alpn": Key(_alpn, None),
    "sni": Key(_sni, None),
    "client_ca": Key(pem_file, None),
    "client_certificates": Key(one_of("required", "optional"), None),
    "handshake_timeout": Key(seconds, None),
}


def _seconds_or_zero(where: Where, value: object) -> float:
    """A timeout in seconds, or 0 for none."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return seconds(where, value)


TARGET_KEYS = ("web", "static", "wsgi", "asgi", "proxy", "grpc", "factory", "tls")
#: Keys that belong to one kind of target (the PROXY ones say so themselves).
_TARGET_OPTIONS = {"wsgi_threads": "wsgi", "asgi_lifespan": "asgi"}
#: Keys of the routes whose target serves HTTP (a WebFactory).
_WEB_OPTIONS = ("grpc_backend", "grpc_web", "grpc_web_origins", "header_timeout")
_WEB_KINDS = ("web", "static", "wsgi", "asgi")

ROUTE_KEYS = {
    "name": Key(text, missing='missing key "name"; every [[route]] needs a name'),
    "match": Key(
        _match,
        missing='missing key "match"; expected a list of matchers, such as'
        ' match = ["http1", "http2"]',
    ),
    "web": Key(lambda where, value: WebTarget(*import_path(where, value)), None),
    "static": Key(lambda where, value: StaticTarget(directory(where, value)), None),
    "wsgi": Key(lambda where, value: WsgiTarget(*_app(where, value, "wsgi")), None),
    "wsgi_threads": Key(positive_int, None),
    "asgi": Key(lambda where, value: AsgiTarget(*_app(where, value, "asgi")), None),
    "asgi_lifespan": Key(one_of("auto", "on", "off"), None),
    "proxy": Key(lambda where, value: ProxyTarget(client_endpoint(where, value)), None),
    "send_proxy": Key(one_of("v1", "v2"), None),
    "send_proxy_checksum": Key(boolean, False),
    "idle_timeout": Key(_seconds_or_zero, None),
    "max_connections": Key(_limit, None),
    "grpc_backend": Key(_grpc_backend, None),
    "grpc_web": Key(boolean, False),
    "grpc_web_origins": Key(_origins, ()),
    "header_timeout": Key(_seconds_or_zero, None),
    "grpc": Key(_grpc, None),
    "factory": Key(
        lambda where, value: FactoryTarget(*import_path(where, value)), None
    ),
    "tls": Key(
        _record(
            _tls,
            TLS_KEYS,
            "the tls table",
            '{ certificate = "server.pem", key = "server.key",'
            ' routes = ["grpc", "web"] }',
        ),
        None,
    ),
}

GRPC_SERVER_KEYS = {
    "max_workers": Key(positive_int, None),
    "max_concurrent_rpcs": Key(positive_int, None),
    "grace": Key(seconds, None),
    "options": Key(_grpc_options, ()),
    "services": Key(_grpc, None),
}

_LISTEN = texts("server endpoint strings", server_endpoint)

#: The PROXY protocol keys, at the top level (every listener's default) and
#: in a listener's table.
PROXY_KEYS = {
    "proxy_protocol": Key(one_of(*MODES), None),
    "trusted_proxies": Key(_trusted, None),
    "proxy_protocol_max_bytes": Key(_v2_bound, None),
}

#: The connection limits, at the top level (every listener's default) and
#: in a listener's table.
LIMIT_KEYS = {
    "max_connections": Key(_limit, None),
    "max_sniffing": Key(_limit, None),
    "max_connections_per_ip": Key(_limit, None),
}

LISTENER_KEYS = {
    "endpoint": Key(
        server_endpoint,
        missing='missing key "endpoint"; expected a table such as'
        ' { endpoint = "tcp:8080", proxy_protocol = "required" }',
    ),
    **PROXY_KEYS,
    **LIMIT_KEYS,
}

ADMIN_KEYS = {"listen": Key(server_endpoint, DEFAULT_ADMIN_LISTEN)}

_LISTENER_TABLE = table_of(
    LISTENER_KEYS,
    "a listen table",
    '{ endpoint = "tcp:8080", proxy_protocol = "required" }',
)

TOP_LEVEL_KEYS = {
    "listen": Key(
        _listen, missing='missing key "listen"; expected listen = ["tcp:8080"]'
    ),
    "sniff_timeout": Key(seconds, DEFAULT_SNIFF_TIMEOUT),
    "max_sniff_bytes": Key(positive_int, DEFAULT_MAX_SNIFF_BYTES),
    "on_timeout": Key(text, None),
    "routes": Key(texts("route names"), None),
    "route": Key(
        _routes,
        missing="no [[route]] table; expected at least one, such as"
        ' [[route]] name = "web" match = ["http1"] web = "myapp.site:resource"',
    ),
    "grpc_server": Key(
        _record(
            GrpcServerConfig,
            GRPC_SERVER_KEYS,
            "the grpc_server table",
            "[grpc_server] max_workers = 16",
        ),
        GrpcServerConfig(),
    ),
    "drain_timeout": Key(seconds, DEFAULT_DRAIN_TIMEOUT),
    "admin": Key(
        _record(
            AdminConfig,
            ADMIN_KEYS,
            "the admin table",
            '[admin] listen = "tcp:9901:interface=127.0.0.1"',
        ),
        None,
    ),
    "log_decisions": Key(boolean, False),
    "workers": Key(positive_int, 1),
    **PROXY_KEYS,
    **LIMIT_KEYS,
}

#: Every key, qualified the way docs/configuration.md names them.
DOCUMENTED_KEYS = (
    *TOP_LEVEL_KEYS,
    *(f"listen.{key}" for key in LISTENER_KEYS),
    *(f"route.{key}" for key in ROUTE_KEYS),
    *(f"route.tls.{key}" for key in TLS_KEYS),
    "route.match.type",
    *(f"grpc_server.{key}" for key in GRPC_SERVER_KEYS),
    *(f"admin.{key}" for key in ADMIN_KEYS),
)


# -- the whole file ----------------------------------------------------------


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
    and modules there import while the import paths are checked (sys.path
    is as it was afterwards).  ``listen``, if given, replaces the table's
    ``listen`` (as the ``--listen`` option does).
    """
    base_dir = (base_dir or Path.cwd()).resolve()
    registry = registry if registry is not None else matcher_registry()
    top = Where(source, base_dir=base_dir, registry=registry)
    keys = dict(TOP_LEVEL_KEYS)
    listen_where = top.at("listen")
    if listen is not None:
        listen_where = Where("the command line", key="--listen")
        keys["listen"] = Key(lambda where, value: (), ())
    check_keys(top, table, keys, "the top level")
    with importable_from(base_dir):
        values = check_values(top, table, keys)
    given: tuple[tuple[str, dict[str, Any]], ...]
    if listen is not None:
        given = tuple((e, {}) for e in _LISTEN(listen_where, list(listen)))
    else:
        given = values["listen"]
    defaults = {key: values[key] for key in (*PROXY_KEYS, *LIMIT_KEYS)}
    listeners = tuple(
        _listener(top, listen_where.item(i), endpoint, defaults, overrides)
        for i, (endpoint, overrides) in enumerate(given)
    )
    routes: tuple[RouteConfig, ...] = values["route"]
    names = [route.name for route in routes]
    listener_routes = values["routes"] or tuple(names)
    for i, name in enumerate(values["routes"] or ()):
        _route_name(top.at("routes").item(i), name, names)
        if name in listener_routes[:i]:
            top.at("routes").item(i).fail(
                f"route {quote(name)} is listed twice; expected each once"
            )
    used = set(listener_routes)
    for route in routes:
        if isinstance(route.target, TLSTarget):
            where = top.in_route(route.name).at("tls.routes")
            for i, name in enumerate(route.target.routes):
                _route_name(where.item(i), name, names)
                if isinstance(route_by_name(routes, name).target, TLSTarget):
                    where.item(i).fail(
                        f"route {quote(name)} terminates TLS itself; expected"
                        " routes for the decrypted connection (TLS in TLS is"
                        " not supported)"
                    )
            used.update(route.target.routes)
    if values["on_timeout"] is not None:
        _route_name(top.at("on_timeout"), values["on_timeout"], listener_routes)
    warnings = list(registry.warnings)
    for name in names:
        if name not in used:
            warnings.append(
                f"{source}: route {name!r} is used by no listener and no tls route"
            )
            _log.warn("txcmux: {message}", message=warnings[-1])
    return Config(
        source=source,
        base_dir=base_dir,
        listen=tuple(listener.endpoint for listener in listeners),
        listeners=listeners,
        sniff_timeout=values["sniff_timeout"],
        max_sniff_bytes=values["max_sniff_bytes"],
        on_timeout=values["on_timeout"],
        routes=routes,
        listener_routes=tuple(listener_routes),
        grpc_server=values["grpc_server"],
        drain_timeout=values["drain_timeout"],
        admin=values["admin"],
        log_decisions=values["log_decisions"],
        workers=values["workers"],
        warnings=tuple(warnings),
        listen_where=listen_where,
    )


def _route_name(where: Where, value: str, names: Sequence[str]) -> None:
    if value not in names:
        where.fail(
            f"no route is named {quote(value)}; the routes are"
            f" {', '.join(names)}{did_you_mean(value, names)}"
        )


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
        problem = toml_problem(text, str(error))
        raise ConfigurationError(f"{source}: not valid TOML: {problem}") from None
    return validate(
        table, source=source, base_dir=base_dir, registry=registry, listen=listen
    )


def toml_problem(text: str, message: str) -> str:
    """tomllib's ``message`` about ``text``, with the line where the mistake is.

    tomllib notices an array or table left open only where the next thing
    begins (often column 1 of a later line); the mistake is then at the end
    of the last line before it that holds anything::

        >>> found = "Unclosed array (at line 3, column 1)"
        >>> print(toml_problem("a = [1,\\n\\n[b]", found))
        Unclosed array, probably at the end of line 1: 'a = [1,' (noticed at ...)
    """
    lines = text.splitlines()
    found = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if found:
        line, column = int(found.group(1)), int(found.group(2))
        noticed = f"line {line}, column {column}"
    elif message.endswith(" (at end of document)"):
        line, column, noticed = len(lines) + 1, 1, "the end of the file"
    else:
        return message
    shown = f": {lines[line - 1]!r}" if line <= len(lines) else ""
    if column != 1 or not message.startswith("Unclosed"):
        return f"{message}{shown}"
    before = [
        n
        for n in range(1, min(line, len(lines) + 1))
        if lines[n - 1].strip() and not lines[n - 1].strip().startswith("#")
    ]
    if not before:
        return f"{message}{shown}"
    what = message[: message.index(" (at ")]
    return (
        f"{what}, probably at the end of line {before[-1]}: {lines[before[-1] - 1]!r}"
        f" (noticed at {noticed}{shown})"
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
