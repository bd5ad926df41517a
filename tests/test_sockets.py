"""The switch on real tcp and unix sockets, with three routes and real clients."""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.interfaces import IAddress, IListeningPort, IStreamClientEndpoint
from twisted.trial import unittest
from twisted.web import resource, server

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux._detector import Detector

from .captures import capture


class Echo(protocol.Protocol):
    """Echoes everything, and says where it thinks it is."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.transport.write(
            f"peer={type(peer).__name__} host={type(host).__name__}\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Banner(protocol.Protocol):
    """A server-speaks-first protocol, like SSH: greets, then echoes lines."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"SSH-2.0-txcmux_test\r\n")

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"banner got: " + data)


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"hello over http/1.1"


class Client(protocol.Protocol):
    """Sends its chunks one per server read, and collects the reply."""

    def __init__(self, chunks: list[bytes], until: bytes) -> None:
        self.chunks = chunks
        self.until = until
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.send_next()

    def send_next(self) -> None:
        if self.chunks:
            assert self.transport is not None
            self.transport.write(self.chunks.pop(0))

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.until and self.until in self.received and not self.done.called:
            self.done.callback(self.received)

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:
            self.done.callback(self.received)
        self.closed.callback(None)


class StepDetector(Detector):
    """A detector that counts its reads and lets the client send the next piece."""

    reads: list[int]
    clients: list[Client]

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(len(data))
        super().dataReceived(data)
        client = self.clients[-1]
        if self._target is not None:  # decided: the rest may come at once
            client.chunks[:] = [b"".join(client.chunks)] if client.chunks else []
        if client.chunks:
            reactor.callLater(0, client.send_next)


class StepSwitch(ProtocolSwitchingFactory):
    reads: list[int]
    clients: list[Client]

    def buildProtocol(self, addr: IAddress | None) -> Detector:
        detector = StepDetector(self, addr)  # type: ignore[arg-type]
        detector.reads = self.reads
        detector.clients = self.clients
        return detector


def make_switch(
    on_timeout: str | None = None, sniff_timeout: float = 5.0
) -> StepSwitch:
    switch = StepSwitch(
        [
            Route(
                "echo", matchers.prefix(b"ECHO "), protocol.Factory.forProtocol(Echo)
            ),
            Route("web", [matchers.http1(), matchers.http2()], server.Site(Hello())),
            Route("ssh", matchers.ssh(), protocol.Factory.forProtocol(Banner)),
        ],
        on_timeout=on_timeout,
        sniff_timeout=sniff_timeout,
    )
    switch.reads = []
    switch.clients = []
    return switch


class _SocketCases(unittest.TestCase):
    """The same tests over tcp and over unix sockets (subclasses pick which)."""

    __test__ = False  # only the tcp and unix subclasses run
    timeout = 20
    address_line: bytes

    def listen(
        self, switch: ProtocolSwitchingFactory
    ) -> defer.Deferred[IListeningPort]:
        raise NotImplementedError

    def client_endpoint(self, port: IListeningPort) -> IStreamClientEndpoint:
        raise NotImplementedError

    @defer.inlineCallbacks
    def talk(self, switch: StepSwitch, chunks: list[bytes], until: bytes):
        port = yield self.listen(switch)
        self.addCleanup(port.stopListening)
        client = Client(list(chunks), until)
        switch.clients.append(client)
        yield endpoints.connectProtocol(self.client_endpoint(port), client)
        received = yield client.done
        client.transport.loseConnection()
        yield client.closed
        return received

    @defer.inlineCallbacks
    def test_three_routes_on_one_port(self):
        switch = make_switch()
        echoed = yield self.talk(switch, [b"ECHO hello"], b"hello")
        self.assertIn(b"ECHO hello", echoed)
        web = yield self.talk(switch, [capture("curl-http1.1.bin")], b"1.1")
        self.assertTrue(web.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"hello over http/1.1", web)
        ssh = yield self.talk(
            switch,
            [capture("openssh-client.bin")],
            b"banner got: " + capture("openssh-client.bin"),
        )
        self.assertTrue(ssh.startswith(b"SSH-2.0-txcmux_test\r\nbanner got: SSH-2.0-"))
        self.assertEqual(
            (
                switch.stats["routed.echo"],
                switch.stats["routed.web"],
                switch.stats["routed.ssh"],
            ),
            (1, 1, 1),
        )

    @defer.inlineCallbacks
    def test_one_byte_writes(self):
        switch = make_switch()
        request = capture("curl-http1.1.bin")
        web = yield self.talk(switch, [bytes([b]) for b in request], b"1.1")
        self.assertIn(b"hello over http/1.1", web)
        # Each byte was its own read until the decision (at the request line's end).
        line_end = request.index(b"\n") + 1
        self.assertEqual(switch.reads, [1] * line_end)

    @defer.inlineCallbacks
    def test_transport_addresses_and_after_switch_reads(self):
        switch = make_switch()
        echoed = yield self.talk(switch, [b"ECHO ", b"second", b"third"], b"third")
        self.assertIn(b"ECHO secondthird", echoed)
        self.assertTrue(echoed.startswith(self.address_line))
        # After the switch the transport calls the echo protocol directly.
        self.assertEqual(switch.reads, [5])

    @defer.inlineCallbacks
    def test_silent_client_goes_to_on_timeout(self):
        switch = make_switch(on_timeout="ssh", sniff_timeout=0.2)
        banner = yield self.talk(switch, [], b"\r\n")
        self.assertEqual(banner, b"SSH-2.0-txcmux_test\r\n")
        self.assertEqual(switch.stats["timeout_fallback"], 1)

    @defer.inlineCallbacks
    def test_unknown_protocol_is_closed(self):
        switch = make_switch()
        reply = yield self.talk(switch, [b"\x00\x00junk"], b"")
        self.assertEqual(reply, b"")
        self.assertEqual(switch.stats["closed.no_match"], 1)


