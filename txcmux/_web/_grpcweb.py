"""gRPC-Web: browsers' calls, translated to gRPC for a web route's ``grpc_backend``.

Browsers cannot send HTTP/2 trailers or read them, so they cannot speak
gRPC; the gRPC-Web protocol (the PROTOCOL-WEB document in grpc/grpc) carries
the same length-prefixed messages in an ordinary POST, over HTTP/1.1 or
HTTP/2, and puts the trailers at the end of the response body as one more
frame, flagged ``0x80``, of ``name: value`` lines::

    >>> trailer_frame([(b"grpc-status", b"0"), (b"grpc-message", b"")])
    b'\\x80\\x00\\x00\\x00 grpc-status: 0\\r\\ngrpc-message: \\r\\n'

:class:`GrpcWebResource` sits in front of the Site's root resource: a
request whose ``content-type`` is ``application/grpc-web``,
``application/grpc-web+proto`` or ``application/grpc-web-text`` (the body
base64-encoded, for clients that cannot read a binary stream) becomes a
gRPC call to the backend (:mod:`._grpc_backend`), unary or
server-streaming, with its metadata, deadline (``grpc-timeout``) and a
cancel when the browser goes away; every other request goes to the root
as before.  A CORS preflight for a gRPC-Web call is answered here, and a
call from a page of another origin is served only when the origin is
allowed (``origins``); a call whose ``Origin`` is not allowed gets 403 and
never reaches the backend.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Iterable
from typing import Any

from h2.errors import ErrorCodes
from twisted.internet.interfaces import IPushProducer
from twisted.web import server
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from .._log import log
from ._grpc_backend import (
    HOP_BY_HOP,
    BackendStream,
    GrpcBackend,
    Headers,
    forwarded_headers,
)

_GRPC_WEB = b"application/grpc-web"
_TEXT = b"application/grpc-web-text"
#: Request headers that are the browser's, not the call's metadata.
_NOT_METADATA = HOP_BY_HOP | {
    b"content-type",
    b"te",
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"origin",
    b"referer",
    b"x-grpc-web",
    b"cookie",
    b"sec-fetch-mode",
    b"sec-fetch-site",
    b"sec-fetch-dest",
    b"sec-ch-ua",
    b"sec-ch-ua-mobile",
    b"sec-ch-ua-platform",
}
#: What a page's script may read of a response: the call's status and message.
_EXPOSED = b"grpc-status, grpc-message, grpc-status-details-bin"
_ALLOWED_HEADERS = (
    b"content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization,"
    b" grpc-accept-encoding"
)


def trailer_frame(trailers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The gRPC-Web frame carrying ``trailers`` at the end of a response body."""
    block = b"".join(name.lower() + b": " + value + b"\r\n" for name, value in trailers)
    return b"\x80" + len(block).to_bytes(4, "big") + block


def _status(code: int, message: str) -> list[tuple[bytes, bytes]]:
    return [(b"grpc-status", str(code).encode()), (b"grpc-message", message.encode())]


class GrpcWebResource(Resource):
    """The Site's root resource, with gRPC-Web calls taken to ``backend``.

    ``origins`` are the page origins (``"https://app.example.com"``) whose
    scripts may call; ``"*"`` allows any.  A call without an ``Origin``
    header (not from a browser) or from the Site's own origin is always
    served.  ``stats`` counts ``grpc_web_calls``, ``grpc_web_preflights``
    and ``grpc_web_refused`` (origin not allowed, or a body that is not
    valid gRPC-Web).
    """

    def __init__(
        self,
        root: IResource,
        backend: GrpcBackend,
        origins: Iterable[str] = (),
        stats: Any = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.root = root
        self.isLeaf = bool(getattr(root, "isLeaf", False))
        self.backend = backend
        self.origins = frozenset(origin.encode() for origin in origins)
        self.stats: Counter[str] = stats if stats is not None else Counter()

    # -- the resource tree -------------------------------------------------

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        if _is_grpc_web(request):
            return _Call(self)
        child: IResource = self.root.getChildWithDefault(path, request)  # type: ignore[no-untyped-call]
        return child

    def render(self, request: Any) -> bytes | int:
        if _is_grpc_web(request):
            return _Call(self).render(request)
        result: bytes | int = self.root.render(request)  # type: ignore[no-untyped-call]
        return result

    def putChild(self, path: bytes, child: IResource) -> None:
        """Add ``child`` to the root this resource stands in front of."""
        self.root.putChild(path, child)

    # -- origins ---------------------------------------------------------------

    def origin_allowed(self, request: Any) -> bytes | None:
        """The ``Origin`` to allow in CORS headers; None: not allowed.

        ``b""`` means no CORS headers are needed (no Origin, or the Site's own).
        """
        origin = request.getHeader(b"origin")
        if origin is None:
            return b""
        scheme = b"https" if request.isSecure() else b"http"
        host = request.getHeader(b"host")
        if host is not None and origin == scheme + b"://" + host:
            return b""
        if b"*" in self.origins or origin in self.origins:
            allowed: bytes = origin
            return allowed
        return None

    def count(self, what: str) -> None:
        self.stats[what] += 1


def _is_grpc_web(request: Any) -> bool:
    """A gRPC-Web call, or the CORS preflight of one."""
    method = request.method
    if method == b"POST":
        kind = request.getHeader(b"content-type")
        return kind is not None and kind.lower().startswith(_GRPC_WEB)
    if method == b"OPTIONS":
        asked = request.getHeader(b"access-control-request-headers") or b""
        return b"x-grpc-web" in asked.lower()
    return False


class _Call(Resource):
    """One gRPC-Web request: a preflight answered, or a call forwarded."""

    isLeaf = True

    def __init__(self, web: GrpcWebResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.web = web

    def render(self, request: Any) -> bytes | int:
        web = self.web
        origin = web.origin_allowed(request)
        if origin is None:
            web.count("grpc_web_refused")
            log.info(
                "txcmux.web: refusing a gRPC-Web call from origin {origin!r}"
                " (not in grpc_web_origins)",
                origin=request.getHeader(b"origin"),
            )
            request.setResponseCode(403)
            return b""
        if origin:
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"vary", b"Origin")
        if request.method == b"OPTIONS":
            web.count("grpc_web_preflights")
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-methods", b"POST, OPTIONS")
            asked = request.getHeader(b"access-control-request-headers")
            request.setHeader(
                b"access-control-allow-headers", asked or _ALLOWED_HEADERS
            )
            request.setHeader(b"access-control-max-age", b"86400")
            return b""
        kind = (request.getHeader(b"content-type") or b"").lower()
        text = kind.startswith(_TEXT)
        body = request.content.read() if request.content is not None else b""
        if text:
            try:
                body = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                web.count("grpc_web_refused")
                request.setResponseCode(400)
                return b"the body of a grpc-web-text call is not base64\n"
        web.count("grpc_web_calls")
        front = _WebFront(request, text, kind)
        peer = request.getClientAddress()
        headers = forwarded_headers(
            _call_headers(request, kind), getattr(peer, "host", None)
        )
        front.stream = web.backend.call(headers, front)
        front.stream.send(body, 0)
        front.stream.end()
        return server.NOT_DONE_YET


def _call_headers(request: Any, kind: bytes) -> list[tuple[bytes, bytes]]:
    """The gRPC request headers for a gRPC-Web ``request``."""
    subtype = kind[len(_TEXT) :] if kind.startswith(_TEXT) else kind[len(_GRPC_WEB) :]
    host = request.getHeader(b"host") or b"localhost"
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https" if request.isSecure() else b"http"),
        (b":path", request.uri),
        (b":authority", host),
        (b"content-type", b"application/grpc" + subtype.split(b";")[0]),
        (b"te", b"trailers"),
    ]
    for name, values in request.requestHeaders.getAllRawHeaders():
        name = name.lower()
        if name in _NOT_METADATA or name.startswith(b"access-control-"):
            continue
        headers.extend((name, value) for value in values)
    return headers


