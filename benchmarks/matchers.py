"""What each matcher costs to decide: ``python -m benchmarks.matchers``.

For every built-in matcher, the time one call takes on the real client
opening it matches (whole, as one read) and on one it refuses (curl's
HTTP/1.1 request, or an SSH identification line for the HTTP matchers),
in microseconds: the median of ``--rounds`` rounds of ``--calls`` calls
each, on one core, printed as a Markdown table for docs/matchers.md.
Address matchers are timed bound to a connection (what the detector asks)
and their binding separately, since it happens once per connection.  The
last row is not a matcher: the frame-size guard the web target runs on
every HTTP/2 read after the decision (docs/web.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from twisted.internet.address import IPv4Address

from txcmux import matchers
from txcmux._web._h2guard import FrameLengths
from txcmux.testing import capture, http2_opening

HTTP1 = capture("curl-http1.1.bin")
SSH = capture("openssh-client.bin")
HELLO = capture("curl-tls-clienthello.bin")
GRPC = http2_opening("grpcio-unary")
CLIENT = IPv4Address("TCP", "10.1.2.3", 50000)
LOCAL = IPv4Address("TCP", "127.0.0.1", 8443)

# name, matcher, an opening it matches, one it refuses.
CASES: list[tuple[str, matchers.Matcher, bytes, bytes]] = [
    ("any", matchers.any(), HTTP1, b""),
    ("prefix", matchers.prefix(b"PING"), b"PING\r\n", HTTP1),
    ("http1_fast", matchers.http1_fast(), HTTP1, SSH),
    ("http1", matchers.http1(), HTTP1, SSH),
    ("http1_header", matchers.http1_header("host", "127.0.0.1"), HTTP1, SSH),
    ("http2", matchers.http2(), GRPC, HTTP1),
    ("grpc", matchers.grpc(), GRPC, HTTP1),
    ("tls", matchers.tls(), HELLO, HTTP1),
    ("tls(sni)", matchers.tls(sni="localhost"), HELLO, HTTP1),
    ("ssh", matchers.ssh(), SSH, HTTP1),
    ("regex", matchers.regex(rb"(CONNECT|STOMP)\r?\n", 16), b"STOMP\n", HTTP1),
    ("websocket", matchers.websocket(), capture("websockets-client.bin"), HTTP1),
    ("socks4", matchers.socks4(), capture("curl-socks4.bin"), HTTP1),
    ("socks5", matchers.socks5(), capture("curl-socks5.bin"), HTTP1),
    ("mqtt", matchers.mqtt(), capture("mosquitto-pub-mqtt5.bin"), HTTP1),
    ("xmpp", matchers.xmpp(), capture("slixmpp-client.bin"), HTTP1),
    ("openvpn", matchers.openvpn(), capture("openvpn-client.bin"), HTTP1),
    (
        "rdp",
        matchers.rdp(),
        bytes.fromhex("030000130ee000000000000100080003000000"),
        HTTP1,
    ),
    ("amqp", matchers.amqp(), capture("pika-amqp091.bin"), HTTP1),
]


def _bound(matcher: matchers.Matcher) -> matchers.Matcher:
    return matcher.bind(CLIENT, LOCAL)  # type: ignore[attr-defined, no-any-return]


def _per_call(function: Callable[[], object], calls: int, rounds: int) -> float:
    """The median time of one call of ``function``, in microseconds."""
    times = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            function()
        times.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    calls, rounds = options.calls, options.rounds
    print("| matcher | match (µs) | no match (µs) |")
    print("|---|---|---|")
    for name, matcher, hit, miss in CASES:
        yes = _per_call(lambda m=matcher, d=hit: m(d), calls, rounds)  # type: ignore[misc]
        no = _per_call(lambda m=matcher, d=miss: m(d), calls, rounds)  # type: ignore[misc]
        print(f"| {name} | {yes:.2f} | {no:.2f} |")
    inside = matchers.remote_ip("10.0.0.0/8")
    both = matchers.all_of(matchers.tls(sni="localhost"), inside)
    bound = _per_call(lambda: _bound(inside), calls, rounds)
    print(f"| remote_ip (binding, once per connection) | {bound:.2f} | — |")
    binding = _per_call(lambda: _bound(both), calls, rounds)
    asked = _bound(both)
    yes = _per_call(lambda: asked(HELLO), calls, rounds)
    print(f"| all_of(tls(sni), remote_ip): binding | {binding:.2f} | — |")
    print(f"| all_of(tls(sni), remote_ip): bound, asked | {yes:.2f} | — |")
    # The web target's HTTP/2 frame-size guard, on every read after the
    # decision: here, the frames of grpcio's opening as one read.
    frames = GRPC[len(matchers.PREFACE) :]

    def guard() -> object:
        lengths = FrameLengths()
        lengths.feed(matchers.PREFACE, 16384)
        return lengths.feed(frames, 16384)

    cost = _per_call(guard, calls, rounds)
    print(f"| HTTP/2 frame-size guard (web target), per read | {cost:.2f} | — |")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