class TCPTests(_SocketCases):
    __test__ = True
    address_line = b"peer=IPv4Address host=IPv4Address\n"

    def listen(
        self, switch: ProtocolSwitchingFactory
    ) -> defer.Deferred[IListeningPort]:
        return endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            switch
        )

    def client_endpoint(self, port: IListeningPort) -> IStreamClientEndpoint:
        return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)


class UNIXTests(_SocketCases):
    __test__ = True
    address_line = b"peer=UNIXAddress host=UNIXAddress\n"

    def listen(
        self, switch: ProtocolSwitchingFactory
    ) -> defer.Deferred[IListeningPort]:
        directory = tempfile.mkdtemp()
        self.path = str(Path(directory) / "mux.sock")
        return endpoints.UNIXServerEndpoint(reactor, self.path).listen(switch)

    def client_endpoint(self, port: IListeningPort) -> IStreamClientEndpoint:
        return endpoints.UNIXClientEndpoint(reactor, self.path)


class TLSListenerTests(unittest.TestCase):
    """The detector inside a TLS listener: its transport is TLSMemoryBIOProtocol."""

    timeout = 20

    @defer.inlineCallbacks
    def test_routes_decrypted_bytes_and_repoints_the_tls_protocol(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from twisted.internet import ssl

        from .tls_support import pki

        files = pki()
        leaf, *chain = x509.load_pem_x509_certificates(
            files.server_certificate.read_bytes()
        )
        key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
        options = ssl.CertificateOptions(
            privateKey=key, certificate=leaf, extraCertChain=chain
        )
        switch = make_switch()
        port = yield endpoints.SSL4ServerEndpoint(
            reactor, 0, options, interface="127.0.0.1"
        ).listen(switch)
        self.addCleanup(port.stopListening)
        authority = ssl.Certificate.loadPEM(files.ca.read_text())
        client = Client([b"ECHO ", b"over ", b"tls"], b"tls")
        switch.clients.append(client)
        yield endpoints.connectProtocol(
            endpoints.SSL4ClientEndpoint(
                reactor,
                "127.0.0.1",
                port.getHost().port,
                ssl.optionsForClientTLS("localhost", trustRoot=authority),
            ),
            client,
        )
        received = yield client.done
        tls_protocol = client.transport
        self.assertIn(b"ECHO over tls", received)
        self.assertTrue(received.startswith(b"peer=IPv4Address host=IPv4Address\n"))
        self.assertEqual(switch.stats["routed.echo"], 1)
        self.assertEqual(switch.reads, [5])  # then the TLS protocol called Echo
        tls_protocol.loseConnection()
        yield client.closed
