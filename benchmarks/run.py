"""Run the benchmark suite: each scenario through txcmux and direct, interleaved.

::

    python -m benchmarks                          # 5 rounds x 5 s per side
    python -m benchmarks --quick                  # 1 round x ~1 s: a smoke run
    python -m benchmarks --only h2c,grpc-unary --rounds 7 --seconds 3
    python -m benchmarks --only http1-close --peers haproxy,sslh
    python -m benchmarks --chart ratios.png --json results.json

For each scenario both servers (the txcmux port and the direct one) are
started once, as separate processes; then, round after round, the load
generator runs against the direct server and against txcmux in turn
(A B A B ...).  The table shows, per side, the median over the rounds with
the minimum and maximum, and the ratio of the medians (txcmux / direct).

Where a scenario has peers (:mod:`benchmarks.peers`: HAProxy in TCP mode
and sslh-select in front of the direct service, Go's cmux and Go's own
server), they run in the same rounds (A B C D ...), and a second table
gives each side as a ratio to its reference with the CPU of every process
serving it; ``--peers`` picks them, and a peer that is not installed is
skipped with one line.  After the ratios come the absolute costs: the
latency a decision adds to a connection, and the memory of silent
connections while they are sniffed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a file: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import peers
from benchmarks.grpc_service import UNARY, grpc_frame

PYTHON = sys.executable
MIB = 1024 * 1024


class BenchError(Exception):
    """A measurement that produced no trustworthy number."""


class LoadErrors(BenchError):
    """A load generator finished with a rate but saw errors on the way.

    Fatal for txcmux and direct; for a peer, the rate is kept and the errors
    are reported beside it (how a peer behaves is part of the comparison).
    """

    def __init__(self, message: str, rate: float) -> None:
        super().__init__(message)
        self.rate = rate


# -- processes ---------------------------------------------------------------


class Server:
    """One ``benchmarks.server`` process; ``port`` once it listens."""

    def __init__(self, scenario: str, mode: str, *extra: str, log: IO[str]) -> None:
        self.name = f"{scenario}/{mode}"
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.server", scenario, mode, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        line = self._line(timeout=60)
        self.port: int = json.loads(line)["port"]

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise BenchError(f"server {self.name} said nothing (see the log)")
        return line

    def cpu_seconds(self) -> float:
        """User plus system CPU the process has used so far (Linux /proc)."""
        return peers.cpu_seconds(self.process.pid)

    def stats(self) -> dict[str, Any]:
        """The server's ``stats`` answer: rss_kib, switch counters, ..."""
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._line(timeout=30))
        return answer

    def close(self) -> None:
        """End of input, then a bounded wait; killed if it lingers."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def run_tool(command: Sequence[str], timeout: float) -> str:
    """Run a load generator to completion; its stdout (stderr on failure)."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"{command[0]} ran over {timeout:.0f} s") from error
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(command)} exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-500:]}"
        )
    return done.stdout


def run_client(*args: str, timeout: float) -> dict[str, Any]:
    """Run ``python -m benchmarks.clients ...``; its JSON result."""
    output = run_tool([PYTHON, "-m", "benchmarks.clients", *args], timeout)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


# -- load generators -----------------------------------------------------------


@dataclass
class Settings:
    """How long and how hard to measure."""

    seconds: float = 5.0
    rounds: int = 5
    warmup: float = 1.0
    bulk_bytes: int = 1024 * MIB
    connections: int = 32
    idle_connections: int = 10_000
    probes: int = 2000
    workdir: str = ""
    #: The peers to measure beside txcmux (see benchmarks/peers.py).
    peers: tuple[str, ...] = peers.PEERS
    #: The built benchmarks/gocmux program, for the go-* peers.
    go_binary: str = ""


def wrk(port: int, s: Settings, close: bool = False) -> float:
    """Requests per second from wrk (HTTP/1.1)."""
    command = ["wrk", "-t1", f"-c{s.connections}", f"-d{max(1, round(s.seconds))}s"]
    if close:
        command += ["-H", "Connection: close"]
    output = run_tool([*command, f"http://127.0.0.1:{port}/"], s.seconds + 30)
    rate = None
    errors = []
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
        bad = line.strip()
        if ("Non-2xx" in bad or bad.startswith("Socket errors")) and not (
            close and _only_closes(bad)
        ):
            errors.append(bad)
    if rate is None:
        raise BenchError(f"no Requests/sec in wrk's output: {output[-300:]}")
    if errors:
        raise LoadErrors(f"wrk reported: {'; '.join(errors)}", rate)
    return rate


def _only_closes(line: str) -> bool:
    """wrk's socket-error line counts only read/write errors of closed sockets."""
    fields = line.replace(",", "").split()
    counts = {fields[i]: fields[i + 1] for i in range(2, len(fields) - 1, 2)}
    return counts.get("connect", "0") == "0" and counts.get("timeout", "0") == "0"


