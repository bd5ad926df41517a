"""``twistd cmux``: the command-line options and the service they make.

::

    twistd -n cmux                           # the built-in demo on 127.0.0.1:8080
    twistd -n cmux --config cmux.toml        # your routes
    twistd cmux --check --config cmux.toml   # check a file, start nothing

The twistd plugin (``twisted/plugins/txcmux_plugin.py``) names this module;
twistd imports it only when ``cmux`` is used.  The config is loaded, checked
and built while the options are parsed, and the listeners listen while
twistd makes the application, so every mistake in the file and every
listener that cannot listen stops start-up with one line on stderr and exit
status 1, before twistd writes its pid file or daemonizes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from .._errors import ConfigurationError, ListenError
from ._build import CmuxService, make_service
from ._schema import Config, load
from ._workers import Supervisor, WorkerSetup

_log = Logger(namespace="txcmux")

#: Exit status for a config that is wrong (as for other usage errors).
EXIT_CONFIG_ERROR = 1


class Options(usage.Options):
    """The options of ``twistd cmux``."""

    synopsis = "[--config FILE] [--listen ENDPOINT]... [--check] [--port-file FILE]"
    longdesc = (
        "Serve many protocols on one port: HTTP/1.1, HTTP/2, gRPC, TLS and any"
        " Twisted protocol, chosen by each connection's first bytes. Without"
        " --config, run the built-in demo (a web page and gRPC services) on"
        " 127.0.0.1:8080 (--listen tcp:8080 opens it to other hosts). The"
        " config file format is described in docs/configuration.md."
    )
    optParameters = [
        ["config", "c", None, "The TOML config file to run."],
        ["worker", None, None, "(Set by the supervisor of workers = N.)"],
        ["worker-admin", None, None, "(Set by the supervisor of workers = N.)"],
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
        self.service: CmuxService | Supervisor | None = None

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
                from ..demo import LOOPBACK_NOTE
                from ..demo import config as demo_config

                config = demo_config(listen)
                if listen is None:
                    _log.info("txcmux: {note}", note=LOOPBACK_NOTE)
            else:
                config = load(path, listen=listen)
            if self["worker"] is not None:
                worker = WorkerSetup(int(self["worker"]), self["worker-admin"])
                self.service = make_service(config, listen=listen, worker=worker)
            elif config.workers > 1 and not self["check"]:
                self.service = self._supervisor(config, path, listen)
            else:
                self.service = make_service(
                    config, port_file=self["port-file"], listen=listen
                )
        except ConfigurationError as error:
            _fail(str(error))
        if self["check"]:
            for warning in config.warnings:
                print(f"twistd cmux: warning: {warning}", file=sys.stderr)
            print(f"{path}: OK, {config.summary()}")
            raise SystemExit(0)
        if path is not None and str(config.base_dir) not in sys.path:
            # The running service may import from next to its file at any time.
            sys.path.append(str(config.base_dir))

    def _supervisor(
        self, config: Config, path: str | None, listen: list[str] | None
    ) -> Supervisor:
        """The supervisor of ``workers = N``, started the way twistd was."""
        from twisted.internet import reactor

        twistd = getattr(self, "parent", None)
        if path is None:
            raise ConfigurationError("workers needs --config FILE")
        if twistd is not None and not twistd["nodaemon"]:
            raise ConfigurationError(
                f'{path}: key "workers": the workers log to twistd\'s output:'
                " run twistd -n (in the foreground, as systemd does)"
            )
        # Build it once here, as --check does, so that what only building
        # shows (an unreadable certificate) stops start-up in one line
        # instead of failing every worker.
        make_service(config, listen=listen)
        passed = []
        if twistd is not None and twistd.get("logger"):
            passed.append(f"--logger={twistd['logger']}")
        return Supervisor(
            config,
            reactor=reactor,
            path=str(Path(path).resolve()),
            listen=listen,
            port_file=self["port-file"],
            twistd_options=passed,
        )


def _fail(message: str) -> NoReturn:
    """Print one line to stderr and exit: no usage text, no traceback."""
    print(f"twistd cmux: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG_ERROR)


def makeService(options: Any) -> IService:
    """The service ``twistd cmux`` runs, built by :meth:`Options.postOptions`.

    It listens here, while twistd makes the application.  twistd writes its
    pid file, and as a daemon forks (the parent waiting for the child to
    report), before it starts any service; a listener failing in
    privilegedStartService would leave the pid file behind, and kill the
    daemon's child before it reports.  Listening now, an address in use is
    one line on stderr and exit status 1 in both modes, with no pid file;
    the daemon inherits the listening sockets across the fork.
    """
    service: CmuxService | Supervisor | None = options.service
    assert service is not None, "Options.postOptions builds the service"
    try:
        service.listen_now()
    except ListenError as error:
        _fail(str(error))
    service.handle_signals()
    return service
