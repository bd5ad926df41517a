"""Endpoint strings of a config file, checked and explained in the user's terms.

Checking parses a string against a reactor that can do nothing, so it never
listens or connects.  When Twisted refuses a string, its error names its own
internals (``_parseTCP() got an unexpected keyword argument 'bogus'``); the
message here says which argument is wrong and what that endpoint type takes::

    >>> from txcmux._config._values import Where
    >>> from txcmux import ConfigurationError
    >>> try:
    ...     server_endpoint(Where("x.toml").at("listen"), "tcp:8080:bogus=1")
    ... except ConfigurationError as error:
    ...     print(str(error).replace(": ", ":\\n", 3).replace("; ", ";\\n"))
    x.toml:
    key "listen":
    "tcp:8080:bogus=1" is not a valid Twisted server endpoint string:
    unknown argument "bogus" for tcp, which takes port, interface, backlog;
    expected something like "tcp:8080"

A colon ends an argument, so one inside a value must be written ``\\:``
(``tcp6:8080:interface=\\:\\:1``); a value that looks cut at a colon is
pointed out as such.  ``systemd:`` sockets are looked up only when the
service is built (:func:`listen_endpoint`), as they are inherited at start.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import getPlugins
from zope.interface import implementer

from ._values import Where, did_you_mean, quote, text

#: The arguments each endpoint type of Twisted takes, for messages.
SERVER_ARGUMENTS = {
    "tcp": "port interface backlog",
    "tcp6": "port interface backlog",
    "unix": "address mode backlog lockfile",
    "ssl": "port privateKey certKey sslmethod interface backlog extraCertChain"
    " dhParameters",
    "systemd": "domain index name",
}
CLIENT_ARGUMENTS = {
    "tcp": "host port timeout bindAddress",
    "unix": "path timeout lockfile",
    "ssl": "host port timeout bindAddress certKey privateKey caCertsDir hostname",
    "tls": "host port timeout bindAddress certificate privateKey trustRoots endpoint",
}
#: Endpoint types whose arguments are another endpoint string.
WRAPPERS = ("haproxy",)


@implementer(IReactorPluggableNameResolver)
class _InertReactor:
    """A stand-in reactor: endpoint constructors store it and never use it."""

    nameResolver = None

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        """Part of IReactorPluggableNameResolver; never called here."""
        raise NotImplementedError("an inert reactor resolves nothing")


def endpoint_types(server: bool) -> list[str]:
    """The endpoint types Twisted knows here, plugins included."""
    plugins: Any = getPlugins(
        IStreamServerEndpointStringParser
        if server
        else IStreamClientEndpointStringParserWithReactor
    )
    return ["tcp", "unix", "ssl", *(plugin.prefix for plugin in plugins)]


def segments(description: str) -> list[tuple[str | None, str]]:
    """``(keyword or None, value)`` for each argument, as Twisted splits them."""
    found: list[tuple[str | None, str]] = []
    keyword: str | None = None
    current = ""
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current += next(characters, "")
        elif character == ":":
            found.append((keyword, current))
            keyword, current = None, ""
        elif character == "=" and keyword is None:
            keyword, current = current, ""
        else:
            current += character
    found.append((keyword, current))
    return found


def _cut_at_colon(description: str, refused: bool) -> str | None:
    """``key=\\:\\:1`` if a keyword's value seems cut at unescaped colons."""
    parts = segments(description)
    for i, (keyword, value) in enumerate(parts):
        following = []
        for later_keyword, later in parts[i + 1 :]:
            if later_keyword is not None:
                break
            following.append(later)
        if keyword is None or not following:
            continue
        if refused or value == "" or "" in following:
            whole = ":".join([value, *following])
            return f"{keyword}={whole.replace(':', chr(92) + ':')}"
    return None


def _inner(description: str) -> str:
    """The endpoint string a wrapper such as ``haproxy:`` wraps, or itself."""
    kind, _, rest = description.partition(":")
    return _inner(rest) if kind.lower() in WRAPPERS and rest else description