def h2load(
    port: int, s: Settings, *extra: str, url: str = "", tls: bool = False
) -> float:
    """Requests per second from h2load (HTTP/2)."""
    scheme = "https" if tls else "http"
    target = f"{scheme}://127.0.0.1:{port}{url or '/'}"
    command = ["h2load", *extra, "-D", str(max(1, round(s.seconds))), target]
    output = run_tool(command, s.seconds + 30)
    rate = None
    counts: dict[str, int] = {}
    bad_status = -1
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            rate = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            parts = line.removeprefix("requests:").replace(",", "").split()
            counts = {parts[i + 1]: int(parts[i]) for i in range(0, len(parts) - 1, 2)}
        elif line.startswith("status codes:"):
            parts = line.removeprefix("status codes:").replace(",", "").split()
            bad_status = sum(int(parts[i]) for i in range(2, len(parts) - 1, 2))
    problems = counts.get("failed", 1) + counts.get("errored", 1)
    problems += counts.get("timeout", 1) + bad_status
    if rate is None or problems or counts.get("succeeded") != counts.get("done"):
        raise BenchError(f"h2load failed or saw errors: {output[-600:]}")
    return rate


# -- scenarios -----------------------------------------------------------------


@dataclass
class Scenario:
    """One comparison: a server kind, its two modes, and how to load them."""

    name: str
    title: str
    unit: str
    target: float
    server: str
    direct_mode: str
    through_mode: str
    measure: Callable[[int, Settings], float]
    shared_backend: bool = False  # the direct server is also txcmux's backend
    #: The peers measured in the same rounds (HAProxy, sslh, Go cmux).
    peers: tuple[str, ...] = ()


def _grpc_unary(port: int, s: Settings) -> float:
    body = Path(s.workdir, "unary.bin")
    if not body.exists():
        body.write_bytes(grpc_frame(b"\x42" * 100))
    return h2load(
        port, s, "-c4", "-m16", "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        url=UNARY,
    )  # fmt: skip


def _grpc_bidi(port: int, s: Settings) -> float:
    result = run_client(
        "bidi", str(port), "--seconds", str(s.seconds), "--streams", "4",
        timeout=s.seconds + 90,
    )  # fmt: skip
    if result["errors"] or not result["bytes"]:
        raise BenchError(f"bidi client: {result}")
    return float(result["bytes"]) / float(result["seconds"]) / MIB


def _bulk(port: int, s: Settings) -> float:
    result = run_client("bulk", str(port), str(s.bulk_bytes), timeout=300)
    if not result["ok"]:
        raise BenchError(f"bulk transfer incomplete: {result}")
    return float(result["bytes"]) / float(result["seconds"]) / MIB


SCENARIOS = [
    Scenario(
        "http1-keepalive", "HTTP/1.1 keep-alive, small responses (wrk -c32)",
        "req/s", 0.97, "web", "direct", "mux",
        lambda port, s: wrk(port, s), peers=peers.PEERS,
    ),
    Scenario(
        "http1-close", "HTTP/1.1, one request per connection (wrk, Connection: close)",
        "req/s", 0.90, "web", "direct", "mux",
        lambda port, s: wrk(port, s, close=True), peers=peers.PEERS,
    ),
    Scenario(
        "h2c", "h2c, 4 connections x 32 streams (h2load)",
        "req/s", 0.95, "h2c", "direct", "mux",
        lambda port, s: h2load(port, s, "-c4", "-m32"),
    ),
    Scenario(
        "https-h2", "HTTPS h2 via the TLS route, 4 x 32 streams (h2load)",
        "req/s", 0.95, "https", "direct", "mux",
        lambda port, s: h2load(port, s, "-c4", "-m32", tls=True),
    ),
    Scenario(
        "grpc-unary", "gRPC unary, 100 B, 64 concurrent (h2load), relay to grpcio",
        "req/s", 0.90, "grpc", "direct", "mux", _grpc_unary, shared_backend=True,
        peers=("haproxy",),
    ),
    Scenario(
        "grpc-unary-per-stream",
        "gRPC unary, 100 B, 64 concurrent (h2load), per stream by a web route",
        "req/s", 0.85, "grpc", "direct", "mux-per-stream", _grpc_unary,
        shared_backend=True,
    ),
    Scenario(
        "h2c-per-stream", "h2c as above, the web route with grpc_backend",
        "req/s", 0.95, "h2c", "direct", "mux-per-stream",
        lambda port, s: h2load(port, s, "-c4", "-m32"),
    ),
    Scenario(
        "grpc-unary-inprocess",
        "gRPC unary, 100 B, 64 concurrent (h2load), in-process GrpcServer",
        "req/s", 0.90, "grpc", "direct", "mux-inprocess", _grpc_unary,
    ),
    Scenario(
        "grpc-bidi", "gRPC bidi streaming, 64 KiB messages, 4 streams (grpcio client)",
        "MiB/s", 0.90, "grpc", "direct", "mux", _grpc_bidi, shared_backend=True,
    ),
    Scenario(
        "relay-bulk", "relay bulk transfer, one connection (1 GiB)",
        "MiB/s", 0.50, "relay", "sink", "mux", _bulk, shared_backend=True,
        peers=peers.PEERS,
    ),
]  # fmt: skip


