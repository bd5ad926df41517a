"""``workers = N``: one supervisor process and N workers sharing its sockets.

With ``workers`` above 1, ``twistd -n cmux`` becomes a supervisor: it opens
every listener itself (so an address in use still stops start-up in one
line), never accepts on them, and starts N worker processes, each
``twistd -n cmux --config FILE --worker I`` with the listening sockets
passed down as file descriptors 4, 5, ... (one per listener, in order).
Each worker adopts them (:class:`AdoptedEndpoint`) and serves as a single
process would; the kernel hands each new connection to one of them.  This
is the arrangement of nginx and gunicorn: one socket, several acceptors.

The supervisor

- restarts a worker that exits, after 0.5 s, then twice as long after
  each exit that follows within 10 s of a start, up to 30 s;
- forwards SIGHUP (each worker reloads the file) and SIGTERM (each
  drains; a second SIGTERM cuts the drain short), and exits once every
  worker has;
- with an ``[admin]`` table, serves the admin listener itself: each
  worker's admin site listens on a UNIX socket of the supervisor's private
  directory, and the supervisor's ``/metrics`` gathers them, each sample
  labelled ``worker="I"``, beside its own ``txcmux_worker_up`` and
  ``txcmux_worker_restarts_total``; ``/status.json`` lists the workers with
  their own status; ``/readyz`` is 200 while every worker is ready.

A worker learns of its supervisor through two pipes: it reads file
descriptor 0 (end of file: the supervisor is gone, so it drains and
exits) and writes one line per event to descriptor 3 (``ready``,
``reloaded``, ``refused``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application import service
from twisted.internet import defer, error, fdesc, protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .._compat import clear_sigterm_exit
from .._errors import ListenError
from .._process import install_signal_handler, notify_systemd
from ._endpoints import listen_endpoint
from ._schema import Config
from ._values import Where

_log = Logger(namespace="txcmux")

#: The worker's end of the pipe it reports on.
STATUS_FD = 3
#: The first listening socket passed to a worker (then one per listener).
FIRST_LISTENER_FD = 4
#: Environment variables a worker must not see: its sockets come from the
#: supervisor, and only the supervisor talks to systemd.
_SUPERVISOR_ONLY = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")

_FIRST_DELAY, _LONGEST_DELAY, _STEADY = 0.5, 30.0, 10.0


# -- in the worker -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker process was started by its supervisor."""

    index: int
    #: The admin site's UNIX socket, if the config has an ``[admin]`` table.
    admin_socket: str | None = None

    def fd(self, listener: int) -> int:
        """The file descriptor of listener number ``listener``."""
        return FIRST_LISTENER_FD + listener

    def report(self, line: str) -> None:
        """Tell the supervisor ``line`` (``ready``, ``reloaded``, ...)."""
        # If the supervisor is gone, the stdin watch stops this worker.
        with contextlib.suppress(OSError):
            os.write(STATUS_FD, line.encode("utf-8", "replace") + b"\n")

    def watch_supervisor(self, reactor: Any, gone: Any) -> None:
        """Call ``gone()`` once the supervisor's end of stdin closes."""
        reactor.addReader(_StdinWatch(reactor, gone))


class _StdinWatch(FileDescriptor):
    """Reads (and drops) stdin until end of file, then calls ``gone``."""

    def __init__(self, reactor: Any, gone: Any) -> None:
        super().__init__(reactor)
        fdesc.setNonBlocking(0)  # type: ignore[no-untyped-call]
        self._gone = gone

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Any:
        return fdesc.readFromFD(0, lambda data: None)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self._gone()  # (also when the reactor stops: ``gone`` tells apart)


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A server endpoint that listens on an inherited listening socket.

    ``haproxy`` wraps the factory as Twisted's ``haproxy:`` endpoint does.
    The descriptor is adopted once (the reactor keeps a duplicate, and
    this one is closed).
    """

    def __init__(self, reactor: Any, fd: int, haproxy: bool) -> None:
        self.reactor = reactor
        self.fd = fd
        self.haproxy = haproxy

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        try:
            with socket.socket(fileno=os.dup(self.fd)) as probe:
                family = probe.family
            if self.haproxy:
                from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

                factory = HAProxyWrappingFactory(factory)  # type: ignore[no-untyped-call]
            port = self.reactor.adoptStreamPort(self.fd, family, factory)
            os.close(self.fd)
        except Exception:
            return defer.fail()
        return defer.succeed(port)


# -- in the supervisor ---------------------------------------------------------


@dataclass
class Worker:
    """One worker process, as the supervisor sees it."""

    index: int
    process: Any = None
    pid: int | None = None
    state: str = "starting"  # starting, ready, stopped
    started_at: float = 0.0
    restarts: int = 0
    exits_in_a_row: int = 0
    last_exit: str | None = None
    last_reload: str | None = None
    restart: Any = None  # the pending restart's DelayedCall
    ended: defer.Deferred[None] = field(default_factory=defer.Deferred)


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, worker: Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self._lines = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != STATUS_FD:
            return
        self._lines += data
        *lines, self._lines = self._lines.split(b"\n")
        for line in lines:
            self.supervisor.worker_said(self.worker, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self.worker, reason)


class _Listening(protocol.Factory):
    """The factory of the supervisor's own ports: they never accept."""

    noisy = False


