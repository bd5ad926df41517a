"""The ASGI ``websocket`` scope: an HTTP/1.1 upgrade taken from twisted.web.

twisted.web parses the upgrade request like any other; :func:`start_websocket`
then takes the connection from the HTTP channel (the transport calls the
:class:`WebSocketConnection` directly from then on, as after any txcmux
handoff), and wsproto (the sans-IO WebSocket library uvicorn uses too)
does the handshake and the frames.  The app accepts or rejects the
handshake (a rejection is a 403, and the connection closes, as in
uvicorn); messages go both ways with the same rules as HTTP: in order,
and the app waits only while the connection is full.  Incoming messages
wait in a queue of at most :data:`QUEUED` messages, past which the
connection stops reading until the app catches up.

WebSocket over HTTP/2 (RFC 8441, extended CONNECT) is not offered.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    TextMessage,
)
from wsproto.events import (
    Request as Handshake,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError
from zope.interface import implementer

from .._drain import http_channel_of
from .._handoff import install
from .._log import describe_peer, log
from .._web._deadline import release
from ._asgi import ASGIApplication, scope_for
from ._loop import Outbox

#: Messages received and not yet taken by the app, before reading pauses.
QUEUED = 16
_CLOSED_ABNORMALLY = 1006


class ClientDisconnected(OSError):
    """The app sent on a WebSocket whose client has gone (ASGI spec 2.4)."""


def is_websocket(request: Any) -> bool:
    """Whether ``request`` asks to upgrade to WebSocket (HTTP/1.1 only)."""
    upgrade = request.getHeader(b"upgrade")
    return (
        request.clientproto == b"HTTP/1.1"
        and upgrade is not None
        and upgrade.lower() == b"websocket"
    )


def start_websocket(app: ASGIApplication, request: Any) -> None:
    """Take ``request``'s connection from its HTTP channel and run the app on it."""
    channel: Any = request.channel
    transport: Any = channel.transport
    connection = WebSocketConnection(app, request)
    # What the transport calls: the channel, or a proxy in front of it.
    current = next(
        (
            protocol
            for protocol in (
                getattr(transport, name, None)
                for name in ("protocol", "wrappedProtocol")
            )
            if protocol is not None and http_channel_of(protocol) is channel
        ),
        None,
    )
    channel.setTimeout(None)
    release(channel)  # the web target's header deadline too
    # The channel stops being the transport's producer (the connection
    # registers itself when it is made) and its protocol.
    transport.unregisterProducer()
    if current is None or not install(transport, current, connection):
        log.error(
            "txcmux: cannot take the connection from {channel} for a WebSocket",
            channel=channel,
        )
        transport.abortConnection()
        return
    connection.makeConnection(transport)  # type: ignore[no-untyped-call]
    connection.handshake()