@implementer(IPushProducer)
class _WebFront:
    """The browser's half of a gRPC-Web call: the Twisted request."""

    def __init__(self, request: Any, text: bool, kind: bytes) -> None:
        self.request = request
        self.text = text
        self.kind = kind
        self.stream: BackendStream | None = None
        self.started = False
        self.finished = False
        self._paused = False
        self._owed = 0  # credit held back while the request's transport is full
        self._tail = b""  # text: bytes not yet a whole base64 group
        request.notifyFinish().addErrback(self._client_gone)

    # -- CallFront -----------------------------------------------------------

    def on_response(self, headers: Headers, end: bool) -> None:
        self._start(headers)
        if end:
            self._finish([(n, v) for n, v in headers if n.startswith(b"grpc-")])

    def on_data(self, data: bytes, credit: int) -> None:
        if self.finished:
            self._give(credit)
            return
        self._write(data)
        self._give(credit)

    def on_trailers(self, trailers: Headers) -> None:
        self._finish(trailers)

    def on_end(self) -> None:
        self._finish(_status(2, "the backend ended the call without a status"))

    def on_reset(self, error_code: int) -> None:
        self._finish(
            _status(14, f"the backend reset the call (HTTP/2 error {error_code})")
        )

    def on_failed(self, reason: str) -> None:
        self._finish(_status(14, reason))

    def on_sent(self, credit: int) -> None:
        pass  # the request's body was read whole before the call began

    # -- IPushProducer: the request's transport (or HTTP/2 window) ----------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        owed, self._owed = self._owed, 0
        if owed and self.stream is not None:
            self.stream.ack(owed)

    def stopProducing(self) -> None:
        self._client_gone(None)

    # -- writing ---------------------------------------------------------------

    def _start(self, headers: Headers) -> None:
        if self.started:
            return
        self.started = True
        request = self.request
        request.setResponseCode(200)
        mine = _TEXT if self.text else _GRPC_WEB + b"+proto"
        request.setHeader(b"content-type", mine)
        request.setHeader(b"access-control-expose-headers", _EXPOSED)
        for name, value in headers:
            if name.startswith(b":") or name in (b"content-type", b"content-length"):
                continue
            if name.startswith(b"grpc-") and name != b"grpc-encoding":
                continue  # a trailers-only answer: its status goes in the body
            request.responseHeaders.addRawHeader(name, value)
        request.registerProducer(self, True)

    def _write(self, data: bytes) -> None:
        if not self.text:
            self.request.write(data)
            return
        data = self._tail + data
        whole = len(data) - len(data) % 3
        self._tail = data[whole:]
        if whole:
            self.request.write(base64.b64encode(data[:whole]))

    def _finish(self, trailers: Iterable[tuple[bytes, bytes]]) -> None:
        if self.finished:
            return
        self._start(())
        frame = trailer_frame(trailers)
        if self.text:
            self.request.write(base64.b64encode(self._tail + frame))
            self._tail = b""
        else:
            self.request.write(frame)
        self.finished = True
        self.request.unregisterProducer()
        self.request.finish()

    def _give(self, credit: int) -> None:
        if not credit or self.stream is None:
            return
        if self._paused:
            self._owed += credit
        else:
            self.stream.ack(credit)

    def _client_gone(self, reason: object) -> None:
        if self.finished:
            return
        self.finished = True
        if self.stream is not None:
            self.stream.reset(ErrorCodes.CANCEL)