class Supervisor(service.Service):
    """The supervisor process of ``workers = N`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        reactor: Any,
        path: str,
        listen: Sequence[str] | None,
        port_file: str | None,
        twistd_options: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.path = path
        self._listen = list(listen or ())
        self.port_file = port_file
        self.twistd_options = list(twistd_options)
        self.workers = [Worker(i) for i in range(config.workers)]
        self.ports: list[IListeningPort] = []
        self.state = "starting"
        self.started_at = time.time()
        self.runtime = Path(tempfile.mkdtemp(prefix="txcmux-workers-"))
        self.admin_port: IListeningPort | None = None
        self._stopped: defer.Deferred[None] | None = None

    # -- start -----------------------------------------------------------------

    def listen_now(self) -> None:
        """Open every listener (not accepting); ListenError if one cannot."""
        for i, description in enumerate(self.config.listen):
            where = self.config.listen_where.item(i)
            endpoint = listen_endpoint(where, self.reactor, description)
            failed: list[Failure] = []
            got: list[IListeningPort] = []
            endpoint.listen(_Listening()).addCallbacks(got.append, failed.append)
            if failed:
                self._close_ports()
                raise ListenError(
                    f"cannot listen on {description}: {failed[0].getErrorMessage()}"
                )
            [port] = got
            self.ports.append(port)
            port.stopReading()  # type: ignore[attr-defined]
            if not isinstance(port.factory, _Listening) and not description.startswith(  # type: ignore[attr-defined]
                "haproxy:"
            ):
                self._close_ports()
                raise ListenError(
                    f"workers: cannot share {description} with worker processes;"
                    " only tcp, tcp6, unix, systemd and haproxy: listeners can"
                    " be (terminate TLS with a tls route instead)"
                )
        if self.config.admin is not None:
            from ._site import admin_site

            where = Where(self.config.source).at("admin.listen")
            endpoint = listen_endpoint(where, self.reactor, self.config.admin.listen)
            failed = []
            ports: list[IListeningPort] = []
            endpoint.listen(admin_site(_Gathered(self))).addCallbacks(
                ports.append, failed.append
            )
            if failed:
                self._close_ports()
                raise ListenError(
                    f"cannot listen on {self.config.admin.listen}:"
                    f" {failed[0].getErrorMessage()}"
                )
            self.admin_port = ports[0]

    def _close_ports(self) -> None:
        for port in self.ports:
            port.stopListening()
        self.ports = []

    def handle_signals(self) -> None:
        """SIGHUP goes to every worker."""
        install_signal_handler(signal.SIGHUP, self.reactor, self.reload)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.reactor.addSystemEventTrigger(
            "after", "shutdown", clear_sigterm_exit, self.reactor
        )
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        worker.restart = None
        worker.state = "starting"
        worker.started_at = time.time()
        worker.ended = defer.Deferred()
        arguments = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            *self.twistd_options,
            "cmux",
            "--config",
            self.path,
            *(f"--listen={endpoint}" for endpoint in self._listen),
            "--worker",
            str(worker.index),
        ]
        if self.config.admin is not None:
            arguments += ["--worker-admin", str(self.admin_socket(worker.index))]
        fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, STATUS_FD: "r"}
        for i, port in enumerate(self.ports):
            fds[FIRST_LISTENER_FD + i] = port.fileno()  # type: ignore[attr-defined]
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in _SUPERVISOR_ONLY
        }
        worker.process = self.reactor.spawnProcess(
            _WorkerProtocol(self, worker),
            sys.executable,
            arguments,
            env=environment,
            childFDs=fds,
        )
        worker.pid = worker.process.pid
        _log.info(
            "txcmux: worker {index} started (pid {pid})",
            index=worker.index,
            pid=worker.pid,
        )

    def admin_socket(self, index: int) -> Path:
        """Where worker ``index``'s admin site listens."""
        return self.runtime / f"worker-{index}.sock"

    def worker_said(self, worker: Worker, line: str) -> None:
        """A line from a worker's status pipe."""
        word = line.partition(" ")[0]
        if word == "ready":
            worker.state = "ready"
            if self.state == "starting" and all(
                w.state == "ready" for w in self.workers
            ):
                self._all_ready()
        elif word in ("reloaded", "refused"):
            worker.last_reload = line

    def _all_ready(self) -> None:
        self.state = "serving"
        addresses = ", ".join(
            f"{description} ({_address(port)})"
            for description, port in zip(self.config.listen, self.ports, strict=True)
        )
        _log.info(
            "txcmux: {source}: {count} workers listening on {addresses}"
            " (pids {pids}){admin}",
            source=self.config.source,
            count=len(self.workers),
            addresses=addresses,
            pids=", ".join(str(w.pid) for w in self.workers),
            admin=(
                f"; admin on {_address(self.admin_port)}" if self.admin_port else ""
            ),
        )
        if self.port_file is not None:
            lines = [_port_line(port) for port in self.ports]
            partial = Path(self.port_file + ".partial")
            partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            os.replace(partial, self.port_file)
        notify_systemd("READY=1", f"STATUS=serving with {len(self.workers)} workers")

    def worker_ended(self, worker: Worker, reason: Failure) -> None:
        """A worker exited: restart it (with backoff) unless stopping."""
        value = reason.value
        number = getattr(value, "signal", None)
        status = (
            f"signal {number}"
            if number
            else f"exit status {getattr(value, 'exitCode', '?')}"
        )
        worker.last_exit = status
        worker.state = "stopped"
        worker.ended.callback(None)
        if self._stopped is not None:
            _log.info(
                "txcmux: worker {index} (pid {pid}) ended: {status}",
                index=worker.index,
                pid=worker.pid,
                status=status,
            )
            return
        ran = time.time() - worker.started_at
        worker.exits_in_a_row = 1 if ran >= _STEADY else worker.exits_in_a_row + 1
        delay = min(_LONGEST_DELAY, _FIRST_DELAY * 2 ** (worker.exits_in_a_row - 1))
        worker.restarts += 1
        _log.warn(
            "txcmux: worker {index} (pid {pid}) ended unexpectedly ({status}"
            " after {ran:.1f} s); restarting it in {delay:g} s",
            index=worker.index,
            pid=worker.pid,
            status=status,
            ran=ran,
            delay=delay,
        )
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)

    # -- reload and stop -------------------------------------------------------

    def reload(self) -> None:
        """Forward SIGHUP to every running worker."""
        sent = self._signal(signal.SIGHUP)
        _log.info("txcmux: reload: SIGHUP sent to {sent} workers", sent=sent)

    def _signal(self, number: int) -> int:
        sent = 0
        for worker in self.workers:
            if worker.state != "stopped" and worker.process is not None:
                try:
                    worker.process.signalProcess(number)
                    sent += 1
                except error.ProcessExitedAlready:
                    pass
        return sent

    def _cut(self) -> None:
        self._signal(signal.SIGTERM)

    def stopService(self) -> defer.Deferred[None]:
        """Close the sockets, let every worker drain, and wait for them."""
        if self._stopped is not None:
            return self._stopped
        super().stopService()  # type: ignore[no-untyped-call]
        self.state = "draining"
        notify_systemd("STOPPING=1")
        install_signal_handler(signal.SIGTERM, self.reactor, self._cut)
        for worker in self.workers:
            # A worker waiting to be restarted has ended already (its
            # ``ended`` has fired): it is not started again.
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
        self._close_ports()
        sent = self._signal(signal.SIGTERM)
        _log.info("txcmux: draining: SIGTERM sent to {sent} workers", sent=sent)
        deadline = self.reactor.callLater(
            self.config.drain_timeout + 10, self._signal, signal.SIGKILL
        )
        self._stopped = defer.Deferred()

        def done(result: object) -> None:
            if deadline.active():
                deadline.cancel()
            if self.admin_port is not None:
                self.admin_port.stopListening()
            shutil.rmtree(self.runtime, ignore_errors=True)
            self.state = "stopped"
            _log.info("txcmux: stopped")
            assert self._stopped is not None
            self._stopped.callback(None)

        defer.gatherResults([w.ended for w in self.workers]).addCallback(done)
        return self._stopped


