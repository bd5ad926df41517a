"""WebSocket beside gRPC and the Site on one port: examples/websocket.toml end to end.

The example runs under ``twistd -n cmux`` with an admin listener added (to
read the routes' counts).  Autobahn|Python's own client echoes text and
binary messages over ``/ws``, once through the ``ws`` route (the
connection's first request upgrades) and once through the Site's
:class:`txcmux.websocket.WebSocketResource` (an upgrade after a GET on a
kept-alive connection), and both again over ``wss://`` through a TLS
route.  Headless Chromium opens a page from the Site whose script echoes
over ``new WebSocket(...)``, with the ws route and without it.  curl over
HTTP/1.1 and h2c and grpcio calls are answered while a WebSocket is open.
An HTTP/2 client sees no RFC 8441 (extended CONNECT) offered.  A stop
closes open WebSockets with 1001, Going Away.  Autobahn's own
``WebSocketResource`` is checked to leave its connection counted after it
closed (why txcmux has its own), and txcmux's, on in-memory transports,
to hand the connection over cleanly.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("autobahn")

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)

from tests.browser_support import CHROMIUM, chromium_dom
from tests.logs import captured_logs
from tests.test_twistd import (
    Running,
    assert_clean_exit,
    check_grpc,
    free_port,
    start_twistd,
)
from tests.tls_support import pki
from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.web import WebFactory
from txcmux.websocket import WebSocketResource

__all__ = ["start_twistd"]  # the fixture, used by name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROUTE_SERVER = "txcmux-example-route"
SITE_SERVER = "txcmux-example-site"


@dataclass
class Example:
    """examples/websocket.toml running, with its admin port."""

    running: Running
    admin: int

    @property
    def port(self) -> int:
        return self.running.port

    def routes(self) -> dict[str, tuple[int, int]]:
        """(accepted, active) of each route, from the admin's status.json."""
        url = f"http://127.0.0.1:{self.admin}/status.json"
        with urllib.request.urlopen(url, timeout=10) as answer:
            status = json.loads(answer.read())
        return {r["name"]: (r["accepted"], r["active"]) for r in status["routes"]}

    def wait_for_routes(self, expected: dict[str, tuple[int, int]]) -> None:
        """Until the routes' counts are ``expected`` (bounded: 10 s)."""
        deadline = time.monotonic() + 10
        while (seen := self.routes()) != expected:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)


TLS_ROUTE = """
[[route]]
name = "tls"
match = ["tls"]
tls = { certificate = "server.pem", key = "server.key", routes = ["grpc", "ws", "web"] }
"""


def write_config(tmp_path: Path, *, copy_app: bool = True, tls: bool = False) -> Path:
    """examples/websocket.toml on port 0 with an admin listener, and (unless
    the test wrote its own) examples/websocket_app.py next to it; with
    ``tls``, its routes again behind a TLS route, with the test certificate."""
    text = (EXAMPLES / "websocket.toml").read_text(encoding="utf-8")
    listen = 'listen = ["tcp:8080:interface=127.0.0.1"]'
    assert listen in text
    text = text.replace(listen, 'listen = ["tcp:0:interface=127.0.0.1"]')
    text += f'\n[admin]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
    if copy_app:
        shutil.copy(EXAMPLES / "websocket_app.py", tmp_path / "websocket_app.py")
    if tls:
        text += TLS_ROUTE
        shutil.copy(pki().server_certificate, tmp_path / "server.pem")
        shutil.copy(pki().server_key, tmp_path / "server.key")
    path = tmp_path / "websocket.toml"
    path.write_text(text, encoding="utf-8")
    return path


def admin_port(path: Path) -> int:
    """The admin listener's port in a file :func:`write_config` wrote."""
    return int(path.read_text().split('listen = "tcp:')[1].split(":")[0])


@pytest.fixture
def example(
    tmp_path: Path,
    start_twistd: Callable[..., Running],
) -> Iterator[Example]:
    path = write_config(tmp_path)
    yield Example(start_twistd("--config", str(path)), admin_port(path))


# -- clients -----------------------------------------------------------------


@dataclass
class Echoed:
    """What Autobahn's client saw of one WebSocket."""

    server: str | None = None
    messages: list[tuple[bytes, bool]] = field(default_factory=list)
    close_code: int | None = None


def autobahn_echo(
    port: int, path: str, sent: list[tuple[bytes, bool]], tls: bool = False
) -> Echoed:
    """Send ``sent`` with Autobahn's asyncio client (over TLS: ``wss://``),
    then close: what came back.  The client runs in a process of its own
    (tests/autobahn_client.py says why)."""
    messages = [
        [base64.b64encode(payload).decode(), binary] for payload, binary in sent
    ]
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("autobahn_client.py")),
            str(port),
            path,
            str(pki().ca) if tls else "",
        ],
        input=json.dumps(messages),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    seen = json.loads(done.stdout)
    return Echoed(
        server=seen["server"],
        messages=[(base64.b64decode(p), b) for p, b in seen["messages"]],
        close_code=seen["close_code"],
    )


