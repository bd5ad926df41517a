"""ASGIApplication: an ASGI 3 app (FastAPI, Starlette, Django) served by twisted.web.

The app runs on an asyncio loop in a thread of its own (:mod:`._loop`);
each request is a twisted.web request, so the app is served wherever a
``web`` route is: HTTP/1.1, h2c, and h2 through a ``tls`` route, with the
client address a PROXY header named and ``https`` behind TLS::

    >>> async def app(scope, receive, send):
    ...     if scope["type"] == "http":
    ...         await send({"type": "http.response.start", "status": 200,
    ...                     "headers": [(b"content-type", b"text/plain")]})
    ...         await send({"type": "http.response.body", "body": b"hello"})
    >>> api = ASGIApplication(app)
    >>> api
    <ASGIApplication txcmux._apps._asgi:app lifespan=auto not running>
    >>> factory = api.factory()  # the route's target

An HTTP/1.1 request asking to upgrade to WebSocket becomes a ``websocket``
scope (:mod:`._asgi_ws`).  The ``lifespan`` scope runs when the service
starts (requests wait for its startup to complete) and ends when the
service stops, after a drain: ``lifespan="auto"`` (uvicorn's default too)
goes on without it if the app raises on the lifespan scope before
answering, ``"on"`` makes that an error, ``"off"`` never starts it.

The response's writes go from the app's thread to the reactor in order
and without waiting for an answer; the app waits only while the
connection (or an HTTP/2 stream's window) is full, so a slow reader holds
back a streaming response instead of having it buffered whole.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from .._errors import TxcmuxError
from .._log import log
from .._web._channel import WebFactory
from ._loop import AppLoop, Outbox
from ._wsgi import _reactor, app_name

#: The ASGI versions this server speaks (the spec's version 2.4: ``send``
#: after the client left is not an error for HTTP).
ASGI = {"version": "3.0", "spec_version": "2.4"}
LIFESPAN_MODES = ("auto", "on", "off")
#: How much of a request body one ``http.request`` message carries.
BODY_CHUNK = 1 << 20
#: How long the app has to answer ``lifespan.shutdown``.
SHUTDOWN_TIMEOUT = 30.0
_PENDING = object()


class LifespanError(TxcmuxError):
    """The app's lifespan startup failed (or, with ``lifespan="on"``, is missing)."""


