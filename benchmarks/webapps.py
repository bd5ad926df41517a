"""Flask and FastAPI through txcmux and under their usual servers.

``python -m benchmarks.webapps`` (``--quick``: one round of one second).

For each app of examples/ (flask_app.py, fastapi_app.py, the ``/`` page
that answers a small JSON object), two servers on 127.0.0.1, started once:

- txcmux: ``twistd -n cmux`` with the app as a ``wsgi`` (16 threads) or
  ``asgi`` route behind a ``grpc`` route, as examples/flask.toml and
  examples/fastapi.toml have it;
- the app's usual server on a port of its own: Flask under gunicorn (one
  worker process, ``gthread`` with 16 threads), FastAPI under uvicorn (one
  process; plain ``pip install uvicorn``: h11 and asyncio's loop).

wrk loads each in turn (A B A B ...) for ``--rounds`` rounds of
``--seconds`` seconds, with HTTP/1.1 keep-alive and with one request per
connection (``Connection: close``).  Printed: the median requests per
second of each side with the median of the per-round ratios and their
spread, and the CPU time per request of every process of each server
(user + system, from /proc), which a busy machine disturbs far less than
throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BIN = Path(sys.executable).parent

CONFIG = """\
listen = ["tcp:{port}:interface=127.0.0.1"]
routes = ["grpc", "web"]

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
{target}
"""

APPS = {
    "flask": (
        'wsgi = "flask_app:app"\nwsgi_threads = 16',
        ["gunicorn", "-w", "1", "-k", "gthread", "--threads", "16", "flask_app:app"],
        "gunicorn (1 worker, 16 threads)",
    ),
    "fastapi": (
        'asgi = "fastapi_app:app"',
        ["uvicorn", "--log-level", "warning", "fastapi_app:app"],
        "uvicorn (1 process)",
    ),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited {process.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen in time")


def cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and every process below it (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    family, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family}
        grew = not more <= family
        family |= more
    return sum(times.get(pid, 0.0) for pid in family)


@dataclass
class Side:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


@contextlib.contextmanager
def servers(app: str, directory: Path) -> Iterator[tuple[Side, Side]]:
    target, usual, _ = APPS[app]
    shutil.copy(EXAMPLES / f"{app}_app.py", directory)
    port = free_port()
    config = directory / f"{app}.toml"
    config.write_text(CONFIG.format(port=port, target=target))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    txcmux = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "cmux", "--config", str(config)],
        cwd=directory,
        **quiet,  # type: ignore[call-overload]
    )
    direct_port = free_port()
    bind = ["-b", f"127.0.0.1:{direct_port}"] if app == "flask" else []
    where = [] if app == "flask" else ["--port", str(direct_port)]
    direct = subprocess.Popen(
        [str(BIN / usual[0]), *usual[1:], *bind, *where],
        cwd=directory,
        **quiet,  # type: ignore[call-overload]
    )
    sides = (Side("txcmux", txcmux, port), Side(usual[0], direct, direct_port))
    try:
        for side in sides:
            wait_listening(side.port, side.process, side.name)
        yield sides
    finally:
        for side in sides:
            side.process.terminate()
            side.process.wait(timeout=30)


def wrk(port: int, seconds: float, close: bool) -> tuple[float, int]:
    """Requests per second, and how many requests, wrk measured."""
    command = ["wrk", "-t1", "-c32", f"-d{seconds:g}s"]
    if close:
        command += ["-H", "Connection: close"]
    output = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if rate is None or count is None or "Non-2xx" in output:
        raise SystemExit(f"wrk said nothing usable:\n{output}")
    return float(rate.group(1)), int(count.group(1))


def measure(app: str, rounds: int, seconds: float) -> tuple[Side, Side]:
    with tempfile.TemporaryDirectory() as name, servers(app, Path(name)) as sides:
        for side in sides:  # warm up
            wrk(side.port, 1, close=False)
        for round_ in range(rounds):
            for load in ("keep-alive", "close"):
                for side in sides:
                    before = cpu_seconds(side.process.pid)
                    rate, count = wrk(side.port, seconds, load == "close")
                    used = cpu_seconds(side.process.pid) - before
                    side.rates.setdefault(load, []).append(rate)
                    side.cpu.setdefault(load, []).append(used / count * 1e6)
                    print(
                        f"{app} round {round_ + 1} {load} {side.name}:"
                        f" {rate:.0f}/s, {used / count * 1e6:.0f} us CPU/request",
                        flush=True,
                    )
        return sides


def table(results: dict[str, tuple[Side, Side]]) -> str:
    lines = [
        "| app | load | txcmux req/s | usual server | its req/s"
        " | ratio (median of rounds, spread) | CPU us/request txcmux / usual |",
        "|---|---|---|---|---|---|---|",
    ]
    for app, (ours, usual) in results.items():
        for load in ("keep-alive", "close"):
            ratios = [
                a / b for a, b in zip(ours.rates[load], usual.rates[load], strict=True)
            ]
            cpu_ours = statistics.median(ours.cpu[load])
            cpu_usual = statistics.median(usual.cpu[load])
            lines.append(
                f"| {app} | {load} | {statistics.median(ours.rates[load]):.0f}"
                f" | {APPS[app][2]} | {statistics.median(usual.rates[load]):.0f}"
                f" | {statistics.median(ratios):.2f} ({min(ratios):.2f}-"
                f"{max(ratios):.2f}) | {cpu_ours:.0f} / {cpu_usual:.0f}"
                f" ({cpu_ours / cpu_usual:.2f}x) |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    parser.add_argument("--only", choices=sorted(APPS), action="append")
    options = parser.parse_args(argv)
    if options.quick:
        options.rounds, options.seconds = 1, 1.0
    missing = [
        tool
        for tool in ("wrk", *(APPS[a][1][0] for a in options.only or APPS))
        if shutil.which(tool, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        is None
    ]
    if missing:
        print(f"not installed: {', '.join(missing)} (pip install '.[bench]'; wrk)")
        return 1
    results = {
        app: measure(app, options.rounds, options.seconds)
        for app in options.only or APPS
    }
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