class Socket:
    """A blocking WebSocket client on one socket (wsproto), for what
    Autobahn's client cannot do: upgrade after other requests, or wait."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []

    def request(self, data: bytes) -> bytes:
        """Send a plain HTTP/1.1 request; its response, read to its
        Content-Length."""
        self.sock.sendall(data)
        answer = b""
        while True:
            head, found, body = answer.partition(b"\r\n\r\n")
            if found:
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(body) >= length:
                    return answer
            chunk = self.sock.recv(65536)
            assert chunk, answer
            answer += chunk

    def wait(self, kind: type[Event]) -> Event:
        """The first event of ``kind``, reading until it comes."""
        while True:
            for event in self.events:
                if isinstance(event, kind):
                    self.events.remove(event)
                    return event
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())
            assert data, f"closed before {kind.__name__}: {self.events}"

    def upgrade(self, path: str = "/ws") -> str:
        """The handshake; the Server header of the answer."""
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target=path)))
        accepted = self.wait(AcceptConnection)
        assert isinstance(accepted, AcceptConnection)
        return dict(accepted.extra_headers)[b"server"].decode()

    def echo(self, text: str, data: bytes) -> tuple[str, bytes]:
        self.sock.sendall(self.ws.send(TextMessage(text)))
        self.sock.sendall(self.ws.send(BytesMessage(data)))
        got_text = self.wait(TextMessage)
        got_bytes = self.wait(BytesMessage)
        assert isinstance(got_text, TextMessage) and isinstance(got_bytes, BytesMessage)
        return got_text.data, bytes(got_bytes.data)

    def closed_with(self) -> int:
        """The code of the server's close frame."""
        close = self.wait(CloseConnection)
        assert isinstance(close, CloseConnection)
        return close.code

    def close(self) -> None:
        self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        assert self.closed_with() == 1000
        self.sock.close()


def curl(port: int, *options: str) -> str:
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "10", *options],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- the tests ---------------------------------------------------------------

BINARY = bytes(range(256)) * 1024  # 256 KiB, over several reads


def test_autobahn_client_echoes_through_the_ws_route(example: Example) -> None:
    sent = [("über one port".encode(), False), (BINARY, True), (b"", True)]
    seen = autobahn_echo(example.port, "/ws?client=autobahn", sent)
    assert seen.server == ROUTE_SERVER
    assert seen.messages == sent
    assert seen.close_code == 1000
    example.wait_for_routes({"grpc": (0, 0), "ws": (1, 0), "web": (0, 0)})
    assert_clean_exit(example.running, example.running.stop())