def scope_for(request: Any, kind: str, scheme: str) -> dict[str, Any]:
    """The parts of an ASGI ``http`` or ``websocket`` scope a request gives."""
    raw_path = request.path
    _, _, query = request.uri.partition(b"?")
    client = request.getClientAddress()
    server = request.getHost()
    return {
        "type": kind,
        "asgi": ASGI,
        "http_version": "2" if request.clientproto == b"HTTP/2" else "1.1",
        "scheme": scheme + "s" if request.isSecure() else scheme,
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [
            (name.lower(), value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ],
        "client": _pair(client),
        "server": _pair(server),
    }


def _pair(address: object) -> list[Any] | None:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return None if host is None or port is None else [host, port]


class ASGIApplication(Service):
    """An ASGI 3 application, its event loop thread and its lifespan."""

    def __init__(
        self,
        application: Any,
        *,
        lifespan: str = "auto",
        reactor: Any = None,
        max_message_size: int = 16 * 1024 * 1024,
    ) -> None:
        if not callable(application):
            raise TypeError(f"an ASGI application is callable, not {application!r}")
        if lifespan not in LIFESPAN_MODES:
            raise ValueError(f"lifespan is one of {LIFESPAN_MODES}, not {lifespan!r}")
        self.application = application
        self.lifespan = lifespan
        self.reactor = _reactor(reactor)
        #: The longest WebSocket message taken (larger ones close with 1009).
        self.max_message_size = max_message_size
        self.name = app_name(application)
        self.app_loop = AppLoop(self.reactor, f"txcmux-asgi {self.name}")
        #: The lifespan's ``state``, copied into every request's scope.
        self.state: dict[str, Any] = {}
        self._lifespan: _Lifespan | None = None
        self._started: asyncio.Event | None = None
        self._outcome: Failure | object | None = _PENDING
        self._waiting: list[Deferred[None]] = []

    def factory(self, *, http2: bool = True, **web: Any) -> WebFactory:
        """A protocol factory serving the app over HTTP/1.1, h2c and h2.

        ``web`` are more of :class:`~txcmux.web.WebFactory`'s keywords
        (``grpc_backend``, for one).
        """
        return WebFactory(ASGIResource(self), reactor=self.reactor, http2=http2, **web)

    # -- the service ---------------------------------------------------------

    def startService(self) -> None:
        """Start the app's loop, and its lifespan startup."""
        super().startService()  # type: ignore[no-untyped-call]
        self.app_loop.start()
        self._started = asyncio.Event()
        if self.lifespan == "off":
            self._ready(None)
            return
        self._lifespan = _Lifespan(self)
        self.app_loop.run(self._lifespan.startup()).addBoth(self._ready)

    def when_started(self) -> Deferred[None]:
        """Fires once the lifespan startup is complete (or not used); fails
        with :class:`LifespanError` when it failed."""
        if isinstance(self._outcome, Failure):
            return fail(self._outcome)
        if self._outcome is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        return done

    def _ready(self, result: object) -> None:
        failure = result if isinstance(result, Failure) else None
        self._outcome = failure
        if failure is not None:
            log.error(
                "txcmux: ASGI app {app}: {error}",
                app=self.name,
                error=failure.getErrorMessage(),
            )
        assert self._started is not None
        self.app_loop.call_soon(self._started.set)  # waiting requests go on
        waiting, self._waiting = self._waiting, []
        for done in waiting:
            if failure is not None:
                done.errback(failure)
            else:
                done.callback(None)

    async def wait_started(self) -> None:
        """(On the app's loop.)  Return once requests may be served; raise
        :class:`LifespanError` (the request gets a 500) if the startup failed."""
        assert self._started is not None
        await self._started.wait()
        if isinstance(self._outcome, Failure):
            raise LifespanError("the app's lifespan startup failed")

    def stopService(self) -> Deferred[None]:
        """Run the lifespan shutdown, then stop the app's loop."""
        super().stopService()  # type: ignore[no-untyped-call]
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is None or self.app_loop.loop is None:
            self.app_loop.stop()
            return succeed(None)
        stopped = self.app_loop.run(lifespan.shutdown())

        def done(result: object) -> None:
            if isinstance(result, Failure):
                log.error(
                    "txcmux: ASGI app {app}: lifespan shutdown: {error}",
                    app=self.name,
                    error=result.getErrorMessage(),
                )
            self.app_loop.stop()

        return stopped.addBoth(done)

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<ASGIApplication {self.name} lifespan={self.lifespan} {state}>"


class _Lifespan:
    """(On the app's loop.)  The ``lifespan`` scope: one call of the app for
    the whole life of the service."""

    def __init__(self, app: ASGIApplication) -> None:
        self.app = app
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.started: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self.stopped: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self.task = loop.create_task(self._run())
        self.inbox.put_nowait({"type": "lifespan.startup"})
        answer = await self.started
        if answer is None:
            self.task = None
            why = "returned" if self.error is None else f"raised {self.error!r}"
            if self.app.lifespan == "on":
                raise LifespanError(
                    f'lifespan = "on", but the app {why} on the lifespan scope'
                    " without answering lifespan.startup"
                )
            log.info(
                "txcmux: ASGI app {app} does not use the lifespan protocol (it"
                " {why} on the lifespan scope); serving without it",
                app=self.app.name,
                why=why,
            )
        elif answer["type"] == "lifespan.startup.failed":
            raise LifespanError(
                f"lifespan startup failed: {answer.get('message', '') or 'no message'}"
            )

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI, "state": self.app.state}
        try:
            await self.app.application(scope, self._receive, self._send)
        except Exception as error:
            self.error = error
            if self.started.done():  # raised while serving, or on shutdown
                log.error(
                    "txcmux: ASGI app {app}: the lifespan scope raised {error!r}",
                    app=self.app.name,
                    error=error,
                )
        finally:
            for answer in (self.started, self.stopped):
                if not answer.done():
                    answer.set_result(None)

    async def _receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if not self.started.done():
                self.started.set_result(message)
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if not self.stopped.done():
                self.stopped.set_result(message)
        else:
            raise ValueError(f"unexpected message on the lifespan scope: {kind!r}")

    async def shutdown(self) -> None:
        if self.task is None:
            return
        self.inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            answer = await asyncio.wait_for(self.stopped, SHUTDOWN_TIMEOUT)
        except TimeoutError:
            self.task.cancel()
            raise LifespanError(
                f"no lifespan.shutdown.complete within {SHUTDOWN_TIMEOUT:g} s"
            ) from None
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            raise LifespanError(
                f"lifespan shutdown failed: {answer.get('message', '') or 'no message'}"
            )


class ASGIResource(Resource):
    """The twisted.web resource that hands every request to the app."""

    isLeaf = True

    def __init__(self, app: ASGIApplication) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.app = app

    def render(self, request: Any) -> int:
        """Start the app on ``request``; the response comes later."""
        from ._asgi_ws import is_websocket, start_websocket

        if is_websocket(request):
            start_websocket(self.app, request)
        else:
            HTTPExchange(self.app, request).start()
        return NOT_DONE_YET


