"""A real HAProxy in front, sending PROXY v1 and v2: every route sees the client.

HAProxy (Debian's ``haproxy``, started here on loopback) listens on
127.0.0.2 and connects to txcmux from 127.0.0.3 (``source``), so the address
txcmux's socket sees (HAProxy's) differs from the client's (127.0.0.1):
HTTP/1.1, h2c, HTTPS through a TLS route and gRPC to the in-process server
must all report 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import grpc
from twisted.internet import threads
from twisted.trial import unittest
from twisted.web import resource, server

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.grpcserver import GrpcServer
from txcmux.proxy import ProxyPrelude, proxy_header
from txcmux.tls import TLSTerminationFactory
from txcmux.web import WebFactory

from .grpc_support import service
from .grpc_support.net import listen, start_peer, tool, wait_until
from .tls_support import pki

DOCS = Path(__file__).resolve().parent.parent / "docs" / "load-balancers.md"


def haproxy_config(front: int, mux: int, send: str) -> str:
    """The configuration docs/load-balancers.md shows, on test addresses and ports.

    HAProxy listens on 127.0.0.2 and connects from 127.0.0.3, so that the
    address txcmux's socket sees differs from the client's.
    """
    page = DOCS.read_text("utf-8")
    section = page[page.index("## HAProxy in front") :]
    shown = section.split("```\n")[1]
    assert "bind :443" in shown and "server mux 127.0.0.1:8443 send-proxy-v2" in shown
    return shown.replace("bind :443", f"bind 127.0.0.2:{front}").replace(
        "server mux 127.0.0.1:8443 send-proxy-v2",
        f"server mux 127.0.0.1:{mux} {send} source 127.0.0.3",
    )


class WhoAmI(resource.Resource):
    """Says the client address the Site sees, and the PROXY header's version."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        header = proxy_header(request)
        version = header.version if header is not None else None
        host = request.getClientAddress().host  # type: ignore[attr-defined]
        return f"{host} v{version} {request.clientproto.decode()}".encode()


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


class _HAProxyInFront(unittest.TestCase):
    __test__ = False
    timeout = 60
    send: str
    version: int

    async def setUp(self) -> None:  # type: ignore[override]
        haproxy = tool("haproxy")
        grpc_server = GrpcServer([service.add_to], grace=0)
        grpc_server.startService()
        self.addCleanup(grpc_server.stopService)
        site = WebFactory(server.Site(WhoAmI()))
        web = Route("web", [matchers.http1(), matchers.http2()], site)
        files = pki()
        tls = TLSTerminationFactory(files.server_certificate, files.server_key, [web])
        self.mux = ProtocolSwitchingFactory(
            [
                Route("grpc", matchers.grpc(), grpc_server.factory(name="grpc")),
                Route("tls", matchers.tls(), tls),
                web,
            ],
            prelude=ProxyPrelude("required", ["127.0.0.3"]),
        )
        port = await listen(self, self.mux)
        self.mux_port = port.getHost().port
        self.front = _free_port("127.0.0.2")
        directory = Path(tempfile.mkdtemp(prefix="txcmux-haproxy-"))
        config = directory / "haproxy.cfg"
        config.write_text(haproxy_config(self.front, self.mux_port, self.send))
        await start_peer(
            self,
            [haproxy, "-db", "-f", str(config)],
            lambda: _listening("127.0.0.2", self.front),
            "haproxy to listen",
        )
        self.ca = files.ca

    async def curl(self, *arguments: str) -> str:
        done = await threads.deferToThread(
            subprocess.run,
            [tool("curl"), "-sS", "--max-time", "20", *arguments],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        output: str = done.stdout
        return output

    async def test_http1_h2c_and_https_see_the_client(self) -> None:
        url = f"http://127.0.0.2:{self.front}/"
        assert await self.curl(url) == f"127.0.0.1 v{self.version} HTTP/1.1"
        assert await self.curl("--http2-prior-knowledge", url) == (
            f"127.0.0.1 v{self.version} HTTP/2"
        )
        secure = f"https://localhost:{self.front}/"
        assert await self.curl(
            "--cacert",
            str(self.ca),
            "--resolve",
            f"localhost:{self.front}:127.0.0.2",
            secure,
        ) == (f"127.0.0.1 v{self.version} HTTP/2")
        assert self.mux.stats["routed.web"] == 2
        assert self.mux.stats["routed.tls"] == 1

    async def test_grpc_sees_the_client(self) -> None:
        def call() -> Any:
            with grpc.insecure_channel(f"127.0.0.2:{self.front}") as channel:
                return service.Stub(channel).peer(b"", timeout=20)

        answer = await threads.deferToThread(call)
        client, _ = answer.decode().split("|")
        assert client.startswith("127.0.0.1:"), answer

    async def test_a_client_that_bypasses_haproxy_is_refused(self) -> None:
        done = await threads.deferToThread(
            subprocess.run,
            [tool("curl"), "-sS", f"http://127.0.0.1:{self.mux_port}/"],
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0
        await wait_until(lambda: self.mux.stats["closed.proxy_untrusted"] == 1)


class HAProxySendProxyV1(_HAProxyInFront):
    __test__ = True
    send, version = "send-proxy", 1


class HAProxySendProxyV2(_HAProxyInFront):
    __test__ = True
    send, version = "send-proxy-v2", 2
