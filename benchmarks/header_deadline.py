"""What the HTTP/1.1 header deadline costs: ``python -m benchmarks.header_deadline``.

A ``WebFactory`` behind a ``ProtocolSwitchingFactory`` on one in-memory
connection, answering ``--requests`` keep-alive requests (each one read),
with ``header_timeout`` off and at 60 s, interleaved over ``--rounds``
rounds; prints the median CPU time per request of each and their
difference.  The reactor is Twisted's own (not run: its ``callLater`` and
``seconds`` are what a served connection uses), so a timer started and
cancelled per request would show here as its real cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

from twisted.internet import reactor
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.web import WebFactory

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"hi"


def cpu_per_request(header_timeout: float, requests: int) -> float:
    """Microseconds of CPU per keep-alive request on one connection."""
    site = Site(_Hello(), reactor=reactor)  # type: ignore[no-untyped-call]
    web = WebFactory(site, header_timeout=header_timeout)
    mux = ProtocolSwitchingFactory([Route("web", matchers.http1(), web)])
    transport = StringTransport()
    detector = mux.buildProtocol(None)
    assert detector is not None
    detector.makeConnection(transport)
    detector.dataReceived(REQUEST)
    started = time.process_time()
    for _ in range(requests):
        transport.clear()
        detector.dataReceived(REQUEST)
    took = time.process_time() - started
    assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:40]
    detector.connectionLost(None)  # type: ignore[arg-type]
    return took / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    runs: dict[float, list[float]] = {0: [], 60: []}
    for _ in range(options.rounds):
        for timeout, times in runs.items():
            times.append(cpu_per_request(timeout, options.requests))
    off, on = (statistics.median(runs[timeout]) for timeout in (0, 60))
    print(f"header_timeout off: {off:.1f} us of CPU per request (median)")
    print(f"header_timeout 60 s: {on:.1f} us of CPU per request (median)")
    print(f"difference: {on - off:+.1f} us")


if __name__ == "__main__":
    main()
