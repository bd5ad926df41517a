"""Autobahn|Python's asyncio WebSocket client, run as its own process.

Autobahn chooses its framework once per process (txaio): a test process
that imported ``autobahn.asyncio`` can no longer load ``autobahn.twisted``,
which Twisted's plugin scan does when it meets Autobahn's endpoint plugin.
So the asyncio client runs here, apart, and prints what it saw as JSON::

    python tests/autobahn_client.py PORT PATH TLS CAFILE < messages.json

``messages.json`` is a list of ``[base64 payload, is_binary]``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
from typing import Any

from autobahn.asyncio.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)


async def echo(
    port: int, path: str, sent: list[tuple[bytes, bool]], cafile: str | None
) -> dict[str, Any]:
    """Send ``sent``, close after as many answers: the server header, the
    answers and the close code."""
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {"server": None, "messages": [], "close_code": None}
    closed: asyncio.Future[None] = loop.create_future()

    class Client(WebSocketClientProtocol):  # type: ignore[misc]
        def onConnect(self, response: Any) -> None:
            seen["server"] = response.headers.get("server")

        def onOpen(self) -> None:
            for payload, binary in sent:
                self.sendMessage(payload, isBinary=binary)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            seen["messages"].append([base64.b64encode(payload).decode(), isBinary])
            if len(seen["messages"]) == len(sent):
                self.sendClose(code=1000)

        def onClose(self, wasClean: bool, code: int, reason: str) -> None:
            seen["close_code"] = code
            if not closed.done():
                closed.set_result(None)

    secure: dict[str, Any] = {}
    if cafile:
        factory = WebSocketClientFactory(f"wss://localhost:{port}{path}")
        secure = {
            "ssl": ssl.create_default_context(cafile=cafile),
            "server_hostname": "localhost",
        }
    else:
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}")
    factory.protocol = Client
    await loop.create_connection(factory, "127.0.0.1", port, **secure)
    await asyncio.wait_for(closed, timeout=10)
    return seen


def main() -> None:
    """Read the messages from stdin, echo them, print the result."""
    port, path, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3] or None
    sent = [(base64.b64decode(p), bool(b)) for p, b in json.load(sys.stdin)]
    print(json.dumps(asyncio.run(echo(port, path, sent, cafile))))


if __name__ == "__main__":
    main()
