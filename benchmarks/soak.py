"""A soak: mixed traffic through ``twistd cmux`` for minutes, resources sampled.

::

    python -m benchmarks.soak --minutes 30            # the issue's soak
    python -m benchmarks.soak --minutes 1 --connections 100

One ``twistd cmux`` on 127.0.0.1 (routes ``grpc`` to the in-process gRPC
server, ``https`` terminating TLS in front of ``echo`` and ``web``, ``echo``
relaying to an echo server, ``web`` the demo site) is sent waves of
``--connections`` concurrent connections, one fifth each HTTP/1.1, h2c,
gRPC, HTTP/1.1 over TLS and relayed echo, every answer checked, until the
time is up.  Each interval a row gives the server's resident memory and
open file descriptors (from ``/proc``, once the closes of the last wave
have settled) and the requests and errors so far.
It exits 1 if any request failed or if RSS or descriptors at the end are
more than ``--rss-slack`` MiB / 10 descriptors above the first sample.

The traffic mix (:func:`mixed_load`) is the one ``tests/test_load.py`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("http1", "h2c", "grpc", "tls", "relay")

CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1"]
max_connections = 0
max_sniffing = 0
routes = ["grpc", "https", "echo", "web"]

[admin]
listen = "unix:{admin}"

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "https"
match = ["tls"]
tls.certificate = "server.pem"
tls.key = "server.key"
tls.routes = ["echo", "web"]

[[route]]
name = "echo"
match = [{{ type = "prefix", value = "ECHO" }}]
proxy = "tcp:host=127.0.0.1:port={echo}"

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
"""

ANSWERS = {
    "http1": b"Hello from txcmux over HTTP/1.1\n",
    "h2c": b"Hello from txcmux over HTTP/2 (h2c)\n",
    "tls": b"Hello from txcmux over HTTP/1.1 over TLS\n",
}


@dataclass
class Outcome:
    """What a load run saw: requests answered right, and every error."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


# -- one connection of each kind ----------------------------------------------------


class _Connection:
    """One open client connection that can ask again (``ask``) and close."""

    async def ask(self, i: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _Stream(_Connection):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader, self.writer = reader, writer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


class _Http1(_Stream):
    expected = ANSWERS["http1"]

    async def ask(self, i: int) -> None:
        self.writer.write(b"GET /hello HTTP/1.1\r\nHost: load\r\n\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"status {head[:20]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await self.reader.readexactly(length)
        if body != self.expected:
            raise AssertionError(f"body {body!r}")


class _Tls(_Http1):
    expected = ANSWERS["tls"]


class _Relay(_Stream):
    async def ask(self, i: int) -> None:
        message = b"ECHO %08d" % i if i == 0 else b"%012d" % i
        self.writer.write(message)
        if await self.reader.readexactly(len(message)) != message:
            raise AssertionError("echo differs")


class _H2c(_Stream):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        import h2.config
        import h2.connection

        super().__init__(reader, writer)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        self.writer.write(self.h2.data_to_send())

    async def ask(self, i: int) -> None:
        import h2.events

        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            stream,
            [
                (":method", "GET"),
                (":path", "/hello"),
                (":scheme", "http"),
                (":authority", "load"),
            ],
            end_stream=True,
        )
        self.writer.write(self.h2.data_to_send())
        body = b""
        status = ""
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise AssertionError("closed mid-stream")
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[":status"]
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    self.writer.write(self.h2.data_to_send())
                    if status != "200" or body != ANSWERS["h2c"]:
                        raise AssertionError(f"{status} {body!r}")
                    return
            self.writer.write(self.h2.data_to_send())


class _Grpc(_Connection):
    def __init__(self, port: int) -> None:
        import grpc

        from txcmux.demo import Message

        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.message = Message
        self.echo = self.channel.unary_unary(
            "/txcmux.demo.Demo/Echo",
            request_serializer=Message.SerializeToString,
            response_deserializer=Message.FromString,
        )

    async def ask(self, i: int) -> None:
        answer = await self.echo(self.message(text=str(i)), timeout=60)
        if answer.text != str(i):
            raise AssertionError(f"echo {answer.text!r}")

    async def close(self) -> None:
        await self.channel.close()


async def _open(kind: str, port: int, tls: ssl.SSLContext) -> _Connection:
    if kind == "grpc":
        return _Grpc(port)
    if kind == "tls":
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost"
        )
        return _Tls(reader, writer)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    opened: dict[str, type[_Stream]] = {"http1": _Http1, "h2c": _H2c, "relay": _Relay}
    return opened[kind](reader, writer)


async def mixed_load(
    port: int,
    connections: int,
    tls: ssl.SSLContext,
    all_open: Callable[[], Awaitable[None]] | None = None,
    opening: int = 64,
    timeout: float = 300,
) -> Outcome:
    """``connections`` concurrent connections, the kinds in turn: each opens
    (at most ``opening`` at once, the listen backlog being small), asks
    once, waits until every one has, (``all_open`` is then awaited, with
    all of them open), asks twice more and closes.  Bounded by ``timeout``."""
    outcome = Outcome()
    gate = asyncio.Semaphore(opening)
    everyone = asyncio.Barrier(connections + 1)

    async def one(n: int) -> None:
        kind = KINDS[n % len(KINDS)]
        connection: _Connection | None = None
        try:
            async with gate:
                connection = await _open(kind, port, tls)
                await connection.ask(0)
            outcome.requests[kind] += 1
        except Exception as error:  # counted, with what it was
            outcome.errors.append(f"{kind} #{n} opening: {error!r}")
        await everyone.wait()
        if connection is None:
            return
        try:
            for i in (1, 2):
                await connection.ask(n * 10 + i)
                outcome.requests[kind] += 1
        except Exception as error:
            outcome.errors.append(f"{kind} #{n}: {error!r}")
        finally:
            await connection.close()

    async def main() -> None:
        tasks = [asyncio.ensure_future(one(n)) for n in range(connections)]
        await everyone.wait()
        if all_open is not None:
            await all_open()
        await asyncio.gather(*tasks)

    try:
        await asyncio.wait_for(main(), timeout)
    except TimeoutError:
        outcome.errors.append(f"not done within {timeout} s")
    return outcome


async def echo_server() -> asyncio.Server:
    """An echo server on 127.0.0.1 for the relay route (port: sockets[0])."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)