#: What each peer's ratio is taken against: the direct service, except for
#: Go's cmux, which is compared with the same Go server on its own port.
AGAINST = {"haproxy": "direct", "sslh": "direct", "go-direct": "direct",
           "go-cmux": "go-direct"}  # fmt: skip


@dataclass
class PeerSeries:
    """One peer's measurements in a scenario's rounds."""

    name: str
    values: list[float] = field(default_factory=list)
    #: CPU of every server process serving the peer's side (the peer and the
    #: backend it forwards to), microseconds per unit of work.
    cpu_us: list[float] = field(default_factory=list)
    error: str | None = None
    #: Errors the load generator saw while still measuring a rate, each
    #: with where it happened ("warm-up", "round 2").
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """One side against its reference: ratio of medians and per round."""

    side: str
    against: str
    ratio: float
    round_ratios: list[float]
    cpu_us: float | None
    against_cpu_us: float | None

    @property
    def median_round_ratio(self) -> float:
        return statistics.median(self.round_ratios)

    @property
    def cpu_ratio(self) -> float | None:
        """Reference CPU per unit over the side's: above 1, the side is cheaper."""
        if not self.cpu_us or self.against_cpu_us is None:
            return None
        return self.against_cpu_us / self.cpu_us

    def as_dict(self) -> dict[str, Any]:
        return {
            "against": self.against,
            "ratio": self.ratio,
            "round_ratios": self.round_ratios,
            "median_round_ratio": self.median_round_ratio,
            "cpu_us": self.cpu_us,
            "against_cpu_us": self.against_cpu_us,
            "cpu_ratio": self.cpu_ratio,
        }


@dataclass
class Result:
    """The measurements of one scenario: one value per round and side."""

    scenario: Scenario
    direct: list[float] = field(default_factory=list)
    through: list[float] = field(default_factory=list)
    #: Server CPU (every server process of the scenario) per unit of work
    #: (request or MiB), in microseconds, one per round and side.
    direct_cpu_us: list[float] = field(default_factory=list)
    through_cpu_us: list[float] = field(default_factory=list)
    error: str | None = None
    #: The peers' measurements in the same rounds, by peer name.
    peers: dict[str, PeerSeries] = field(default_factory=dict)
    #: Whether a half-close passes through each side (relay scenarios).
    half_close: dict[str, dict[str, Any]] = field(default_factory=dict)

    def series(self, side: str) -> tuple[list[float], list[float]]:
        """(values, CPU us per unit) of ``side``: direct, txcmux or a peer."""
        if side == "direct":
            return self.direct, self.direct_cpu_us
        if side == "txcmux":
            return self.through, self.through_cpu_us
        return self.peers[side].values, self.peers[side].cpu_us

    def compared(self, side: str, against: str) -> Comparison | None:
        """``side`` against ``against`` over the rounds both were measured in."""
        values, cpu = self.series(side)
        reference, reference_cpu = self.series(against)
        rounds = [(v, r) for v, r in zip(values, reference, strict=False) if r]
        if not rounds:
            return None
        return Comparison(
            side=side,
            against=against,
            ratio=statistics.median(values) / statistics.median(reference),
            round_ratios=[v / r for v, r in rounds],
            cpu_us=statistics.median(cpu) if cpu else None,
            against_cpu_us=statistics.median(reference_cpu) if reference_cpu else None,
        )

    @property
    def cpu_ratio(self) -> float | None:
        """Direct's CPU per unit over txcmux's: above 1 means txcmux is cheaper."""
        if not self.direct_cpu_us or not self.through_cpu_us:
            return None
        through = statistics.median(self.through_cpu_us)
        return statistics.median(self.direct_cpu_us) / through if through else None

    @property
    def ratio(self) -> float | None:
        if not self.direct or not self.through:
            return None
        return statistics.median(self.through) / statistics.median(self.direct)

    @property
    def round_ratios(self) -> list[float]:
        return [t / d for d, t in zip(self.direct, self.through, strict=False) if d]

    def as_dict(self) -> dict[str, Any]:
        sc = self.scenario
        return {
            "name": sc.name,
            "title": sc.title,
            "unit": sc.unit,
            "target": sc.target,
            "direct": self.direct,
            "through": self.through,
            "ratio": self.ratio,
            "round_ratios": self.round_ratios,
            "direct_cpu_us": self.direct_cpu_us,
            "through_cpu_us": self.through_cpu_us,
            "cpu_ratio": self.cpu_ratio,
            "met": None if self.ratio is None else self.ratio >= sc.target,
            "error": self.error,
            "peers": {name: self._peer_dict(name) for name in self.peers},
            "half_close": self.half_close,
        }

    def _peer_dict(self, name: str) -> dict[str, Any]:
        series = self.peers[name]
        compared = self.compared(name, AGAINST[name]) if not series.error else None
        return {
            "values": series.values,
            "cpu_us": series.cpu_us,
            "error": series.error,
            "notes": series.notes,
            **(compared.as_dict() if compared else {"against": AGAINST[name]}),
        }