def test_an_upgrade_after_a_get_reaches_the_sites_resource(example: Example) -> None:
    client = Socket(example.port)
    answer = client.request(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(
        b"hello over HTTP/1.1\n"
    )
    assert client.upgrade() == SITE_SERVER
    assert client.echo("text", b"\x00\xff" * 1000) == ("text", b"\x00\xff" * 1000)
    example.wait_for_routes({"grpc": (0, 0), "ws": (0, 0), "web": (1, 1)})
    client.close()
    # The Site's connection is seen to close, though Autobahn had it.
    example.wait_for_routes({"grpc": (0, 0), "ws": (0, 0), "web": (1, 0)})
    # Autobahn's client through the same resource: a path the route leaves
    # to the Site (the matcher takes /ws only).
    seen = autobahn_echo(example.port, "/ws/", [(b"again", False)])
    assert (seen.server, seen.messages) == (SITE_SERVER, [(b"again", False)])
    assert_clean_exit(example.running, example.running.stop())


def test_everything_else_is_served_while_a_websocket_is_open(example: Example) -> None:
    port = example.port
    held = Socket(port)
    assert held.upgrade() == ROUTE_SERVER
    url = f"http://127.0.0.1:{port}/hello"
    with ThreadPoolExecutor(max_workers=4) as pool:
        http1 = pool.submit(curl, port, "--http1.1", url)
        h2c = pool.submit(curl, port, "--http2-prior-knowledge", url)
        grpc_call = pool.submit(check_grpc, port)
        other = pool.submit(autobahn_echo, port, "/ws", [(b"beside", True)])
        assert http1.result(timeout=60) == "hello over HTTP/1.1\n"
        assert h2c.result(timeout=60) == "hello over HTTP/2\n"
        grpc_call.result(timeout=60)
        assert other.result(timeout=60).messages == [(b"beside", True)]
    assert held.echo("still here", b"\x01") == ("still here", b"\x01")
    held.close()
    accepted = example.routes()
    assert accepted["ws"][0] == 2 and accepted["web"][0] == 2, accepted
    assert accepted["grpc"][0] >= 1, accepted
    assert_clean_exit(example.running, example.running.stop())


def test_wss_both_ways_behind_a_tls_route(
    tmp_path: Path,
    start_twistd: Callable[..., Running],
) -> None:
    """The same routes inside a tls route: wss:// to the ws route, and to
    the Site's resource (its connection a TLS layer's, handed over there)."""
    path = write_config(tmp_path, tls=True)
    example = Example(start_twistd("--config", str(path)), admin_port(path))
    sent = [(b"secret", False), (BINARY, True)]
    by_route = autobahn_echo(example.port, "/ws", sent, tls=True)
    assert (by_route.server, by_route.messages) == (ROUTE_SERVER, sent)
    by_site = autobahn_echo(example.port, "/ws/", sent, tls=True)
    assert (by_site.server, by_site.messages) == (SITE_SERVER, sent)
    assert by_route.close_code == by_site.close_code == 1000
    # Every connection came in through the tls route, and all have closed.
    example.wait_for_routes(
        {"grpc": (0, 0), "ws": (1, 0), "web": (1, 0), "tls": (2, 0)}
    )
    assert_clean_exit(example.running, example.running.stop())


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_chromium_echoes_over_new_websocket(example: Example) -> None:
    dom = chromium_dom(f"http://127.0.0.1:{example.port}/")
    expected = 'echo: [{"text":"hello over one port"},{"binary":[0,1,2,255]}]'
    assert expected in dom, dom[-3000:]
    assert "closed 1000" in dom, dom[-3000:]
    # The page came from the Site; Chromium opened its WebSocket on a
    # connection of its own, which the ws route took.
    example.wait_for_routes({"grpc": (0, 0), "ws": (1, 0), "web": (1, 0)})
    assert_clean_exit(example.running, example.running.stop())


WS_ROUTE = """
[[route]]
name = "ws"
match = [{ type = "websocket", path = "/ws" }]
factory = "websocket_app:make_factory"
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_chromium_echoes_through_the_site_alone(
    tmp_path: Path,
    start_twistd: Callable[..., Running],
) -> None:
    """Without the ws route the Site's resource serves the browser's
    WebSocket too: way (a) on its own."""
    path = write_config(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert WS_ROUTE in text
    path.write_text(text.replace(WS_ROUTE, ""), encoding="utf-8")
    example = Example(start_twistd("--config", str(path)), admin_port(path))
    dom = chromium_dom(f"http://127.0.0.1:{example.port}/")
    expected = 'echo: [{"text":"hello over one port"},{"binary":[0,1,2,255]}]'
    assert expected in dom and "closed 1000" in dom, dom[-3000:]
    example.wait_for_routes({"grpc": (0, 0), "web": (2, 0)})
    assert_clean_exit(example.running, example.running.stop())


def test_http2_offers_no_websocket(example: Example) -> None:
    """No SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441) from Twisted's HTTP/2,
    and the Site's /ws answers an HTTP/2 GET with 426."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    connection.send_headers(
        1,
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", "/ws"),
        ],
        end_stream=True,
    )
    settings: dict[int, int] = {}
    status = body = None
    ended = False
    with socket.create_connection(("127.0.0.1", example.port), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        received = b""
        while not ended:
            data = sock.recv(65536)
            assert data, "closed before the response ended"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settings.update(
                        {
                            code: change.new_value
                            for code, change in event.changed_settings.items()
                        }
                    )
                elif isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    received += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(connection.data_to_send())
        body = received
    assert settings, "the server sent no SETTINGS"
    assert settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0
    assert status == b"426"
    assert b"RFC 8441" in body
    assert_clean_exit(example.running, example.running.stop())


def test_a_stop_closes_open_websockets_with_going_away(example: Example) -> None:
    by_route = Socket(example.port)
    assert by_route.upgrade() == ROUTE_SERVER
    by_site = Socket(example.port)
    by_site.request(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert by_site.upgrade() == SITE_SERVER
    started = time.monotonic()
    process = example.running.process
    process.send_signal(signal.SIGTERM)
    assert by_route.closed_with() == 1001
    assert by_site.closed_with() == 1001
    for client in (by_route, by_site):
        client.sock.sendall(client.ws.send(CloseConnection(code=1001)))
    process.wait(timeout=30)
    output = example.running.log.read_text(encoding="utf-8")
    # Well before drain_timeout (5 s): no WebSocket was waited for.
    assert time.monotonic() - started < 4, output
    assert_clean_exit(example.running, output)


LEAKY_APP = """\
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web.resource import Resource


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


def make_factory():
    factory = WebSocketServerFactory(server="txcmux-example-route")
    factory.protocol = Echo
    return factory


def resource():
    root = Resource()
    root.putChild(b"ws", WebSocketResource(make_factory()))
    return root
"""


def test_autobahns_own_resource_leaves_its_connection_counted(
    tmp_path: Path,
    start_twistd: Callable[..., Running],
) -> None:
    """Why txcmux has a WebSocketResource: Autobahn's serves the WebSocket,
    but swaps the protocol behind txcmux's back, so its connection still
    counts as active once it has closed."""
    (tmp_path / "websocket_app.py").write_text(LEAKY_APP, encoding="utf-8")
    path = write_config(tmp_path, copy_app=False)
    example = Example(start_twistd("--config", str(path)), admin_port(path))
    seen = autobahn_echo(example.port, "/ws/", [(b"leak", False)])
    assert seen.messages == [(b"leak", False)] and seen.close_code == 1000
    # The client's close comes when the server has closed the TCP
    # connection (after the closing handshake), so the server has lost
    # the connection already: the Site's route should count it gone.
    assert example.routes()["web"] == (1, 1)
    assert_clean_exit(example.running, example.running.stop())


# -- WebSocketResource on in-memory requests ---------------------------------


class _Recorder(Protocol):
    received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_the_resource_refuses_other_than_http11() -> None:
    resource = WebSocketResource(Factory.forProtocol(_Recorder))
    request = DummyRequest([b""])
    request.clientproto = b"HTTP/1.0"
    body = resource.render(request)
    assert request.responseCode == 426
    assert request.responseHeaders.getRawHeaders(b"upgrade") == [b"websocket"]
    assert isinstance(body, bytes) and b"RFC 8441" in body
    assert dict(resource.stats) == {"refused.version": 1}


def test_the_resource_answers_500_when_the_factory_builds_nothing() -> None:
    class Refusing(Factory):
        def buildProtocol(self, addr: object) -> None:
            return None

    resource = WebSocketResource(Refusing())
    request = DummyRequest([b""])
    request.clientproto = b"HTTP/1.1"
    request.channel = SimpleNamespace(transport=object())
    assert resource.render(request) == b""
    assert request.responseCode == 500
    assert dict(resource.stats) == {"refused.factory": 1}


class _Transport(StringTransport):
    """A StringTransport that calls ``protocol`` on each read, as TCP does."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.7", 51234))
        self.protocol: Any = None

    def connect(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def receive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)


HANDSHAKE = (
    b"GET /ws?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def test_the_resource_hands_the_connection_over_and_it_stays_counted() -> None:
    """Through the detector and the web route, on an in-memory transport:
    the transport calls the new protocol, which gets the request again; the
    Site's channel no longer produces or times out; the connection is
    counted until the new protocol loses it."""
    clock = Clock()
    root = Resource()
    resource = WebSocketResource(Factory.forProtocol(_Recorder))
    root.putChild(b"ws", resource)
    site = Site(root, reactor=clock)
    mux = ProtocolSwitchingFactory(
        [Route("web", matchers.http1(), WebFactory(site))], clock=clock
    )
    transport = _Transport()
    transport.connect(mux.buildProtocol(transport.getPeer()))
    transport.receive(HANDSHAKE[:20])
    transport.receive(HANDSHAKE[20:])
    taken = transport.protocol
    assert isinstance(taken, _Recorder)
    assert taken.transport is transport
    assert taken.received.startswith(b"GET /ws?x=1 HTTP/1.1\r\n")
    assert b"Sec-Websocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" in taken.received
    assert taken.received.endswith(b"\r\n\r\n")
    assert transport.value() == b""  # the Site wrote nothing
    assert transport.producer is None
    assert dict(resource.stats) == {"taken": 1}
    clock.advance(0)
    assert clock.getDelayedCalls() == []  # no channel timeout left
    assert (mux.connections.active, list(mux.connections)) == (1, [taken])
    transport.receive(b"frames")
    assert taken.received.endswith(b"\r\n\r\nframes")
    taken.connectionLost(Failure(ConnectionDone()))
    assert (mux.connections.active, list(mux.connections)) == (0, [])


def test_a_transport_calling_someone_else_is_aborted_and_logged() -> None:
    """A channel whose transport does not call it (no ``protocol`` pointing
    at it): nothing to hand over, so the connection is aborted."""
    resource = WebSocketResource(Factory.forProtocol(_Recorder))
    root = Resource()
    root.putChild(b"ws", resource)
    site = Site(root, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    with captured_logs() as events:
        channel.dataReceived(HANDSHAKE)
    assert transport.disconnecting
    assert dict(resource.stats) == {"refused.transport": 1}
    assert any("cannot take the connection" in text for text in events)