# -- the soak ---------------------------------------------------------------------


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def process_usage(pid: int) -> tuple[int, int]:
    """(resident KiB, open descriptors) of process ``pid``, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def settled_usage(pid: int, timeout: float = 5.0) -> tuple[int, int]:
    """:func:`process_usage` once the descriptor count has stopped falling
    (closes still in flight when a wave ends), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = process_usage(pid)
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = process_usage(pid)
        if now[1] != last[1]:
            steady_since = time.monotonic()
        elif time.monotonic() - steady_since >= 0.5:
            return now
        last = now
    return last


def _twistd() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def start_server(directory: Path, echo_port: int) -> tuple[subprocess.Popen[str], int]:
    """``twistd -n cmux`` on the soak's config in ``directory``: (process, port)."""
    from benchmarks.server import make_certificate

    make_certificate(str(directory))
    config = directory / "soak.toml"
    config.write_text(
        CONFIG.format(admin=directory / "admin.sock", echo=echo_port), encoding="utf-8"
    )
    ports = directory / "ports"
    log = (directory / "twistd.log").open("w")
    process = subprocess.Popen(
        [
            *_twistd(),
            *("-n", "--pidfile=", "cmux", "--config", str(config)),
            *("--port-file", str(ports)),
        ],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=raise_file_limit,
    )
    log.close()
    deadline = time.monotonic() + 60
    while not ports.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(
                f"twistd did not start:\n{(directory / 'twistd.log').read_text()}"
            )
        time.sleep(0.05)
    return process, int(ports.read_text().split()[0])


async def soak(
    minutes: float, connections: int, interval: float, rss_slack: int
) -> int:
    raise_file_limit()
    directory = Path(tempfile.mkdtemp(prefix="txcmux-soak-"))
    echo = await echo_server()
    echo_port = echo.sockets[0].getsockname()[1]
    process, port = start_server(directory, echo_port)
    tls = ssl.create_default_context(cafile=str(directory / "server.pem"))
    total = Outcome()
    rows: list[tuple[float, int, int, int, int]] = []
    started = time.monotonic()
    next_sample = started
    try:
        print(f"{'minute':>7} {'RSS MiB':>8} {'fds':>6} {'requests':>9} {'errors':>7}")
        while True:
            now = time.monotonic()
            if now >= next_sample:
                rss, fds = settled_usage(process.pid)
                row = (
                    (now - started) / 60,
                    rss,
                    fds,
                    sum(total.requests.values()),
                    len(total.errors),
                )
                rows.append(row)
                print(
                    f"{row[0]:7.1f} {rss / 1024:8.1f} {fds:6d} {row[3]:9d} {row[4]:7d}",
                    flush=True,
                )
                next_sample += interval
            if now - started >= minutes * 60:
                break
            wave = await mixed_load(port, connections, tls)
            total.requests.update(wave.requests)
            total.errors.extend(wave.errors)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        echo.close()
    output = (directory / "twistd.log").read_text()
    failed = False
    for error in total.errors[:10]:
        print("error:", error)
    if total.errors:
        failed = True
    if "Traceback" in output:
        print("the server logged a traceback; see", directory / "twistd.log")
        failed = True
    # Steady: the last sample against the first taken after a minute's
    # warm-up (or the second, for a short soak).
    warm = next((row for row in rows if row[0] >= 1.0), rows[min(1, len(rows) - 1)])
    last = rows[-1]
    growth_mib = (last[1] - warm[1]) / 1024
    print(
        f"requests {sum(total.requests.values())} ({dict(total.requests)}),"
        f" errors {len(total.errors)}; RSS {warm[1] / 1024:.1f} -> {last[1] / 1024:.1f}"
        f" MiB, fds {warm[2]} -> {last[2]} (from minute {warm[0]:.1f})"
    )
    if growth_mib > rss_slack or last[2] - warm[2] > 10:
        print("not steady")
        failed = True
    if not failed:
        shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per row")
    parser.add_argument(
        "--rss-slack", type=int, default=16, help="MiB of growth allowed"
    )
    options = parser.parse_args(argv)
    return asyncio.run(
        soak(options.minutes, options.connections, options.interval, options.rss_slack)
    )


if __name__ == "__main__":
    raise SystemExit(main())
