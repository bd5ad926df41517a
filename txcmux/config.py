"""Config files for ``twistd cmux``: load and check one, then build its service.

::

    from txcmux.config import load, make_service

    config = load("cmux.toml")        # ConfigurationError: one line, what and where
    print(config.summary())           # "1 listener, 3 routes"
    service = make_service(config)    # built, not started: give it a parent
    service.setServiceParent(application)

The format is described in ``docs/configuration.md``.  :func:`load` checks
everything that can be checked without running (keys, types, names, matcher
parameters, endpoint strings, import paths, files); :func:`make_service`
calls what the file names and builds the factories.  Matcher names come from
:mod:`txcmux.matchers` and from the ``txcmux.matchers`` entry-point group.
"""

from __future__ import annotations

from ._config._build import CmuxService, make_service
from ._config._matchers import MatcherConfig
from ._config._schema import (
    AdminConfig,
    Config,
    FactoryTarget,
    GrpcServerConfig,
    GrpcTarget,
    ListenerConfig,
    ProxyTarget,
    RouteConfig,
    StaticTarget,
    Target,
    TLSTarget,
    WebTarget,
    load,
    validate,
)
from ._config._schema import parse as loads
from ._errors import ConfigurationError, ListenError
from ._plugins import BUILTIN_MATCHERS, ENTRY_POINT_GROUP

__all__ = [
    "BUILTIN_MATCHERS",
    "ENTRY_POINT_GROUP",
    "AdminConfig",
    "CmuxService",
    "Config",
    "ConfigurationError",
    "FactoryTarget",
    "GrpcServerConfig",
    "GrpcTarget",
    "ListenError",
    "ListenerConfig",
    "MatcherConfig",
    "ProxyTarget",
    "RouteConfig",
    "StaticTarget",
    "TLSTarget",
    "Target",
    "WebTarget",
    "load",
    "loads",
    "make_service",
    "validate",
]
