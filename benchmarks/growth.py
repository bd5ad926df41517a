"""How txcmux's cost grows: ``python -m benchmarks.growth``.

Two series, printed as Markdown tables (and, with ``--chart DIR``, drawn as
``growth-connections.png`` and ``growth-routes.png`` there):

- **Open connections.**  One ``twistd -n cmux`` on 127.0.0.1 (the demo's
  routes: ``grpc`` first, then ``web``), with 0, then 100, 1,000 and 10,000
  other connections held open by a client process: *sniffing* (each sent
  half an HTTP/1.1 request line, so it waits in the detector) or *idle* (each
  was answered one keep-alive request and sits in the Site's HTTP/1.1
  channel).  At each level: the server's RSS per open connection (over the
  level with none), and the latency, p50 and p99 over ``--probes``
  requests, of a request on a new connection (connect, the decision, the
  answer: what a new client waits) and of a request on a connection already
  decided (what the decision does not touch).  50,000 connections need
  50,000 descriptors in each of the two processes; the series goes as far
  as ``RLIMIT_NOFILE`` allows and says where it stopped.
- **Routes.**  1, 4, 16 and 64 routes in front of the ``web`` route (the
  decoys cycle through ``prefix``, ``http1_header`` and ``tls`` with a list
  of server names), and one ``tls`` route whose SNI list has 1 to 1,000
  names: the detector's CPU time per connection in this process (a fresh
  detector on an in-memory transport, curl's opening as one read, handed to
  a protocol that does nothing), and, for the route counts, one request per
  connection through ``twistd`` under ``wrk -c32 -H "Connection: close"``,
  the route counts interleaved in each of ``--rounds`` rounds (median).

Every loop is bounded: a level opens at most its count, each probe has a
timeout, each process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.testing import capture

HTTP1 = capture("curl-http1.1.bin")
HELLO = capture("curl-tls-clienthello.bin")
REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLOSE = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
LEVELS = (0, 100, 1000, 10000, 50000)
ROUTE_COUNTS = (1, 4, 16, 64)
SNI_COUNTS = (1, 10, 100, 1000)

CONNECTIONS_CONFIG = """
listen = ["tcp:0:interface=127.0.0.1:backlog=1024"]
sniff_timeout = 600
max_connections = 0
max_sniffing = 0

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
"""


# -- processes -------------------------------------------------------------------


@contextmanager
def twistd(directory: Path, name: str, config: str) -> Iterator[tuple[int, int]]:
    """``twistd -n cmux`` on ``config``: its pid and port, stopped at the end."""
    path = directory / f"{name}.toml"
    path.write_text(config, encoding="utf-8")
    ports = directory / f"{name}.ports"
    ports.unlink(missing_ok=True)
    command = [
        str(Path(sys.executable).parent / "twistd"),
        "-n", "--pidfile=", "cmux", "--config", str(path), "--port-file", str(ports),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not ports.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"twistd on {name} did not start")
            time.sleep(0.05)  # waiting for another process to listen
        yield process.pid, int(ports.read_text().split()[0])
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def rss_kib(pid: int) -> int:
    """The resident set of process ``pid``, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1))


def descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def raise_fd_limit() -> int:
    """Raise this process's descriptor limit to its hard limit; the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the open-connections series -------------------------------------------------


async def _read_answer(reader: asyncio.StreamReader) -> None:
    """Read one HTTP/1.1 answer of the demo (it has a Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
    assert length is not None, head
    await reader.readexactly(int(length.group(1)))


class Held:
    """The connections one level holds open, in the state asked for."""

    def __init__(self, port: int, state: str) -> None:
        self.port, self.state = port, state
        self.writers: list[asyncio.StreamWriter] = []

    async def grow(self, count: int) -> None:
        """Open connections until ``count`` are held, 100 at a time."""
        while len(self.writers) < count:
            batch = min(100, count - len(self.writers))
            self.writers += await asyncio.gather(*(self._one() for _ in range(batch)))

    async def _one(self) -> asyncio.StreamWriter:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), 30
        )
        if self.state == "sniffing":
            writer.write(b"GET /hel")  # half a request line: still undecided
            await writer.drain()
        else:
            writer.write(REQUEST)
            await asyncio.wait_for(_read_answer(reader), 30)
        return writer

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


async def _probe_new(port: int) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CLOSE)
    await _read_answer(reader)
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed


async def probes(port: int, count: int) -> tuple[list[float], list[float]]:
    """Latencies (ms) of ``count`` requests on new connections, and of
    ``count`` on one connection already decided."""
    fresh = [await asyncio.wait_for(_probe_new(port), 30) * 1e3 for _ in range(count)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decided = []
    for _ in range(count):
        started = time.perf_counter()
        writer.write(REQUEST)
        await asyncio.wait_for(_read_answer(reader), 30)
        decided.append((time.perf_counter() - started) * 1e3)
    writer.close()
    return fresh, decided


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def connections_series(
    pid: int, port: int, state: str, levels: list[int], count: int
) -> list[dict[str, Any]]:
    """One row per level for connections held in ``state``."""
    held = Held(port, state)
    rows: list[dict[str, Any]] = []
    baseline = 0
    try:
        await probes(port, 50)  # warm up: the Site, the detector, the allocator
        for level in levels:
            await held.grow(level)
            await asyncio.sleep(0.5)  # for the server to read the last batch
            fresh, decided = await probes(port, count)
            rss = rss_kib(pid)
            if level == 0:
                baseline = rss
            rows.append(
                {
                    "state": state,
                    "open": level,
                    "server_fds": descriptors(pid),
                    "rss_kib": rss,
                    "kib_per_connection": (rss - baseline) / level if level else None,
                    "new_p50_ms": percentile(fresh, 0.5),
                    "new_p99_ms": percentile(fresh, 0.99),
                    "decided_p50_ms": percentile(decided, 0.5),
                    "decided_p99_ms": percentile(decided, 0.99),
                }
            )
            print(_connections_line(rows[-1]), flush=True)
    finally:
        held.close()
    return rows


def _connections_line(row: dict[str, Any]) -> str:
    per = row["kib_per_connection"]
    return (
        f"| {row['state']} | {row['open']:,} | "
        f"{'—' if per is None else f'{per:.1f}'} | "
        f"{row['new_p50_ms']:.2f} / {row['new_p99_ms']:.2f} | "
        f"{row['decided_p50_ms']:.2f} / {row['decided_p99_ms']:.2f} |"
    )


# -- the routes series -----------------------------------------------------------


def names(count: int) -> list[str]:
    """``count`` server names; curl's own (``localhost``) is not among them."""
    return [f"host{index}.example.com" for index in range(count)]


def decoy(index: int) -> tuple[matchers.Matcher, str]:
    """The ``index``-th route that does not match curl: a matcher, and the
    same as a config table."""
    kind = index % 3
    if kind == 0:
        value = f"X{index:03d} "
        return matchers.prefix(
            value.encode()
        ), f'{{ type = "prefix", value = "{value}" }}'
    if kind == 1:
        tenant = f"t{index}"
        return (
            matchers.http1_header("x-tenant", tenant),
            f'{{ type = "http1_header", name = "x-tenant", value = "{tenant}" }}',
        )
    listed = names(10)
    return matchers.tls(sni=listed), f'{{ type = "tls", sni = {json.dumps(listed)} }}'


def routes_config(count: int) -> str:
    """A config with ``count - 1`` decoys, then the ``web`` route."""
    parts = ['listen = ["tcp:0:interface=127.0.0.1:backlog=1024"]']
    for index in range(count - 1):
        _, table = decoy(index)
        parts.append(
            f'[[route]]\nname = "decoy{index}"\nmatch = [{table}]\n'
            'proxy = "tcp:host=127.0.0.1:port=9"'
        )
    parts.append(
        '[[route]]\nname = "web"\nmatch = ["http1"]\nweb = "txcmux.demo:resource"'
    )
    return "\n\n".join(parts) + "\n"


def decision_us(routes: list[Route], opening: bytes, connections: int) -> float:
    """CPU time per connection (µs): a fresh detector, ``opening`` in one
    read, the decision and the handoff to a protocol that does nothing."""
    mux = ProtocolSwitchingFactory(routes)
    rounds = []
    for _ in range(7):
        gc.collect()  # each round starts with no garbage of the last
        started = time.process_time()
        for _ in range(connections):
            detector = mux.buildProtocol(None)
            transport = StringTransport()
            detector.makeConnection(transport)
            detector.dataReceived(opening)
        rounds.append((time.process_time() - started) / connections * 1e6)
    return statistics.median(rounds)


def wrk_close(port: int, seconds: float) -> float:
    output = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds:g}s", "-H", "Connection: close",
         f"http://127.0.0.1:{port}/hello"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise SystemExit(f"wrk said nothing usable:\n{output}")
    return float(found.group(1))


def routes_series(
    directory: Path, rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    target = Factory.forProtocol(Protocol)
    by_count: dict[int, dict[str, Any]] = {}
    for count in ROUTE_COUNTS:
        routes = [Route(f"decoy{i}", decoy(i)[0], target) for i in range(count - 1)] + [
            Route("web", matchers.http1(), target)
        ]
        by_count[count] = {"decision_us": decision_us(routes, HTTP1, connections)}
    by_names: dict[int, float] = {}
    for count in SNI_COUNTS:
        listed = [*names(count - 1), "localhost"]  # curl's name last
        routes = [Route("tls", matchers.tls(sni=listed), target)]
        by_names[count] = decision_us(routes, HELLO, connections)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt install wrk): no throughput rows")
    else:
        with route_servers(directory) as servers:
            for _ in range(rounds):
                for count, port in servers.items():
                    rate = wrk_close(port, seconds)
                    by_count[count].setdefault("rates", []).append(rate)
        for row in by_count.values():
            row["close_rps"] = statistics.median(row["rates"])
    return {"routes": by_count, "sni_names": by_names}


