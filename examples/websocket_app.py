"""A web site with a WebSocket echo at /ws, for examples/websocket.toml.

Run it with gRPC beside it, all on one port::

    pip install 'txcmux[websocket]'
    twistd -n cmux --config examples/websocket.toml
    open http://127.0.0.1:8080/          # the page echoes over ws://.../ws

The echo is served by Autobahn|Python (``autobahn.twisted``) two ways at once:

- :func:`make_factory` is the target of the ``ws`` route: the connection
  whose first request upgrades ``/ws`` goes to Autobahn from its first byte,
  and twisted.web never sees it;
- :func:`resource` puts txcmux's ``WebSocketResource`` at ``/ws`` in the
  Site too, for an upgrade the route cannot see: one sent on a keep-alive
  connection after other requests (the route's matcher reads the first
  request only).  It hands the connection to a protocol of an Autobahn
  factory as Autobahn's own ``autobahn.twisted.resource.WebSocketResource``
  does, but so that txcmux sees the connection close (Autobahn's swaps
  the protocol behind txcmux's back: the connection stays counted as
  active, and a drain waits for it until ``drain_timeout``).

Each way names itself in the handshake's ``Server`` header, so a client can
tell which one answered.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web.resource import Resource
from twisted.web.server import Request

from txcmux.websocket import WebSocketResource

#: The handshake's ``Server`` header from the ``ws`` route's factory.
ROUTE_SERVER = "txcmux-example-route"
#: The handshake's ``Server`` header from the Site's ``/ws`` resource.
SITE_SERVER = "txcmux-example-site"


class Echo(WebSocketServerProtocol):
    """Sends every message back as it came: text as text, binary as binary."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)

    def going_away(self) -> None:
        """When txcmux drains the port: close with 1001, Going Away.

        The drain calls it every 0.1 s until the connection is gone, so it
        closes only an open WebSocket.  ``sendClose`` takes only 1000 and
        3000-4999 (the codes for applications); 1001 needs the frame call.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=1001, reasonUtf8=b"server going away")


def _factory(server: str) -> WebSocketServerFactory:
    factory = WebSocketServerFactory(server=server)
    factory.protocol = Echo
    # Messages and frames over 1 MiB close the WebSocket (1009).
    factory.setProtocolOptions(
        maxMessagePayloadSize=1 << 20, maxFramePayloadSize=1 << 20
    )
    return factory


def make_factory() -> WebSocketServerFactory:
    """The ``ws`` route's target: Autobahn on the whole connection."""
    return _factory(ROUTE_SERVER)


PAGE = """\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>WebSocket echo</title></head>
<body>
<h1>WebSocket echo over txcmux</h1>
<pre id="log"></pre>
<p id="result">waiting</p>
<script>
"use strict";
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const result = document.getElementById("result");
const ws = new WebSocket("ws://" + location.host + "/ws");
ws.binaryType = "arraybuffer";
const got = [];
ws.onopen = () => {
  log("open");
  ws.send("hello over one port");
  ws.send(new Uint8Array([0, 1, 2, 255]).buffer);
};
ws.onmessage = (event) => {
  got.push(typeof event.data === "string"
    ? {text: event.data}
    : {binary: Array.from(new Uint8Array(event.data))});
  if (got.length === 2) {
    result.textContent = "echo: " + JSON.stringify(got);
    ws.close(1000);
  }
};
ws.onerror = () => { result.textContent = "error"; };
ws.onclose = (event) => {
  log("closed " + event.code);
  document.body.dataset.done = "1";  // what a test waits for
};
</script>
</body></html>
"""


class _Page(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")  # type: ignore[no-untyped-call]
        return PAGE.encode("utf-8")


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        return b"hello over " + request.clientproto + b"\n"


def resource() -> Any:
    """The Site's tree: ``/`` the echo page, ``/hello``, and ``/ws`` (Autobahn)."""
    root = Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"", _Page())  # type: ignore[no-untyped-call]
    root.putChild(b"hello", _Hello())  # type: ignore[no-untyped-call]
    root.putChild(b"ws", WebSocketResource(_factory(SITE_SERVER)))  # type: ignore[no-untyped-call]
    return root
