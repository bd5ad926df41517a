"""Byte-exact relaying: what one end sends is what the other end gets.

Random payloads in random write sizes, read in random sizes (some readers
slow), with half-closes in both directions and in either order, through
every relay path: a ``proxy`` route between plain sockets (the kernel
splices), the same route with splicing off (the bytes copied through
Python), TLS terminated in front of that route, and TLS passed through by
SNI to a TLS backend.  The sink backend (:mod:`tests.fault_support`)
checksums what it got and sends random bytes of its own; both digests are
compared with the payloads'.  A few MiB in CI; with ``TXCMUX_FULL=1``,
at least 1 GiB in total (256 MiB per path).
"""

from __future__ import annotations

import os
import random
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.fault_support import (
    Backend,
    Mux,
    connect,
    expected_digest,
    transfer,
    wait_for,
)
from tests.tls_support import pki

FULL = os.environ.get("TXCMUX_FULL") == "1"
pytestmark = pytest.mark.timeout(3600 if FULL else 120)

#: Bytes per path, both directions together.
PER_PATH = (256 << 20) if FULL else (3 << 20)

CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1"]
routes = ["passthrough", "https", "sink"]

[admin]
listen = "unix:{{admin}}"

[[route]]
name = "passthrough"
match = [{{ type = "tls", sni = "pass.example" }}]
proxy = "tcp:host=127.0.0.1:port={tls_sink}"

[[route]]
name = "https"
match = ["tls"]
tls.certificate = "server.pem"
tls.key = "server.key"
tls.routes = ["sink"]

[[route]]
name = "sink"
match = [{{ type = "prefix", value = "SINK" }}]
proxy = "tcp:host=127.0.0.1:port={sink}"
"""


class Sinks:
    def __init__(self) -> None:
        files = pki()
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(str(files.pass_certificate), str(files.pass_key))
        self.plain = Backend("sink")
        self.tls = Backend("sink", tls=server)

    def config(self) -> str:
        return CONFIG.format(sink=self.plain.port, tls_sink=self.tls.port)


@pytest.fixture(scope="module")
def sinks() -> Iterator[Sinks]:
    both = Sinks()
    yield both
    both.plain.close()
    both.tls.close()


@pytest.fixture(scope="module", params=["splice", "copy"])
def mux(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sinks: Sinks,
) -> Iterator[Mux]:
    running = Mux(
        tmp_path_factory.mktemp(request.param),
        sinks.config(),
        no_splice=request.param == "copy",
    )
    yield running
    output = running.stop()
    assert "Traceback" not in output, output


def sizes(seed: int, total: int, least: int) -> Iterator[tuple[int, int, int, bool]]:
    """(seed, up, down, slow) for transfers adding up to ``total`` bytes,
    with the edge cases first: nothing either way, then one way only.
    ``least``: the fewest bytes down (see the TLS note in the test)."""
    rng = random.Random(seed)
    yield seed, 0, least, False
    yield seed + 10, 0, 100_000, False
    yield seed + 20, 100_000, least, True
    left = total - 200_000
    n = 30
    while left > 0:
        up = min(left, rng.choice((1, 1000, 65537, 1 << 20, 16 << 20)))
        down = min(max(left - up, 0), rng.choice((1, 999, 300_000, 1 << 20, 16 << 20)))
        down = max(down, least)
        left -= up + down
        yield seed + n, up, down, rng.random() < 0.2 and up + down < 4 << 20
        n += 10


def client(mux: Mux, path: str) -> socket.socket | ssl.SSLSocket:
    sock = connect(mux.port)
    if path == "plain":
        return sock
    context = ssl.create_default_context(cafile=str(pki().ca))
    name = "pass.example" if path == "passthrough" else "localhost"
    return context.wrap_socket(sock, server_hostname=name)


@pytest.mark.parametrize("path", ["plain", "terminated", "passthrough"])
def test_every_byte_arrives_once_and_in_order(
    mux: Mux, sinks: Sinks, path: str
) -> None:
    """Both directions' sha256 and byte counts match the payloads, every
    transfer ends with a clean end of stream on both sides, and the relay's
    counters add up to what was sent.

    A TLS client here always waits for at least one byte back: Twisted's
    TLS ends the whole connection on the client's close_notify, so a TLS
    client that sends it gets no more of the answer (docs/security.md).
    """
    backend = sinks.tls if path == "passthrough" else sinks.plain
    route = {"plain": "sink", "terminated": "sink", "passthrough": "passthrough"}
    before = mux.counter("txcmux_relay_bytes_total", route=route[path], direction="up")
    moved = 0
    seconds = 0.0
    sent_up = 0
    base = {"plain": 1000, "terminated": 2_000_000, "passthrough": 3_000_000}[path]
    if "copy" in mux.directory.name:
        base += 500_000
    for seed, up, down, slow in sizes(base, PER_PATH, 0 if path == "plain" else 1):
        result = transfer(client(mux, path), seed, up, down, slow=slow)
        assert result.errors == [], (seed, up, down, result.errors)
        assert result.received == down, (seed, result.received, down)
        assert result.digest == expected_digest(seed, down), seed
        assert result.eof, seed
        wait_for(lambda seed=seed: seed in backend.digests, "the sink's digest")
        assert backend.digests[seed] == (expected_digest(seed, up), up, True), seed
        moved += up + down
        sent_up += len(f"SINK {seed} {up} {down}\n") + up
        seconds += result.seconds
    print(
        f"\n{mux.directory.name} {path}: {moved / 2**20:.1f} MiB in"
        f" {seconds:.2f} s, {moved / 2**20 / seconds:.0f} MiB/s"
    )
    if path != "passthrough":
        # TLS pass-through counts the encrypted bytes: only check the others.
        wait_for(
            lambda: (
                mux.counter(
                    "txcmux_relay_bytes_total", route=route[path], direction="up"
                )
                == before + sent_up
            ),
            "the relay's byte count",
        )