def _address(port: IListeningPort | None) -> str:
    host = port.getHost() if port is not None else None
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"  # type: ignore[union-attr]
    name = getattr(host, "name", None)
    return name.decode() if isinstance(name, bytes) else str(name or "?")


def _port_line(port: IListeningPort) -> str:
    host = port.getHost()
    return str(getattr(host, "port", None) or _address(port))


# -- the supervisor's admin site -----------------------------------------------


@implementer(IAgentEndpointFactory)
class _ToWorker:
    """Agent endpoints that reach one worker's admin socket, whatever the URL."""

    def __init__(self, reactor: Any, path: Path) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self.reactor, str(self.path), timeout=5)  # type: ignore[no-untyped-call]


class _Gathered:
    """The admin source of a supervisor: every worker's, gathered.

    The admin site asks ``registry``, ``status()`` and ``readiness()``
    synchronously, so :meth:`refresh` fetches the workers' ``/metrics`` and
    ``/status.json`` first; the site calls it before each answer.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._metrics: dict[int, str] = {}
        self._status: dict[int, Any] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def refresh(self) -> defer.Deferred[None]:
        """Fetch what every ready worker says now."""
        supervisor = self.supervisor
        asked = []
        for worker in supervisor.workers:
            if worker.state != "ready":
                self._metrics.pop(worker.index, None)
                self._status.pop(worker.index, None)
                continue
            agent = Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
                supervisor.reactor,
                _ToWorker(supervisor.reactor, supervisor.admin_socket(worker.index)),
            )
            asked.append(self._fetch(agent, worker.index))
        return defer.gatherResults(asked).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def _fetch(self, agent: Agent, index: int) -> Any:
        try:
            response = yield agent.request(b"GET", b"http://worker/metrics")
            self._metrics[index] = (yield readBody(response)).decode("utf-8")
            response = yield agent.request(b"GET", b"http://worker/status.json")
            self._status[index] = json.loads((yield readBody(response)))
        except Exception as failure:  # a worker restarting: shown as missing
            _log.debug(
                "txcmux: worker {index}'s admin did not answer: {failure}",
                index=index,
                failure=failure,
            )
            self._metrics.pop(index, None)
            self._status.pop(index, None)

    def collect(self) -> Any:
        """Every worker's metrics labelled ``worker``, and the supervisor's."""
        supervisor = self.supervisor
        up = GaugeMetricFamily(
            "txcmux_worker_up", "Whether the worker is ready.", labels=["worker"]
        )
        restarts = GaugeMetricFamily(
            "txcmux_worker_restarts",
            "How often the supervisor restarted the worker.",
            labels=["worker"],
        )
        for worker in supervisor.workers:
            up.add_metric([str(worker.index)], int(worker.state == "ready"))
            restarts.add_metric([str(worker.index)], worker.restarts)
        yield up
        yield restarts
        families: dict[str, Metric] = {}
        for index, text in sorted(self._metrics.items()):
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name,
                    Metric(family.name, family.documentation, family.type),
                )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(index)}
                    merged.add_sample(sample.name, labels, sample.value)
        yield from families.values()

    def status(self) -> dict[str, Any]:
        """The supervisor, and each worker with its own ``/status.json``."""
        supervisor = self.supervisor
        return {
            "supervisor": {
                "pid": os.getpid(),
                "state": supervisor.state,
                "started": supervisor.started_at,
                "config": supervisor.config.source,
            },
            "workers": [
                {
                    "index": worker.index,
                    "pid": worker.pid,
                    "state": worker.state,
                    "restarts": worker.restarts,
                    "last_exit": worker.last_exit,
                    "last_reload": worker.last_reload,
                    "status": self._status.get(worker.index),
                }
                for worker in supervisor.workers
            ],
        }

    def page(self, status: dict[str, Any]) -> str:
        """The status page of a supervisor: its workers, one row each."""
        from ._site import render_workers

        return render_workers(status)

    def readiness(self) -> tuple[bool, str]:
        supervisor = self.supervisor
        if supervisor.state != "serving":
            return False, supervisor.state
        if not all(worker.state == "ready" for worker in supervisor.workers):
            return False, "restarting"
        return True, "ready"
