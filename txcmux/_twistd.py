"""``twistd cmux``: the command-line options and the service they make.

::

    twistd -n cmux                           # the built-in demo on tcp:8080
    twistd -n cmux --config cmux.toml        # your routes
    twistd cmux --check --config cmux.toml   # check a file, start nothing

The twistd plugin (``twisted/plugins/txcmux_plugin.py``) names this module;
twistd imports it only when ``cmux`` is used.  The config is loaded, checked
and built while the options are parsed, so every mistake in it stops
start-up with one line on stderr and a non-zero exit status, before twistd
daemonizes.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.application.service import IService
from twisted.python import usage

from ._config_build import CmuxService, make_service
from ._config_schema import load
from ._errors import ConfigurationError

#: Exit status for a config that is wrong (as for other usage errors).
EXIT_CONFIG_ERROR = 1


class Options(usage.Options):
    """The options of ``twistd cmux``."""

    synopsis = "[--config FILE] [--listen ENDPOINT]... [--check] [--port-file FILE]"
    longdesc = (
        "Serve many protocols on one port: HTTP/1.1, HTTP/2, gRPC, TLS and any"
        " Twisted protocol, chosen by each connection's first bytes. Without"
        " --config, run the built-in demo (a web page and gRPC services) on"
        " tcp:8080. The config file format is described in"
        " docs/configuration.md."
    )
    optParameters = [
        ["config", "c", None, "The TOML config file to run."],
        [
            "port-file",
            None,
            None,
            "Once listening, write each listener's port (one per line) to this"
            " file; handy with tcp:0.",
        ],
    ]
    optFlags = [
        [
            "check",
            None,
            "Check the config file (and build what it names, starting nothing),"
            " print one line and exit.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self.service: CmuxService | None = None

    def opt_listen(self, endpoint: str) -> None:
        """Listen here instead of the config's listen (repeatable): tcp:9000"""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        """Load, check and build the config; report a mistake and exit."""
        path = self["config"]
        listen = self["listen"] or None
        if self["check"] and path is None:
            raise usage.UsageError("--check needs --config FILE")
        try:
            if path is None:
                from .demo import config as demo_config

                config = demo_config(listen)
            else:
                config = load(path, listen=listen)
            self.service = make_service(config, port_file=self["port-file"])
        except ConfigurationError as error:
            _fail(str(error))
        if self["check"]:
            print(f"{path}: OK, {config.summary()}")
            raise SystemExit(0)


def _fail(message: str) -> NoReturn:
    """Print one line to stderr and exit: no usage text, no traceback."""
    print(f"twistd cmux: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG_ERROR)


def makeService(options: Any) -> IService:
    """The service ``twistd cmux`` runs, built by :meth:`Options.postOptions`."""
    service = options.service
    assert service is not None, "Options.postOptions builds the service"
    return service  # type: ignore[no-any-return]
