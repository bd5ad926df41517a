"""A stand-in gRPC-Web server for checking the browser harness, as a Site's tree.

``resource()`` serves the harness page (``/``), the bundled client
(``/grpc_web_client.js``; both from this file's directory), and answers
every POST as a gRPC-Web server would, built by hand from the gRPC-Web
protocol (grpc/grpc-web, doc/PROTOCOL-WEB.md): a data frame (flag 0x00, a
4-byte big-endian length, the message) per response message and a trailer
frame (flag 0x80) holding ``grpc-status: 0``, all base64-encoded for
``application/grpc-web-text``.  A method whose name ends in ``Stream``
answers three messages, any other one.  Messages have one string field
(1), as ``txcmux.demo.Message`` does: the answer is ``echo: TEXT`` (and
``TEXT #1``..``#3`` for a stream).

Each POST is recorded as the client sent it; ``GET /recorded`` returns
the records as JSON (path, content type, ``x-grpc-web``, ``x-user-agent``,
``accept``, every header, the body in hex, and the messages its frames
held).
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from txcmux.demo import Message

HERE = Path(__file__).resolve().parent
RECORDED: list[dict[str, Any]] = []


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (flag, payload) frames of a gRPC(-Web) body."""
    found = []
    while data:
        flag, length = struct.unpack("!BI", data[:5])
        found.append((flag, data[5 : 5 + length]))
        data = data[5 + length :]
    return found


def frame(flag: int, payload: bytes) -> bytes:
    return struct.pack("!BI", flag, len(payload)) + payload


class _Calls(Resource):
    """Every POST: recorded, then answered as gRPC-Web."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        header = request.getHeader
        kind = (header(b"content-type") or b"").decode()
        body = request.content.read() if request.content is not None else b""
        text = kind.startswith("application/grpc-web-text")
        data = base64.b64decode(body) if text else body
        received = [Message.FromString(payload).text for _, payload in frames(data)]
        path = request.path.decode()
        RECORDED.append(
            {
                "path": path,
                "content_type": kind,
                "x_grpc_web": (header(b"x-grpc-web") or b"").decode(),
                "x_user_agent": (header(b"x-user-agent") or b"").decode(),
                "accept": (header(b"accept") or b"").decode(),
                "headers": {
                    name.decode().lower(): b", ".join(values).decode()
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                "body_hex": body.hex(),
                "messages": received,
            }
        )
        asked = received[0] if received else ""
        if path.endswith("Stream"):
            answers = [f"{asked} #{n}" for n in (1, 2, 3)]
        else:
            answers = [f"echo: {asked}"]
        trailers = b"grpc-status: 0\r\ngrpc-message: \r\nx-trailer: done\r\n"
        out = b"".join(
            frame(0x00, Message(text=answer).SerializeToString()) for answer in answers
        ) + frame(0x80, trailers)
        answer_type = (
            "application/grpc-web-text+proto" if text else "application/grpc-web+proto"
        )
        request.setHeader(b"content-type", answer_type.encode())
        request.setHeader(b"x-header", b"yes")
        return base64.b64encode(out) if text else out


class _Recorded(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(RECORDED).encode()


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        if request.method == b"POST":
            return _Calls()
        return super().getChild(path, request)  # type: ignore[no-any-return]


def resource() -> Resource:
    """The page, the bundle, /recorded, and gRPC-Web answers to every POST."""
    root = _Root()
    root.putChild(b"", File(str(HERE / "grpc_web_page.html")))
    root.putChild(b"grpc_web_client.js", File(str(HERE / "grpc_web_client.js")))
    root.putChild(b"recorded", _Recorded())
    return root