@dataclass
class Side:
    """One server setup the load runs against in every round."""

    name: str
    port: int
    #: Every server process serving this side: their CPU counts for it.
    processes: Sequence[Any]
    values: list[float]
    cpu_us: list[float]
    peer: PeerSeries | None = None


def measure(scenario: Scenario, s: Settings, log: IO[str]) -> Result:
    """Start every side's servers, warm them, then measure A B C ... per round.

    A peer that fails is dropped from the later rounds with its error noted;
    the scenario goes on with the others.
    """
    result = Result(scenario)
    servers: list[Any] = []
    try:
        direct = Server(scenario.server, scenario.direct_mode, log=log)
        servers.append(direct)
        extra = ("--backend", str(direct.port)) if scenario.shared_backend else ()
        through = Server(scenario.server, scenario.through_mode, *extra, log=log)
        servers.append(through)
        sides = [
            Side("direct", direct.port, [direct], result.direct, result.direct_cpu_us),
            Side(
                "txcmux", through.port,
                [through, direct] if scenario.shared_backend else [through],
                result.through, result.through_cpu_us,
            ),
        ]  # fmt: skip
        for name in scenario.peers:
            if name not in s.peers:
                continue
            series = result.peers[name] = PeerSeries(name)
            try:
                processes = start_peer(name, scenario, direct, s, log)
            except (peers.PeerError, BenchError) as error:
                series.error = str(error)
                continue
            servers.append(processes[0])
            sides.append(
                Side(name, processes[0].port, processes, series.values,
                     series.cpu_us, series)
            )  # fmt: skip
        if scenario.server == "relay":
            for side in sides:
                result.half_close[side.name] = run_client(
                    "half-close", str(side.port), timeout=30
                )
        if s.warmup:
            short = Settings(**{**s.__dict__, "seconds": s.warmup})
            short.bulk_bytes = min(s.bulk_bytes, 64 * MIB)
            for side in list(sides):
                _guarded(
                    side, sides, "warm-up",
                    lambda side=side: scenario.measure(side.port, short),
                )  # fmt: skip
        for number in range(1, s.rounds + 1):
            for side in list(sides):
                _guarded(
                    side, sides, f"round {number}",
                    lambda side=side: _record(scenario, side, s),
                )  # fmt: skip
    except BenchError as error:
        result.error = str(error)
    finally:
        for server in reversed(servers):
            server.close()
    return result


def start_peer(
    name: str, scenario: Scenario, direct: Server, s: Settings, log: IO[str]
) -> list[Any]:
    """Start peer ``name`` in front of the scenario's direct server.

    Returns the processes serving the peer's side, the peer first: HAProxy
    and sslh forward to the direct server (the Site's own port, the grpcio
    server, the sink), so it counts for them too; the Go programs serve HTTP
    themselves and relay to the sink.
    """
    kind = scenario.server
    if name == "haproxy":
        route = {"web": "web", "grpc": "grpc", "relay": "ssh"}[kind]
        return [peers.start_haproxy(s.workdir, log, **{route: direct.port}), direct]
    if name == "sslh":
        route = {"web": "http", "relay": "ssh"}[kind]
        return [peers.start_sslh(s.workdir, log, **{route: direct.port}), direct]
    if not s.go_binary:
        raise BenchError("the Go program was not built")
    mode = "cmux"
    if name == "go-direct":  # the same Go server on its own port
        mode = "http" if kind == "web" else "relay"
    if kind == "relay":
        return [peers.start_go(s.go_binary, mode, log, backend=direct.port), direct]
    return [peers.start_go(s.go_binary, mode, log)]


def _guarded(
    side: Side, sides: list[Side], where: str, work: Callable[[], object]
) -> None:
    """Run ``work`` for ``side``.

    For txcmux and direct any error is raised.  For a peer, errors seen
    while a rate was still measured are noted; any other failure drops the
    peer from the later rounds.
    """
    try:
        work()
    except LoadErrors as error:
        if side.peer is None:
            raise
        side.peer.notes.append(f"{where}: {error}")
    except BenchError as error:
        if side.peer is None:
            raise
        side.peer.error = f"{where}: {error}"
        sides.remove(side)