@implementer(IPushProducer)
class WebSocketConnection(Protocol):
    """One WebSocket: wsproto on the transport, the app on its loop.

    ``loop_`` attributes belong to the app's thread, the rest to the reactor's.
    """

    def __init__(self, app: ASGIApplication, request: Any) -> None:
        self.app = app
        self.request: Any = request  # twisted.web's Request is not typed
        self.transport: Any = None
        self.ws = WSConnection(ConnectionType.SERVER)
        self.scope = scope_for(request, "websocket", "ws")
        self.scope["state"] = dict(app.state)
        self.accepted = False
        self.closed = False  # no more frames either way
        self.queued = 0
        self.paused = False
        self.partial: list[Any] = []  # the pieces of a fragmented message
        self.partial_size = 0
        # The app's side:
        self.loop_inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.loop_outbox = Outbox()
        self.loop_gone = False
        self.loop_answered = False  # accepted or closed

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def handshake(self) -> None:
        """Give wsproto the upgrade request twisted.web parsed, then start the app."""
        request = self.request
        lines = [b"%s %s HTTP/1.1" % (request.method, request.uri)]
        for name, values in request.requestHeaders.getAllRawHeaders():
            lines.extend(b"%s: %s" % (name, value) for value in values)
        try:
            self.ws.receive_data(b"\r\n".join(lines) + b"\r\n\r\n")
            events = list(self.ws.events())
        except RemoteProtocolError as error:
            self._refuse(error.event_hint, f"a bad WebSocket handshake: {error}")
            return
        handshake = next((e for e in events if isinstance(e, Handshake)), None)
        if handshake is None:
            self._refuse(None, "a WebSocket handshake wsproto did not take")
            return
        self.scope["subprotocols"] = list(handshake.subprotocols)
        self.loop_inbox.put_nowait({"type": "websocket.connect"})
        self.app.app_loop.run(self._call_app()).addBoth(self._app_returned)

    def _refuse(self, event: object, why: str) -> None:
        log.warn("txcmux: closed {peer}: {why}", peer=self._peer(), why=why)
        rejection = (
            event if isinstance(event, RejectConnection) else RejectConnection(400)
        )
        self._send_event(rejection)
        self._close()

    def _peer(self) -> str:
        return describe_peer(self.request.getClientAddress())

    # -- the app's thread ----------------------------------------------------

    async def _call_app(self) -> None:
        await self.app.wait_started()
        await self.app.application(self.scope, self._receive, self._send)

    async def _receive(self) -> dict[str, Any]:
        message = await self.loop_inbox.get()
        if message["type"] == "websocket.receive":
            self.app.reactor.callFromThread(self._taken)
        return message

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind not in ("websocket.accept", "websocket.send", "websocket.close"):
            raise ValueError(f"unexpected message on the websocket scope: {kind!r}")
        if self.loop_gone:
            raise ClientDisconnected(f"the client has gone; cannot send {kind}")
        if kind == "websocket.send" and not self.loop_answered:
            raise RuntimeError("websocket.send before websocket.accept")
        if kind != "websocket.send":
            if self.loop_answered and kind == "websocket.accept":
                raise RuntimeError("websocket.accept sent twice")
            self.loop_answered = True
        await self.loop_outbox.wait()
        size = len(message.get("text") or message.get("bytes") or b"")
        self.loop_outbox.sent(size)
        self.app.reactor.callFromThread(self._from_app, dict(message), size)

    # -- the reactor's thread ------------------------------------------------

    def _from_app(self, message: dict[str, Any], size: int) -> None:
        self.app.app_loop.call_soon(self.loop_outbox.written, size)
        if self.closed:
            return
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted = True
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            self._send_event(
                AcceptConnection(
                    subprotocol=message.get("subprotocol"),
                    extensions=[PerMessageDeflate()],
                    extra_headers=headers,
                )
            )
        elif kind == "websocket.send":
            text, data = message.get("text"), message.get("bytes")
            self._send_event(
                TextMessage(data=text)
                if text is not None
                else BytesMessage(data=bytes(data or b""))
            )
        elif self.accepted:  # websocket.close
            self._send_event(
                CloseConnection(
                    code=int(message.get("code", 1000)),
                    reason=message.get("reason") or None,
                )
            )
            self._close()
        else:  # a close before accepting: the handshake is refused
            self._send_event(RejectConnection(status_code=403))
            self._close()

    def _send_event(self, event: Any) -> None:
        try:
            data = self.ws.send(event)
        except LocalProtocolError as error:
            log.error(
                "txcmux: ASGI app {app}: cannot send {event} on the WebSocket"
                " {uri}: {error}",
                app=self.app.name,
                event=type(event).__name__,
                uri=self.request.uri.decode("latin-1"),
                error=error,
            )
            if isinstance(event, AcceptConnection):  # still a handshake: a 500
                data = self.ws.send(RejectConnection(status_code=500))
                self.transport.write(data)
            self._close()
            return
        if data and self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self.ws.receive_data(data)
        try:
            for event in self.ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    self._message(event)
                elif isinstance(event, Ping):
                    self._send_event(event.response())
                elif isinstance(event, CloseConnection):
                    self._send_event(event.response())
                    self._gone(event.code)
                    self._close()
                if self.closed:
                    return
        except RemoteProtocolError as error:
            log.warn(
                "txcmux: closed {peer}: a bad WebSocket frame: {error}",
                peer=self._peer(),
                error=error,
            )
            self._send_event(CloseConnection(code=1002))
            self._gone(1002)
            self._close()

    def _message(self, event: TextMessage | BytesMessage) -> None:
        self.partial.append(event.data)
        self.partial_size += len(event.data)
        if self.partial_size > self.app.max_message_size:
            log.warn(
                "txcmux: closed {peer}: a WebSocket message over {limit} bytes",
                peer=self._peer(),
                limit=self.app.max_message_size,
            )
            self._send_event(CloseConnection(code=1009))
            self._gone(1009)
            self._close()
            return
        if not event.message_finished:
            return
        if isinstance(event, TextMessage):
            message: dict[str, Any] = {
                "type": "websocket.receive",
                "text": "".join(self.partial),
            }
        else:
            message = {"type": "websocket.receive", "bytes": b"".join(self.partial)}
        self.partial, self.partial_size = [], 0
        self.queued += 1
        self.app.app_loop.call_soon(self.loop_inbox.put_nowait, message)
        if self.queued >= QUEUED and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def _taken(self) -> None:
        self.queued -= 1
        if self.paused and self.queued <= QUEUED // 2 and not self.closed:
            self.paused = False
            self.transport.resumeProducing()

    def _gone(self, code: int) -> None:
        """Tell the app the client has gone (once)."""
        if self.closed:
            return
        self.closed = True
        message = {"type": "websocket.disconnect", "code": code}

        def note() -> None:
            self.loop_gone = True
            self.loop_outbox.close()
            self.loop_inbox.put_nowait(message)

        self.app.app_loop.call_soon(note)

    def _close(self) -> None:
        self._gone(_CLOSED_ABNORMALLY)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone(_CLOSED_ABNORMALLY)
        if self.transport is not None:
            self.transport.unregisterProducer()

    def going_away(self) -> None:
        """The service drains: close with 1001 (Going Away), once accepted."""
        if self.accepted and not self.closed:
            self._send_event(CloseConnection(code=1001))
            self._close()

    def _app_returned(self, result: object) -> None:
        if isinstance(result, Failure) and self.closed:
            # Most often the app's own "the client left" error (Starlette's
            # WebSocketDisconnect): a line, not a traceback.
            log.info(
                "txcmux: ASGI app {app} raised {error!r} on WebSocket {uri}"
                " after it closed",
                app=self.app.name,
                error=result.value,
                uri=self.request.uri.decode("latin-1"),
            )
            return
        if isinstance(result, Failure):
            log.failure(
                "txcmux: ASGI app {app} raised on WebSocket {uri}",
                result,
                level=LogLevel.error,
                app=self.app.name,
                uri=self.request.uri.decode("latin-1"),
            )
        if self.closed:
            return
        if not self.accepted:
            if not isinstance(result, Failure):
                log.error(
                    "txcmux: ASGI app {app} returned without accepting or closing"
                    " the WebSocket {uri}",
                    app=self.app.name,
                    uri=self.request.uri.decode("latin-1"),
                )
            self._send_event(RejectConnection(status_code=500))
        else:
            self._send_event(
                CloseConnection(code=1011 if isinstance(result, Failure) else 1000)
            )
        self._close()

    # -- IPushProducer: the connection is full -------------------------------

    def pauseProducing(self) -> None:
        self.app.app_loop.call_soon(self.loop_outbox.pause)

    def resumeProducing(self) -> None:
        self.app.app_loop.call_soon(self.loop_outbox.resume)

    def stopProducing(self) -> None:
        self._gone(_CLOSED_ABNORMALLY)
