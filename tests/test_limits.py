"""Connection limits and the count of live connections, on in-memory transports."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txcmux import Limits, ProtocolSwitchingFactory, Rejection, Route, matchers
from txcmux._proxy._stage import ProxyPrelude

from .logs import captured_logs
from .recording import RecordingFactory

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Client:
    """One connection to the factory: a transport that calls its protocol."""

    def __init__(self, mux: ProtocolSwitchingFactory, host: str = "127.0.0.1"):
        peer = IPv4Address("TCP", host, 40000)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol: Protocol = mux.buildProtocol(peer)
        self.transport.protocol = self.protocol  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)
        self.lost = False
        self._settle()

    def send(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)  # type: ignore[attr-defined]
        self._settle()

    @property
    def refused(self) -> bool:
        return bool(self.transport.disconnecting)

    def close(self) -> None:
        if not self.lost:
            self.lost = True
            self.transport.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]

    def _settle(self) -> None:
        if self.transport.disconnecting:
            self.close()


class Mux:
    """A factory with a web and an ssh route whose targets record."""

    def __init__(self, limits: Limits | None = None, **options: object) -> None:
        self.clock = Clock()
        self.rejections: list[Rejection] = []
        self.web = RecordingFactory("web")
        self.ssh = RecordingFactory("ssh")
        route_limit = options.pop("web_max_connections", None)
        self.factory = ProtocolSwitchingFactory(
            [
                Route("web", matchers.http1(), self.web, max_connections=route_limit),  # type: ignore[arg-type]
                Route("ssh", matchers.ssh(), self.ssh),
            ],
            clock=self.clock,
            on_error=self.rejections.append,
            limits=limits,
            **options,  # type: ignore[arg-type]
        )

    def connect(self, host: str = "127.0.0.1") -> Client:
        return Client(self.factory, host)

    @property
    def connections(self):  # type: ignore[no-untyped-def]
        return self.factory.connections

    def assert_empty(self) -> None:
        """Nothing is counted once every connection has closed."""
        connections = self.factory.connections
        assert connections.active == 0
        assert connections.sniffing == 0
        assert not connections.per_ip
        assert not list(connections)
        assert all(route.load.active == 0 for route in self.factory.routes)


def test_max_connections_refuses_past_the_limit_and_admits_after_a_close() -> None:
    mux = Mux(Limits(max_connections=2))
    first, second = mux.connect(), mux.connect()
    second.send(GET)
    assert not first.refused and mux.web.built
    third = mux.connect()
    assert third.refused
    assert mux.factory.stats["closed.limit"] == 1
    assert mux.factory.stats["limited.max_connections"] == 1
    [rejection] = mux.rejections
    assert rejection.reason == "limit"
    assert "max_connections (2)" in rejection.detail
    second.close()  # a decided connection closing frees its place too
    fourth = mux.connect()
    assert not fourth.refused
    assert mux.connections.active == 2
    first.close()
    fourth.close()
    mux.assert_empty()


def test_past_max_sniffing_the_longest_undecided_makes_room() -> None:
    mux = Mux(Limits(max_sniffing=2))
    decided = mux.connect()
    decided.send(GET)
    oldest, middle = mux.connect(), mux.connect()
    oldest.send(b"GE")
    assert mux.connections.sniffing == 2  # the decided one does not count
    newest = mux.connect()
    assert oldest.refused and not middle.refused and not newest.refused
    assert mux.connections.sniffing == 2
    newest.send(GET)  # the new client is served
    assert len(mux.web.built) == 2
    assert mux.factory.stats["limited.max_sniffing"] == 1
    assert mux.rejections[0].detail == "the listener holds its max_sniffing (2)"
    assert mux.rejections[0].data == b"GE"
    for client in (decided, middle, newest):
        client.close()
    mux.assert_empty()


def test_max_connections_per_ip_is_per_client_address() -> None:
    mux = Mux(Limits(max_connections_per_ip=2))
    ones = [mux.connect("127.0.0.1") for _ in range(2)]
    assert mux.connect("127.0.0.1").refused
    other = mux.connect("127.0.0.2")
    assert not other.refused
    assert mux.connections.per_ip == {"127.0.0.1": 2, "127.0.0.2": 1}
    ones[0].send(GET)
    ones[0].close()
    assert not mux.connect("127.0.0.1").refused
    assert mux.factory.stats["limited.max_connections_per_ip"] == 1


def test_a_routes_max_connections_refuses_only_that_route() -> None:
    mux = Mux(web_max_connections=1)
    web = mux.connect()
    web.send(GET)
    second = mux.connect()
    second.send(GET)
    assert second.refused
    assert len(mux.web.built) == 1
    assert mux.factory.stats["limited.route_max_connections"] == 1
    assert mux.rejections[0].detail == "route 'web' holds its max_connections (1)"
    ssh = mux.connect()
    ssh.send(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert not ssh.refused and mux.ssh.built
    assert mux.factory.route("web").load.active == 1
    web.close()
    again = mux.connect()
    again.send(GET)
    assert not again.refused
    for client in (again, ssh):
        client.close()
    mux.assert_empty()


def test_every_way_a_connection_ends_is_uncounted() -> None:
    mux = Mux(Limits(max_connections=100, max_connections_per_ip=100))
    rejected = mux.connect()
    rejected.send(b"\x00garbage")
    assert rejected.refused
    timed_out = mux.connect()
    left_undecided = mux.connect()
    left_undecided.send(b"GE")
    left_undecided.close()
    decided = mux.connect()
    decided.send(GET)
    assert mux.connections.active == 2
    mux.clock.advance(5)
    assert timed_out.refused
    decided.close()
    mux.assert_empty()


def test_refusals_are_warned_about_at_most_every_ten_seconds() -> None:
    mux = Mux(Limits(max_connections=1))
    mux.connect().send(GET)
    with captured_logs() as lines:
        for _ in range(3):
            assert mux.connect().refused
        mux.clock.advance(10)
        assert mux.connect().refused
    warnings = [line for line in lines if "refusing connections" in line]
    assert len(warnings) == 2
    assert "the listener holds its max_connections (1)" in warnings[0]
    assert warnings[1].endswith("(2 more since the last warning like this)")
    assert mux.factory.stats["closed.limit"] == 4


def test_drain_closes_the_undecided_and_refuses_new_connections() -> None:
    mux = Mux()
    decided = mux.connect()
    decided.send(GET)
    undecided = mux.connect()
    undecided.send(b"GE")
    assert mux.factory.drain() == 1
    assert undecided.refused and not decided.refused
    assert mux.connect().refused
    assert mux.factory.stats["closed.draining"] == 2
    assert [r.reason for r in mux.rejections] == ["draining", "draining"]
    assert list(mux.connections) == [mux.web.built[0]]


def test_behind_proxy_the_per_ip_limit_counts_the_client_the_header_names() -> None:
    mux = Mux(
        Limits(max_connections_per_ip=1),
        prelude=ProxyPrelude("required", ("127.0.0.1",)),
    )
    header = b"PROXY TCP4 192.0.2.%d 198.51.100.1 5000 443\r\n"
    first = mux.connect()
    first.send(header % 1 + GET)
    other = mux.connect()
    other.send(header % 2 + GET)
    again = mux.connect()
    again.send(header % 1 + GET)
    assert not first.refused and not other.refused and again.refused
    assert mux.connections.per_ip == {"192.0.2.1": 1, "192.0.2.2": 1}
    first.close()
    other.close()
    mux.assert_empty()


def test_recent_rejections_are_kept_newest_last_and_bounded() -> None:
    mux = Mux()
    for i in range(25):
        mux.connect().send(b"\x00%d" % i)
    recent = list(mux.factory.recent)
    assert len(recent) == 20
    assert recent[-1].data == b"\x0024"


# -- out of file descriptors ---------------------------------------------------


class _Port:
    reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_accepting_pauses_near_the_descriptor_limit_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from txcmux import _process

    listed = tmp_path / "fd"  # stands in for /proc/self/fd
    listed.mkdir()
    monkeypatch.setattr(_process, "_OPEN_FDS", str(listed))
    monkeypatch.setattr(_process, "_soft_fd_limit", lambda: 400)
    clock, port = Clock(), _Port()
    watch = _process.DescriptorWatch(clock, lambda: [port])
    assert watch.low == 20  # a twentieth of 400

    def open_fds(count: int) -> None:
        for item in listed.iterdir():
            item.unlink()
        for i in range(count):
            (listed / str(i)).touch()

    open_fds(100)
    with captured_logs() as logs:
        watch.start()
        assert port.reading and not watch.paused
        open_fds(381)  # 19 free: under 20
        clock.advance(1)
        assert not port.reading and watch.paused and watch.pauses == 1
        clock.advance(0.2)  # paused, it looks again every 0.2 s
        open_fds(361)  # 39 free: not yet twice 20
        clock.advance(0.2)
        assert not port.reading
        open_fds(360)
        clock.advance(0.2)
        assert port.reading and not watch.paused
    about = [line for line in logs if "file descriptors" in line]
    assert len(about) == 2
    assert "381 of 400 file descriptors open" in about[0]
    assert "until 40 are free" in about[0]
    assert "40 file descriptors free again: accepting" in about[1]
    open_fds(390)
    clock.advance(1)
    assert not port.reading
    watch.stop()  # a drain stops the watch: the ports are closed anyway
    assert port.reading and clock.getDelayedCalls() == []