@implementer(IPushProducer)
class HTTPExchange:
    """One request and its response, between twisted.web and the app.

    The attributes without a leading ``loop_`` belong to the reactor's
    thread; ``loop_`` ones to the app's.  Messages cross with
    ``reactor.callFromThread`` and ``AppLoop.call_soon``, in order.
    """

    def __init__(self, app: ASGIApplication, request: Request) -> None:
        self.app = app
        self.request: Any = request  # twisted.web's Request is not typed
        self.finished = False  # the response is complete, or the client left
        self.response_started = False
        self.scope = scope_for(request, "http", "http")
        self.scope["method"] = request.method.decode("latin-1")
        self.scope["state"] = dict(app.state)
        # The app's side:
        self.loop_gone = asyncio.Event()  # the exchange is over
        self.loop_outbox = Outbox()
        self.loop_body_left = True
        self.loop_started: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.loop_ended = False
        self.loop_listening = False  # the app waits for http.disconnect

    def start(self) -> None:
        request = self.request
        request.defaultContentType = None  # the app says
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._over)
        self.app.app_loop.spawn(self._call_app())

    # -- the app's thread ----------------------------------------------------

    async def _call_app(self) -> None:
        """Run the app; tell the reactor only when there is something to do
        (the app raised, or did not complete the response)."""
        failure = None
        try:
            await self.app.wait_started()
            await self.app.application(self.scope, self._receive, self._send)
        except Exception:
            failure = Failure()  # type: ignore[no-untyped-call]
        if failure is not None or not self.loop_ended:
            self.app.reactor.callFromThread(self._app_returned, failure)

    async def _receive(self) -> dict[str, Any]:
        if self.loop_body_left:
            content = self.request.content
            try:
                body = content.read(BODY_CHUNK) if content is not None else b""
            except ValueError:  # closed: the client left, twisted.web cleaned up
                self.loop_body_left = False
                return {"type": "http.disconnect"}
            more = len(body) == BODY_CHUNK
            self.loop_body_left = more
            return {"type": "http.request", "body": body, "more_body": more}
        # Waiting for the end: the reactor wakes this loop at the end only
        # while someone listens (see _over: each side writes its flag, then
        # reads the other's).
        self.loop_listening = True
        if not self.finished:
            await self.loop_gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.loop_started is not None:
                raise RuntimeError("http.response.start sent twice")
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            self.loop_started = (status, headers)
        elif kind == "http.response.body":
            if self.loop_started is None:
                raise RuntimeError("http.response.body before http.response.start")
            if self.loop_ended:
                raise RuntimeError("http.response.body after the last one")
            if self.loop_gone.is_set():
                return  # the client left: spec 2.4 says send is then a no-op
            more = bool(message.get("more_body", False))
            body = bytes(message.get("body", b""))
            self.loop_ended = not more
            await self.loop_outbox.wait()
            if more:
                self.loop_outbox.sent(len(body))
            self.app.reactor.callFromThread(self._write, self.loop_started, body, more)
        else:
            raise ValueError(f"unexpected message on the http scope: {kind!r}")

    # -- the reactor's thread ------------------------------------------------

    def _write(
        self, start: tuple[int, list[tuple[bytes, bytes]]], body: bytes, more: bool
    ) -> None:
        if self.finished:
            return
        request = self.request
        if not self.response_started:
            self.response_started = True
            status, headers = start
            request.setResponseCode(status)
            for name, value in headers:
                request.responseHeaders.addRawHeader(name, value)
        if body:
            request.write(body)
            if more:
                self.app.app_loop.call_soon(self.loop_outbox.written, len(body))
        if not more:
            self.finished = True
            request.unregisterProducer()
            request.finish()

    def _over(self, result: object) -> None:
        """The request finished, or the client went away."""
        cut = not self.finished  # the client left before the response ended
        if cut:
            self.finished = True
            self.request.unregisterProducer()
        if cut or self.loop_listening:
            self.app.app_loop.call_soon(self._loop_over)

    def _loop_over(self) -> None:
        self.loop_gone.set()
        self.loop_outbox.close()

    def _app_returned(self, result: object) -> None:
        if self.finished:
            if isinstance(result, Failure):
                self._log_failure(result, "after the response")
            return
        if isinstance(result, Failure):
            self._log_failure(result, "")
        else:
            log.error(
                "txcmux: ASGI app {app} returned without completing the response"
                " to {method} {uri}",
                app=self.app.name,
                method=self.request.method.decode("latin-1"),
                uri=self.request.uri.decode("latin-1"),
            )
        self.finished = True
        self.request.unregisterProducer()
        if self.response_started:
            # Part of the response is out: end the connection (HTTP/1.1) or
            # the stream (HTTP/2) so that the client sees it cut short.
            channel = self.request.channel
            abort = getattr(channel, "abortConnection", None)  # an HTTP/2 stream
            (abort or channel.transport.abortConnection)()
            return
        self.request.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain"])
        self.request.write(b"Internal Server Error\n")
        self.request.finish()

    def _log_failure(self, failure: Failure, when: str) -> None:
        log.failure(
            "txcmux: ASGI app {app} raised on {method} {uri}{when}",
            failure,
            level=LogLevel.error,
            app=self.app.name,
            method=self.request.method.decode("latin-1"),
            uri=self.request.uri.decode("latin-1"),
            when=f" ({when})" if when else "",
        )

    # -- IPushProducer: the connection (or the stream's window) is full ------

    def pauseProducing(self) -> None:
        self.app.app_loop.call_soon(self.loop_outbox.pause)

    def resumeProducing(self) -> None:
        self.app.app_loop.call_soon(self.loop_outbox.resume)

    def stopProducing(self) -> None:
        self._over(None)
