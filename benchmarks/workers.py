"""One worker against two: ``python -m benchmarks.workers``.

Starts ``twistd -n cmux`` on 127.0.0.1 with ``workers = 1`` and with
``workers = 2`` (the same web route serving a short page), and loads each
with wrk, alternating, for ``--rounds`` rounds of ``--seconds`` seconds:
HTTP/1.1 keep-alive, and one request per connection (``Connection:
close``).  Prints each round and the median requests per second, and the
ratio of two workers to one.  wrk runs on the same machine, so on 2 cores
it takes CPU from the workers: the ratio says what a second core buys here,
not on a machine with cores to spare.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """
listen = ["tcp:0:interface=127.0.0.1"]
workers = {workers}
[[route]]
name = "web"
match = ["http1"]
web = "txcmux.demo:resource"
"""


def start(directory: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    """twistd with ``workers``, and its port once every worker is ready."""
    config = directory / f"workers-{workers}.toml"
    config.write_text(CONFIG.format(workers=workers))
    ports = directory / f"ports-{workers}"
    ports.unlink(missing_ok=True)
    twistd = Path(sys.executable).parent / "twistd"
    process = subprocess.Popen(
        [
            str(twistd),
            "-n",
            "--pidfile=",
            "cmux",
            "--config",
            str(config),
            "--port-file",
            str(ports),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not ports.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"twistd with workers = {workers} did not start")
        time.sleep(0.05)
    return process, int(ports.read_text().split()[0])


def wrk(port: int, seconds: float, close: bool) -> float:
    """Requests per second wrk measured (2 threads, 64 connections)."""
    command = ["wrk", "-t2", "-c64", f"-d{seconds:g}s"]
    if close:
        command += ["-H", "Connection: close"]
    output = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/hello"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise SystemExit(f"wrk said nothing usable:\n{output}")
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt install wrk)")
        return 1
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        servers = {n: start(directory, n) for n in (1, 2)}
        try:
            results: dict[tuple[str, int], list[float]] = {}
            for round_ in range(options.rounds):
                for close in (False, True):
                    kind = "close" if close else "keep-alive"
                    for workers, (_, port) in servers.items():
                        rate = wrk(port, options.seconds, close)
                        results.setdefault((kind, workers), []).append(rate)
                        print(
                            f"round {round_ + 1} {kind} workers={workers}: {rate:.0f}/s"
                        )
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    print()
    print("| load | 1 worker (req/s) | 2 workers (req/s) | ratio |")
    print("|---|---|---|---|")
    for kind in ("keep-alive", "close"):
        one = statistics.median(results[(kind, 1)])
        two = statistics.median(results[(kind, 2)])
        print(f"| {kind} | {one:.0f} | {two:.0f} | {two / one:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