def _record(scenario: Scenario, side: Side, s: Settings) -> None:
    """One measurement of ``side``, appended to its series.

    A peer's :class:`LoadErrors` still records the rate and CPU, then goes
    on to :func:`_guarded` to be noted.
    """
    rate, cpu_us, errors = _measured(scenario, side.port, s, side.processes)
    side.values.append(rate)
    side.cpu_us.append(cpu_us)
    if errors is not None:
        raise errors


def _measured(
    scenario: Scenario, port: int, s: Settings, servers: Sequence[Any]
) -> tuple[float, float, LoadErrors | None]:
    """One measurement: the rate, the servers' CPU per unit of work (us), and
    the errors the load generator saw on the way, if any.

    ``servers`` are every process serving the side measured (a relayed
    backend works for it too); the work is the rate times the wall time.
    """
    cpu_before = sum(server.cpu_seconds() for server in servers)
    started = time.monotonic()
    errors = None
    try:
        rate = scenario.measure(port, s)
    except LoadErrors as seen:
        rate, errors = seen.rate, seen
    elapsed = time.monotonic() - started
    cpu = sum(server.cpu_seconds() for server in servers) - cpu_before
    work = rate * elapsed
    return rate, (cpu / work * 1e6 if work > 0 else 0.0), errors


# -- absolute costs ----------------------------------------------------------------


def _percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"n": len(ordered), "median": statistics.median(ordered), "p99": p99}


def handoff_latency(s: Settings, log: IO[str]) -> dict[str, Any]:
    """How long a decision takes, in-process and as a client sees it."""
    mux = Server("handoff", "mux", log=log)
    direct = Server("handoff", "direct", log=log)
    decided: dict[str, list[int]] = {}
    delivered: dict[str, list[int]] = {}
    try:
        client: dict[str, list[int]] = {"direct": [], "mux": []}
        batch = max(1, s.probes // 4)
        for server in (direct, mux):  # first requests import lazily: not counted
            run_client("probe", str(server.port), "--count", "20", timeout=60)
        seen = mux.stats()
        for _ in range(4):  # interleaved batches, as for the ratios
            for name, server in (("direct", direct), ("mux", mux)):
                got = run_client(
                    "probe", str(server.port), "--kind", "http1",
                    "--count", str(batch), timeout=120,
                )  # fmt: skip
                client[name] += got["latency_ns"]
        for kind, route, label in (
            ("http1", "web", "HTTP/1.1 GET -> web"),
            ("h2c", "web", "h2c GET -> web"),
            ("tls", "tls", "TLS ClientHello -> tls"),
        ):
            if kind != "http1":
                run_client(
                    "probe", str(mux.port), "--kind", kind, "--count", str(batch),
                    timeout=120,
                )  # fmt: skip
            now = mux.stats()
            for key, found in (("decided_ns", decided), ("delivered_ns", delivered)):
                found[label] = now[key][route][len(seen[key][route]) :]
            seen = now
    finally:
        mux.close()
        direct.close()

    def us(samples: dict[str, list[int]]) -> dict[str, dict[str, float]]:
        return {k: _percentiles([n / 1000 for n in v]) for k, v in samples.items()}

    return {
        "decided_us": us(decided),
        "delivered_us": us(delivered),
        "client_http1_us": us(client),
    }


def idle_memory(s: Settings, log: IO[str]) -> dict[str, Any]:
    """RSS per silent connection while ``idle_connections`` are sniffed."""
    count = s.idle_connections
    mux = Server("web", "mux", "--sniff-timeout", "600", log=log)
    holder: subprocess.Popen[str] | None = None
    try:
        before_probe = run_client("probe", str(mux.port), "--count", "200", timeout=120)
        before = mux.stats()
        holder = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.clients", "idle", str(mux.port), str(count),
             "--hold", "300"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        assert holder.stdout is not None
        opened = json.loads(holder.stdout.readline() or '{"open": 0}')["open"]
        if opened != count:
            raise BenchError(f"only {opened} of {count} idle connections opened")
        wanted = before["switch"].get("accepted", 0) + count
        deadline = time.monotonic() + 60
        during = mux.stats()
        while during["switch"].get("accepted", 0) < wanted:
            if time.monotonic() > deadline:
                raise BenchError(f"the server accepted only {during['switch']}")
            time.sleep(0.2)
            during = mux.stats()
        probe = run_client("probe", str(mux.port), "--count", "200", timeout=120)
        after = mux.stats()
        undecided = (
            after["switch"].get("accepted", 0)
            - sum(v for k, v in after["switch"].items() if k.startswith("routed."))
            - sum(v for k, v in after["switch"].items() if k.startswith("closed."))
        )
    finally:
        if holder is not None:
            if holder.stdin is not None:
                holder.stdin.close()
            holder.wait(timeout=60)
        mux.close()
    delta = during["rss_kib"] - before["rss_kib"]
    return {
        "connections": count,
        "undecided_at_end": undecided,
        "rss_before_kib": before["rss_kib"],
        "rss_during_kib": during["rss_kib"],
        "bytes_per_connection": delta * 1024 / count,
        "probe_alone_us": _percentiles([n / 1000 for n in before_probe["latency_ns"]]),
        "probe_during_us": _percentiles([n / 1000 for n in probe["latency_ns"]]),
        "probe_failures": probe["failures"],
    }


# -- output ----------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _side(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return (
        f"{_fmt(statistics.median(values))} ({_fmt(min(values))}-{_fmt(max(values))})"
    )


