"""Relays that send a PROXY header: to a recording backend and to a real nginx."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import endpoints, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from txcmux import ConfigurationError, ProtocolSwitchingFactory, Route, matchers
from txcmux.proxy import ProxyHeader, ProxyPrelude, build_v1, parse
from txcmux.relay import RelayFactory

from .captures import capture
from .grpc_support.net import RawClient, listen, start_peer, tool, wait_until


class Recorder(protocol.Protocol):
    """A backend that keeps every byte it is sent and answers nothing."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


def _client_factory(client: protocol.Protocol) -> protocol.Factory:
    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: client  # type: ignore[method-assign]
    return factory


def test_send_proxy_takes_v1_v2_or_nothing() -> None:
    with pytest.raises(ConfigurationError, match="send_proxy is 'v3'; expected \"v1\""):
        RelayFactory("tcp:host=127.0.0.1:port=1", send_proxy="v3")


class SendToARecordingBackend(unittest.TestCase):
    timeout = 30

    async def relay_once(
        self,
        payload: bytes,
        *,
        prelude: ProxyPrelude | None = None,
        forwarded: bytes | None = None,
        **relay: Any,
    ) -> tuple[ProxyHeader, bytes, int]:
        """Send ``payload`` through a mux whose routes relay with ``relay``.

        Returns the header the backend got, what followed it (once it ends
        with ``forwarded``, by default the payload) and the
        mux's port (the client's address is left in ``self.client_address``).
        """
        forwarded = payload if forwarded is None else forwarded
        received: list[bytes] = []
        backend = await listen(
            self, protocol.Factory.forProtocol(lambda: Recorder(received))
        )
        relaying = RelayFactory(
            f"tcp:host=127.0.0.1:port={backend.getHost().port}", **relay
        )
        mux = ProtocolSwitchingFactory(
            [
                Route("echo", matchers.prefix(b"ECHO "), relaying),
                Route("pass", matchers.tls(sni="localhost"), relaying),
            ],
            prelude=prelude,
        )
        port = await listen(self, mux)
        client = RawClient(payload)
        await endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port
        ).connect(_client_factory(client))
        assert client.transport is not None
        self.client_address = client.transport.getHost()
        await wait_until(
            lambda: b"".join(received).endswith(forwarded), what="the client's bytes"
        )
        whole = b"".join(received)
        header = parse(whole)
        assert isinstance(header, ProxyHeader), (header, whole[:64])
        assert client.transport is not None
        client.transport.loseConnection()
        await client.done
        await wait_until(lambda: relaying.active == 0, what="the relay to close")
        return header, whole[header.length :], port.getHost().port

    async def test_v1_names_the_client_and_comes_before_its_bytes(self) -> None:
        payload = b"ECHO " + bytes(range(256)) * 4096  # 1 MiB: spliced, if it can
        header, rest, mux_port = await self.relay_once(payload, send_proxy="v1")
        assert header.version == 1
        assert header.source == self.client_address
        assert header.destination == IPv4Address("TCP", "127.0.0.1", mux_port)
        assert rest == payload

    async def test_v2_with_a_unique_id_and_a_checksum(self) -> None:
        header, rest, _ = await self.relay_once(
            b"ECHO hi", send_proxy="v2", proxy_checksum=True
        )
        assert header.version == 2
        assert header.unique_id is not None and len(header.unique_id) == 16
        assert header.tlv(0x03) is not None  # CRC32C, checked by parse()
        assert header.authority is None and header.alpn is None
        assert rest == b"ECHO hi"

    async def test_the_original_client_of_an_incoming_header_is_passed_on(
        self,
    ) -> None:
        incoming = build_v1(
            IPv4Address("TCP", "192.0.2.7", 5000),
            IPv4Address("TCP", "198.51.100.1", 443),
        )
        header, rest, _ = await self.relay_once(
            incoming + b"ECHO hi",
            prelude=ProxyPrelude("required", ["127.0.0.1"]),
            forwarded=b"ECHO hi",
            send_proxy="v2",
        )
        assert header.source == IPv4Address("TCP", "192.0.2.7", 5000)
        assert header.destination == IPv4Address("TCP", "198.51.100.1", 443)
        assert rest == b"ECHO hi"

    async def test_sni_pass_through_sends_the_server_name(self) -> None:
        hello = capture("curl-tls-clienthello.bin")
        header, rest, _ = await self.relay_once(hello, send_proxy="v2")
        assert header.authority == "localhost"
        assert rest == hello


NGINX_CONFIG = """\
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            return 200 "$proxy_protocol_addr $remote_addr\\n";
        }}
    }}
}}
"""


class SendToNginx(unittest.TestCase):
    """nginx with ``listen ... proxy_protocol`` sees the client, v1 and v2."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        nginx = tool("nginx")
        probe = await listen(self, protocol.Factory.forProtocol(protocol.Protocol))
        self.nginx_port = probe.getHost().port
        await probe.stopListening()
        directory = Path(tempfile.mkdtemp(prefix="txcmux-nginx-"))
        directory.chmod(0o755)
        (directory / "nginx.conf").write_text(
            NGINX_CONFIG.format(dir=directory, port=self.nginx_port)
        )
        await start_peer(
            self,
            [nginx, "-p", str(directory), "-c", str(directory / "nginx.conf")],
            lambda: _connects(self.nginx_port),
            "nginx to listen",
        )

    async def through(self, version: str, incoming: bytes = b"") -> bytes:
        """nginx's answer to a GET from 127.0.0.2, relayed with ``send_proxy``.

        ``incoming`` is a PROXY header the client itself sends first.
        """
        relay = RelayFactory(
            f"tcp:host=127.0.0.1:port={self.nginx_port}", send_proxy=version
        )
        prelude = ProxyPrelude("required", ["127.0.0.2"]) if incoming else None
        mux = ProtocolSwitchingFactory(
            [Route("web", matchers.http1(), relay)], prelude=prelude
        )
        port = await listen(self, mux)
        client = RawClient(
            incoming + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        await endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port, bindAddress=("127.0.0.2", 0)
        ).connect(_client_factory(client))
        await client.done
        assert client.received.startswith(b"HTTP/1.1 200"), client.received
        return client.received.split(b"\r\n\r\n", 1)[1]

    async def test_v1_and_v2(self) -> None:
        # nginx's own peer is the relay (127.0.0.1); the header names the client.
        for version in ("v1", "v2"):
            assert await self.through(version) == b"127.0.0.2 127.0.0.1\n"

    async def test_a_client_that_came_in_through_a_header(self) -> None:
        incoming = build_v1(
            IPv4Address("TCP", "192.0.2.7", 5000),
            IPv4Address("TCP", "198.51.100.1", 80),
        )
        for version in ("v1", "v2"):
            answer = await self.through(version, incoming)
            assert answer == b"192.0.2.7 127.0.0.1\n"


def _connects(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
