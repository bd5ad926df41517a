"""The matcher names a config file may use: built-ins and entry-point plugins.

A config file names matchers (``match = ["http1", "ssh"]``); this module
says which function each name stands for::

    >>> from txcmux._plugins import matcher_registry
    >>> registry = matcher_registry()
    >>> registry.get("ssh").function().name
    'ssh'
    >>> registry.get("redis").source
    'entry point redis = txcmux.matchers._extra:redis (txcmux)'

Built-in names are the matcher functions of :mod:`txcmux.matchers` listed in
:data:`BUILTIN_MATCHERS`.  Any installed distribution may add names through
the ``txcmux.matchers`` entry-point group; each entry point names a callable
that returns a :class:`~txcmux.matchers.Matcher`.  A built-in name always
wins over a plugin of the same name (a warning is logged), so installing a
package never changes what an existing config file means.  Two plugins that
claim one name make that name ambiguous: using it is an error naming both.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from twisted.logger import Logger

from . import matchers as _matchers
from ._errors import ConfigurationError

_log = Logger(namespace="txcmux")

ENTRY_POINT_GROUP = "txcmux.matchers"

#: The matcher names that need no plugin, each a function of txcmux.matchers.
BUILTIN_MATCHERS: Mapping[str, Callable[..., _matchers.Matcher]] = {
    "any": _matchers.any,
    "prefix": _matchers.prefix,
    "http1": _matchers.http1,
    "http1_fast": _matchers.http1_fast,
    "http1_header": _matchers.http1_header,
    "http2": _matchers.http2,
    "http2_header": _matchers.http2_header,
    "grpc": _matchers.grpc,
    "tls": _matchers.tls,
    "ssh": _matchers.ssh,
    "regex": _matchers.regex,
    "websocket": _matchers.websocket,
    "socks4": _matchers.socks4,
    "socks5": _matchers.socks5,
    "mqtt": _matchers.mqtt,
    "xmpp": _matchers.xmpp,
    "openvpn": _matchers.openvpn,
    "rdp": _matchers.rdp,
    "amqp": _matchers.amqp,
    "remote_ip": _matchers.remote_ip,
    "local_ip": _matchers.local_ip,
    "local_port": _matchers.local_port,
    "all_of": _matchers.all_of,
    "any_of": _matchers.any_of,
    # not is a Python keyword: the function is not_, the config name "not".
    "not": _matchers.not_,
}


@dataclass(frozen=True)
class MatcherSource:
    """One name a config file may use, and where its function comes from.

    ``load`` imports the function (entry points are imported only when a
    config uses them, so a broken plugin breaks only the configs using it).
    """

    name: str
    source: str
    load: Callable[[], Callable[..., _matchers.Matcher]]

    def function(self) -> _matchers.Matcher:
        """Call the matcher function without parameters (for doctests)."""
        return self.load()()


class MatcherRegistry:
    """Every matcher name known in this environment.

    ``warnings`` holds what building it logged (a plugin ignored, a name
    claimed twice), for ``twistd cmux --check`` to print.
    """

    def __init__(self, sources: Iterable[MatcherSource]) -> None:
        self._sources: dict[str, MatcherSource] = {}
        self._ambiguous: dict[str, list[MatcherSource]] = {}
        self.warnings: list[str] = []
        for source in sources:
            self._add(source)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        _log.warn("txcmux: {message}", message=message)

    def _add(self, source: MatcherSource) -> None:
        if source.name in self._ambiguous:
            self._ambiguous[source.name].append(source)
            return
        known = self._sources.get(source.name)
        if known is None:
            self._sources[source.name] = source
        elif known.source == "built-in":
            self._warn(
                f"matcher plugin {source.source} is ignored: {source.name!r} is a"
                " built-in matcher name, and built-ins win"
            )
        elif known.source != source.source:
            self._warn(
                f"matcher name {source.name!r} is claimed by both {known.source}"
                f" and {source.source}; configs using it will be refused"
            )
            del self._sources[source.name]
            self._ambiguous[source.name] = [known, source]

    def names(self) -> list[str]:
        """Every usable name, sorted."""
        return sorted(self._sources)

    def get(self, name: str) -> MatcherSource:
        """The source of ``name``; KeyError if unknown, ConfigurationError if
        two plugins claim it."""
        if name in self._ambiguous:
            claims = " and ".join(s.source for s in self._ambiguous[name])
            raise ConfigurationError(
                f"matcher name {name!r} is claimed by {claims};"
                " uninstall one of the packages"
            )
        return self._sources[name]


def _entry_point_source(entry_point: importlib.metadata.EntryPoint) -> MatcherSource:
    dist = entry_point.dist.name if entry_point.dist is not None else "unknown"
    described = f"entry point {entry_point.name} = {entry_point.value} ({dist})"

    def load() -> Callable[..., _matchers.Matcher]:
        try:
            function = entry_point.load()
        except Exception as error:
            raise ConfigurationError(
                f"matcher plugin {described} does not load:"
                f" {type(error).__name__}: {error}"
            ) from None
        if not callable(function):
            raise ConfigurationError(
                f"matcher plugin {described} is {function!r}, not a callable"
                " returning a matcher"
            )
        return function  # type: ignore[no-any-return]

    return MatcherSource(entry_point.name, described, load)


def _builtin_source(
    name: str, function: Callable[..., _matchers.Matcher]
) -> MatcherSource:
    return MatcherSource(name, "built-in", lambda: function)


def build_registry(
    entry_points: Iterable[importlib.metadata.EntryPoint],
) -> MatcherRegistry:
    """A registry of the built-ins and ``entry_points`` (sorted by name)."""
    sources = [_builtin_source(n, f) for n, f in BUILTIN_MATCHERS.items()]
    unique = {(ep.name, ep.value): ep for ep in entry_points}
    sources += [_entry_point_source(ep) for _, ep in sorted(unique.items())]
    return MatcherRegistry(sources)


def matcher_registry() -> MatcherRegistry:
    """The registry for the distributions installed now (read at each call,
    so a package installed while the process runs is seen)."""
    return build_registry(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