def _explain(description: str, error: Exception, server: bool) -> str:
    """What is wrong with ``description``, given what Twisted raised for it."""
    inner = _inner(description)
    kind = inner.partition(":")[0].lower()
    takes = (SERVER_ARGUMENTS if server else CLIENT_ARGUMENTS).get(kind, "")
    accepted = f"{kind}, which takes {', '.join(takes.split())}" if takes else kind
    message = str(error)
    unknown = re.search(
        r"(?:unexpected keyword argument |arguments present', \[)'(\w+)'", message
    )
    if unknown:
        return f"unknown argument {quote(unknown.group(1))} for {accepted}"
    if re.search("missing \\d+ required positional", message):
        names = re.findall(r"'(\w+)'", message.partition(":")[2])
        return f"missing {' and '.join(map(quote, names))} for {accepted}"
    cut = _cut_at_colon(inner, refused=isinstance(error, TypeError))
    if cut is not None:
        return (
            f"the value of {quote(cut.partition('=')[0])} seems cut at a colon;"
            f' write a colon inside a value as "\\:", as in {cut}'
        )
    twice = re.search(r"multiple values for argument '(\w+)'", message)
    if twice:
        return f"argument {quote(twice.group(1))} is given twice, for {accepted}"
    if "positional argument" in message:
        return f"too many arguments for {accepted}"
    return f"{type(error).__name__}: {message}"


def _check(where: Where, value: object, server: bool) -> str:
    description = text(where, value)
    kind = "server" if server else "client"
    example = "tcp:8080" if server else "tcp:host=127.0.0.1:port=22"
    endpoint_type = description.split(":", 1)[0]
    types = endpoint_types(server)
    if endpoint_type.lower() not in {t.lower() for t in types}:
        where.fail(
            f"{quote(description)} is not a Twisted {kind} endpoint string: unknown"
            f" endpoint type {quote(endpoint_type)}; expected one of"
            f" {', '.join(types)}{did_you_mean(endpoint_type, types)},"
            f" as in {quote(example)}"
        )
    problem = None
    try:
        if server:
            endpoints.serverFromString(_InertReactor(), description)  # type: ignore[no-untyped-call]
        else:
            endpoints.clientFromString(_InertReactor(), description)  # type: ignore[no-untyped-call]
    except (IndexError, KeyError) as error:
        # systemd's parser looks the inherited socket up: that is for start-up.
        if _inner(description).partition(":")[0].lower() != "systemd":
            problem = _explain(description, error, server)
    except Exception as error:
        problem = _explain(description, error, server)
    else:
        cut = _cut_at_colon(description, refused=False)
        if cut is not None:
            problem = _explain(description, ValueError(), server)
    if problem is not None:
        where.fail(
            f"{quote(description)} is not a valid Twisted {kind} endpoint string:"
            f" {problem}; expected something like {quote(example)}"
        )
    return description


def server_endpoint(where: Where, value: object) -> str:
    """A Twisted server endpoint string (``listen``), parsed, not listened on."""
    return _check(where, value, server=True)


def client_endpoint(where: Where, value: object) -> str:
    """A Twisted client endpoint string (``proxy``), parsed, not connected."""
    return _check(where, value, server=False)


def listen_endpoint(
    where: Where, reactor: Any, description: str
) -> IStreamServerEndpoint:
    """The endpoint ``description`` names, on ``reactor``, to listen on.

    A ``systemd:`` socket that was not passed to this process is an error
    saying which was asked for and what was passed.
    """
    try:
        return endpoints.serverFromString(reactor, description)  # type: ignore[no-any-return,no-untyped-call]
    except (IndexError, KeyError):
        where.fail(
            f"{quote(description)}: {_no_inherited_socket(reactor, description)}"
        )


def _inherited_sockets(reactor: Any) -> int:
    """How many listening sockets Twisted's systemd endpoints found inherited."""
    for index in range(1024):
        try:
            endpoints.serverFromString(reactor, f"systemd:domain=INET:index={index}")  # type: ignore[no-untyped-call]
        except IndexError:
            return index
    return 1024


def _no_inherited_socket(reactor: Any, description: str) -> str:
    arguments = dict(segments(_inner(description)))
    count = _inherited_sockets(reactor)
    names = os.environ.get("LISTEN_FDNAMES")
    asked = (
        f"index {arguments['index']}"
        if "index" in arguments
        else f"the name {quote(arguments.get('name') or '')}"
    )
    passed = f"{count} socket{'' if count == 1 else 's'}"
    if names:
        passed += f" (LISTEN_FDNAMES={names})"
    foreign = os.environ.get("LISTEN_PID")
    if foreign is not None and foreign != str(os.getpid()):
        passed += f"; LISTEN_PID is {foreign}, not this process ({os.getpid()})"
    return (
        f"no socket was passed for {asked}: this process was passed {passed}."
        " systemd passes sockets in LISTEN_FDS, with LISTEN_PID and"
        " LISTEN_FDNAMES, which Twisted needs as well (systemd-socket-activate"
        " sets it only with --fdname)"
    )