@contextmanager
def route_servers(directory: Path) -> Iterator[dict[int, int]]:
    """A twistd per route count, all at once; their ports by count."""
    with ExitStack() as stack:
        ports = {}
        for count in ROUTE_COUNTS:
            _, port = stack.enter_context(
                twistd(directory, f"routes-{count}", routes_config(count))
            )
            ports[count] = port
        yield ports


# -- output ----------------------------------------------------------------------


def chart(results: dict[str, Any], directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["connections"] if r["open"]]
    figure, (memory, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for state, marker in (("sniffing", "o"), ("idle", "s")):
        mine = [r for r in rows if r["state"] == state]
        opened = [r["open"] for r in mine]
        memory.plot(opened, [r["kib_per_connection"] for r in mine], marker=marker,
                    label=state)  # fmt: skip
        latency.plot(opened, [r["new_p99_ms"] for r in mine], marker=marker,
                     label=f"new connection p99, {state}")  # fmt: skip
        latency.plot(opened, [r["decided_p99_ms"] for r in mine], marker=marker,
                     linestyle="--", label=f"decided p99, {state}")  # fmt: skip
    for axes in (memory, latency):
        axes.set_xscale("log")
        axes.set_xlabel("connections held open")
        axes.grid(True, alpha=0.3)
    memory.set_ylabel("server RSS per connection (KiB)")
    latency.set_ylabel("request latency (ms)")
    memory.legend()
    latency.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(directory / "growth-connections.png", dpi=100)

    figure, (decision, rate) = plt.subplots(1, 2, figsize=(10, 4))
    counts = sorted(results["routes"]["routes"], key=int)
    routes = results["routes"]["routes"]
    decision.plot([int(c) for c in counts], [routes[c]["decision_us"] for c in counts],
                  marker="o", label="routes (the web route last)")  # fmt: skip
    sni = results["routes"]["sni_names"]
    decision.plot([int(c) for c in sni], list(sni.values()), marker="s",
                  label="names in one tls(sni) list")  # fmt: skip
    decision.set_xscale("log")
    decision.set_xlabel("routes, or server names")
    decision.set_ylabel("detector CPU per connection (µs)")
    decision.set_ylim(bottom=0)
    decision.legend()
    decision.grid(True, alpha=0.3)
    if all("close_rps" in routes[c] for c in counts):
        rate.plot([int(c) for c in counts], [routes[c]["close_rps"] for c in counts],
                  marker="o")  # fmt: skip
        rate.set_xscale("log")
        rate.set_ylim(bottom=0)
        rate.set_xlabel("routes")
        rate.set_ylabel("requests/s, one per connection")
        rate.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(directory / "growth-routes.png", dpi=100)
    plt.close("all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="levels up to 1,000, fewer probes and rounds")  # fmt: skip
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--chart", type=Path, help="a directory for the charts")
    options = parser.parse_args(argv)
    limit = raise_fd_limit()
    levels = [n for n in LEVELS if n <= (1000 if options.quick else LEVELS[-1])]
    reachable = [n for n in levels if n + 200 <= limit]  # each process's own
    for level in sorted(set(levels) - set(reachable)):
        print(f"skipping {level:,} open connections: RLIMIT_NOFILE is {limit:,}")
    count = 30 if options.quick else options.probes
    results: dict[str, Any] = {"fd_limit": limit, "connections": []}
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        print("| held | open | server RSS per connection (KiB) |"
              " new connection p50 / p99 (ms) |"
              " decided connection p50 / p99 (ms) |")  # fmt: skip
        print("|---|---|---|---|---|")
        for state in ("sniffing", "idle"):
            config = CONNECTIONS_CONFIG
            with twistd(directory, f"connections-{state}", config) as (pid, port):
                results["connections"] += asyncio.run(
                    connections_series(pid, port, state, reachable, count)
                )
        print()
        rounds = 1 if options.quick else options.rounds
        seconds = 1.0 if options.quick else options.seconds
        results["routes"] = routes_series(
            directory, rounds, seconds, 500 if options.quick else 5000
        )
    routes = results["routes"]
    print(
        "| routes | detector CPU per connection (µs) |"
        " one request per connection (req/s) |"
    )
    print("|---|---|---|")
    for count, row in routes["routes"].items():
        rate = f"{row['close_rps']:.0f}" if "close_rps" in row else "—"
        print(f"| {count} | {row['decision_us']:.1f} | {rate} |")
    print()
    print("| names in tls(sni) | detector CPU per connection (µs) |")
    print("|---|---|")
    for count, cost in routes["sni_names"].items():
        print(f"| {count:,} | {cost:.1f} |")
    if options.json:
        options.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    if options.chart:
        chart(json.loads(json.dumps(results)), options.chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