def table(results: Sequence[Result]) -> str:
    """The ratio table, as Markdown."""
    lines = [
        "| scenario | unit | direct: median (min-max) | txcmux: median (min-max)"
        " | ratio (per-round min-max) | target | met | server CPU us per unit:"
        " direct / txcmux (ratio) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sc = r.scenario
        if r.ratio is None:
            ratio, met = f"error: {r.error}", "no"
        else:
            low, high = min(r.round_ratios), max(r.round_ratios)
            ratio = f"**{r.ratio:.3f}** ({low:.3f}-{high:.3f})"
            met = "yes" if r.ratio >= sc.target else "NO"
        cpu = "-"
        if r.cpu_ratio is not None:
            cpu = (
                f"{_fmt(statistics.median(r.direct_cpu_us))} /"
                f" {_fmt(statistics.median(r.through_cpu_us))} ({r.cpu_ratio:.3f})"
            )
        lines.append(
            f"| {sc.name} | {sc.unit} | {_side(r.direct)} | {_side(r.through)}"
            f" | {ratio} | >= {sc.target:.2f} | {met} | {cpu} |"
        )
    return "\n".join(lines)


#: How each side is named in the peers table.
SIDE_TITLES = {
    "txcmux": "txcmux",
    "haproxy": "HAProxy (TCP mode) in front",
    "sslh": "sslh-select in front",
    "go-direct": "Go net/http (relay: Go relay) alone",
    "go-cmux": "Go cmux",
}


def peers_table(results: Sequence[Result]) -> str:
    """txcmux and its peers, each as a ratio to its reference, as Markdown."""
    lines = [
        "| scenario | side | against | side: median (min-max)"
        " | ratio of medians | per-round ratios: median (min-max)"
        " | server CPU us per unit: against / side (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r.peers:
            continue
        for name in ("txcmux", *r.peers):
            error = r.error if name == "txcmux" else r.peers[name].error
            against = "direct" if name == "txcmux" else AGAINST[name]
            compared = None if error else r.compared(name, against)
            title = SIDE_TITLES[name]
            if compared is None:
                lines.append(
                    f"| {r.scenario.name} | {title} | {against} | -"
                    f" | error: {error or 'no number'} | - | - |"
                )
                continue
            cpu = "-"
            if compared.cpu_ratio is not None and compared.cpu_us is not None:
                cpu = (
                    f"{_fmt(compared.against_cpu_us or 0)} / {_fmt(compared.cpu_us)}"
                    f" ({compared.cpu_ratio:.3f})"
                )
            low, high = min(compared.round_ratios), max(compared.round_ratios)
            if name != "txcmux" and r.peers[name].notes:
                title += " (errors: see below)"
            lines.append(
                f"| {r.scenario.name} | {title} | {against}"
                f" | {_side(r.series(name)[0])} | **{compared.ratio:.3f}**"
                f" | {compared.median_round_ratio:.3f} ({low:.3f}-{high:.3f})"
                f" | {cpu} |"
            )
    return "\n".join(lines)


def peer_notes_text(results: Sequence[Result]) -> str:
    """The errors peers' load generators saw while measuring, one line each."""
    return "\n".join(
        f"{r.scenario.name}, {SIDE_TITLES[name]}: " + "; ".join(p.notes)
        for r in results
        for name, p in r.peers.items()
        if p.notes
    )


def half_close_text(results: Sequence[Result]) -> str:
    """Which sides pass a client's half-close on to the backend, one line."""
    out = []
    for r in results:
        if not r.half_close:
            continue
        seen = "; ".join(
            f"{side}: {'passed' if check['passed'] else 'NOT passed'}"
            + ("" if check["passed"] else f" ({check['seen']})")
            for side, check in r.half_close.items()
        )
        out.append(
            f"Half-close in {r.scenario.name} (the client sends 64 KiB, shuts down"
            f" its write side and waits for the sink's count): {seen}."
        )
    return "\n".join(out)


def costs_text(latency: dict[str, Any] | None, memory: dict[str, Any] | None) -> str:
    """The absolute costs, as Markdown."""
    out: list[str] = []
    if latency is not None:
        out.append("Added latency per decided connection, in-process, microseconds:")
        out.append("from the detector's first read to the route factory's")
        out.append("buildProtocol (the decision), and to the route target's first")
        out.append("dataReceived (decision, target built and connected, replay):")
        out.append("")
        out.append(
            "| first bytes -> route | n | decided: median | p99"
            " | delivered: median | p99 |"
        )
        out.append("|---|---|---|---|---|---|")
        for label, d in latency["decided_us"].items():
            t = latency["delivered_us"][label]
            if d["n"] and t["n"]:
                out.append(
                    f"| {label} | {d['n']} | {d['median']:.1f} | {d['p99']:.1f}"
                    f" | {t['median']:.1f} | {t['p99']:.1f} |"
                )
        out.append("")
        out.append("Connect + request + full response, HTTP/1.1, one connection each")
        out.append("(client side, microseconds):")
        out.append("")
        out.append("| server | n | median | p99 |")
        out.append("|---|---|---|---|")
        for name, p in latency["client_http1_us"].items():
            if p["n"]:
                out.append(
                    f"| {name} | {p['n']} | {p['median']:.1f} | {p['p99']:.1f} |"
                )
        out.append("")
    if memory is not None:
        m = memory
        out.append(
            f"Memory per silent connection: {m['bytes_per_connection']:,.0f} bytes"
            f" (RSS {m['rss_before_kib']:,} KiB -> {m['rss_during_kib']:,} KiB with"
            f" {m['connections']:,} connections sniffing; {m['undecided_at_end']:,}"
            " still undecided at the end)."
        )
        alone, during = m["probe_alone_us"], m["probe_during_us"]
        out.append(
            f"HTTP/1.1 requests meanwhile (new connection each): median"
            f" {during.get('median', 0):.0f} us, p99 {during.get('p99', 0):.0f} us"
            f" (without the silent connections: median"
            f" {alone.get('median', 0):.0f} us, p99 {alone.get('p99', 0):.0f} us);"
            f" {m['probe_failures']} failed."
        )
    return "\n".join(out)


def chart(results: Sequence[Result], path: str, note: str) -> bool:
    """A bar chart of the ratios with their targets; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    done = [r for r in results if r.ratio is not None]
    names = [r.scenario.name for r in done]
    ratios = [r.ratio or 0.0 for r in done]
    low = [r.ratio - min(r.round_ratios) for r in done if r.ratio is not None]
    high = [max(r.round_ratios) - r.ratio for r in done if r.ratio is not None]
    colours = [
        "#3a7d44" if r.ratio is not None and r.ratio >= r.scenario.target else "#c0392b"
        for r in done
    ]
    figure, axes = plt.subplots(figsize=(8, 0.5 * len(done) + 1.4), dpi=100)
    rows = range(len(done))
    axes.barh(rows, ratios, xerr=[low, high], color=colours, capsize=3)
    for row, r in zip(rows, done, strict=True):
        axes.plot([r.scenario.target] * 2, [row - 0.4, row + 0.4], color="black", lw=2)
        right = max([r.ratio or 0.0, *r.round_ratios])
        axes.text(right + 0.02, row, f"{r.ratio:.2f}", va="center", size=8)
    axes.axvline(1.0, color="grey", lw=0.8, ls="--")
    axes.set_yticks(list(rows), names, size=8)
    axes.invert_yaxis()
    axes.set_xlim(0, max([1.2, *[(r.ratio or 0) + 0.2 for r in done]]))
    axes.set_xlabel("throughput through txcmux / direct (median of rounds);"
                    " black tick: target")  # fmt: skip
    axes.set_title(note, size=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def replot(results_file: str, path: str) -> int:
    """Draw the chart of an earlier run from its ``--json`` file."""
    saved = json.loads(Path(results_file).read_text())
    by_name = {sc.name: sc for sc in SCENARIOS}
    results = []
    for item in saved["results"]:
        scenario = by_name.get(item["name"])
        if scenario is not None:
            results.append(Result(scenario, item["direct"], item["through"]))
    settings = saved["settings"]
    note = (
        f"{settings['rounds']} rounds x {settings['seconds']:g} s, load before"
        f" {saved['load_before']}, after {saved['load_after']}, {os.cpu_count()} CPUs"
    )
    if not chart(results, path, note):
        print("matplotlib is not installed", file=sys.stderr)
        return 1
    print(f"chart: {path}")
    return 0


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 round, ~1 s each")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float, help="per measurement")
    parser.add_argument("--only", help="comma-separated scenario names (or 'costs')")
    parser.add_argument("--skip-costs", action="store_true")
    parser.add_argument(
        "--peers",
        default=",".join(peers.PEERS),
        help="comma-separated peers to measure beside txcmux, or 'none'"
        f" (default: {','.join(peers.PEERS)}, those installed)",
    )
    parser.add_argument("--chart", help="write the ratio chart (PNG) here")
    parser.add_argument("--json", help="write every number (JSON) here")
    parser.add_argument(
        "--log", default=None, help="the servers' stderr (default: a temp file)"
    )
    parser.add_argument(
        "--replot", metavar="JSON", help="only draw --chart from a --json file"
    )
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.replot, args.chart or "ratios.png")

    s = Settings()
    if args.quick:  # 256 MiB: at least 10 ms (one clock tick) of the sink's CPU
        s = Settings(
            seconds=1.0, rounds=1, warmup=0.0, bulk_bytes=256 * MIB,
            idle_connections=1000, probes=200,
        )  # fmt: skip
    if args.rounds is not None:
        s.rounds = args.rounds
    if args.seconds is not None:
        s.seconds = args.seconds
    wanted = set(args.only.split(",")) if args.only else None
    known = {sc.name for sc in SCENARIOS} | {"costs"}
    if wanted and wanted - known:
        parser.error(f"unknown scenario(s): {', '.join(sorted(wanted - known))}")
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        print(f"missing load generators: {', '.join(missing)}", file=sys.stderr)
        return 2
    chosen = () if args.peers == "none" else tuple(args.peers.split(","))
    if set(chosen) - set(peers.PEERS):
        parser.error(
            f"unknown peer(s): {', '.join(sorted(set(chosen) - set(peers.PEERS)))}"
        )

    s.workdir = tempfile.mkdtemp(prefix="txcmux-bench-run-")
    skipped = {k: v for k, v in peers.missing().items() if k in chosen}
    if {"go-direct", "go-cmux"} & set(chosen) - set(skipped):
        try:
            s.go_binary = peers.build_go(s.workdir)
        except peers.PeerError as error:
            skipped["go-direct"] = skipped["go-cmux"] = str(error)
    for name in sorted(skipped, key=peers.PEERS.index):
        print(f"peer {name} skipped: {skipped[name]}", flush=True)
    s.peers = tuple(name for name in chosen if name not in skipped)
    log_path = args.log or os.path.join(s.workdir, "servers.log")
    started = time.time()
    load_before = load_average()
    print(f"load average before: {load_before}; {os.cpu_count()} CPUs", flush=True)
    results: list[Result] = []
    with open(log_path, "a") as log:
        for scenario in SCENARIOS:
            if wanted and scenario.name not in wanted:
                continue
            result = measure(scenario, s, log)
            results.append(result)
            print(
                f"  {scenario.name}: direct {result.direct} txcmux {result.through}"
                + "".join(
                    f" {name} {'ERROR ' + p.error if p.error else p.values}"
                    for name, p in result.peers.items()
                )
                + (f" ERROR {result.error}" if result.error else ""),
                flush=True,
            )
        latency = memory = None
        if not args.skip_costs and (wanted is None or "costs" in wanted):
            try:
                latency = handoff_latency(s, log)
                memory = idle_memory(s, log)
            except BenchError as error:
                print(f"  costs: ERROR {error}", flush=True)
    load_after = load_average()
    print()
    print(table(results))
    print()
    if any(r.peers for r in results):
        print(peers_table(results))
        print()
        if peer_notes_text(results):
            print(peer_notes_text(results))
            print()
        print(half_close_text(results))
        print()
    print(costs_text(latency, memory))
    print()
    note = (
        f"{s.rounds} rounds x {s.seconds:g} s, load before {load_before},"
        f" after {load_after}, {os.cpu_count()} CPUs"
    )
    print(f"{note}; {time.time() - started:.0f} s in all; server log: {log_path}")
    if args.chart:
        if chart(results, args.chart, note):
            print(f"chart: {args.chart}")
        else:
            print("chart skipped: matplotlib is not installed")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "settings": {
                        k: v
                        for k, v in s.__dict__.items()
                        if k not in ("workdir", "go_binary")
                    },
                    "peers_skipped": skipped,
                    "load_before": load_before,
                    "load_after": load_after,
                    "results": [r.as_dict() for r in results],
                    "latency": latency,
                    "memory": memory,
                },
                indent=1,
            )
        )
    failed = [r.scenario.name for r in results if r.ratio is None]
    failed += [
        f"{r.scenario.name}/{name}"
        for r in results
        for name, p in r.peers.items()
        if p.error or not p.values
    ]
    if (
        (latency is None or memory is None)
        and not args.skip_costs
        and (wanted is None or "costs" in wanted)
    ):
        failed.append("costs")
    if failed:
        print(f"no number for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
