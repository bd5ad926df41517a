"""gRPC-Web on a web route: calls translated to gRPC for the route's grpc_backend.

curl plays the browser here (binary and text variants, HTTP/1.1 and h2c,
CORS preflights); tests/test_grpc_web_browser.py runs the official gRPC-Web
JavaScript client in Chromium.  Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.static import Data

from txcmux import ConfigurationError, ProtocolSwitchingFactory, Route, matchers
from txcmux.grpcserver import GrpcServer
from txcmux.web import WebFactory

from .grpc_support import service
from .grpc_support.h2_client import grpc_frame
from .grpc_support.net import listen, tool
from .grpc_support.service import MESSAGE_OPTIONS

PAGE = "https://app.example"


def frames(body: bytes) -> tuple[list[bytes], dict[bytes, bytes]]:
    """The data frames' messages and the trailer frame's fields of a gRPC-Web body."""
    messages, trailers, at = [], {}, 0
    while at + 5 <= len(body):
        flag, size = body[at], int.from_bytes(body[at + 1 : at + 5], "big")
        payload = body[at + 5 : at + 5 + size]
        at += 5 + size
        if flag & 0x80:
            for line in payload.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b":")
                    trailers[name.strip()] = value.strip()
        else:
            messages.append(payload)
    assert at == len(body), f"{len(body) - at} bytes left over"
    return messages, trailers


class LeafRoot(resource.Resource):
    """A root that is a leaf (as a WSGI or ASGI app's resource is)."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"leaf " + request.path


class GrpcWebTests(unittest.TestCase):
    timeout = 60

    async def serve(
        self,
        root: resource.Resource | None = None,
        backend: object = None,
        origins: tuple[str, ...] = (PAGE,),
    ) -> tuple[WebFactory, int]:
        if backend is None:
            grpc_server = GrpcServer([service.add_to], options=MESSAGE_OPTIONS, grace=1)
            grpc_server.startService()
            self.addCleanup(grpc_server.stopService)
            backend = grpc_server
        if root is None:
            root = resource.Resource()
            root.putChild(b"hello", Data(b"hello from the Site\n", "text/plain"))
        web = WebFactory(
            server.Site(root),
            grpc_backend=backend,
            grpc_web=True,
            grpc_web_origins=origins,
        )
        mux = ProtocolSwitchingFactory(
            [Route("web", [matchers.http1(), matchers.http2()], web)]
        )
        port: IListeningPort = await listen(self, mux)
        return web, port.getHost().port  # type: ignore[attr-defined]

    async def curl(self, *args: str) -> tuple[bytes, dict[bytes, bytes], int]:
        """Run curl; (body, response headers, status code)."""
        out, err, code = await getProcessOutputAndValue(
            tool("curl"), ["-sS", "-D", "-", *args]
        )
        self.assertEqual(code, 0, err)
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return body, headers, status

    def call_args(
        self,
        port: int,
        method: str,
        message: bytes,
        *,
        text: bool = False,
        http: str = "--http1.1",
        origin: str | None = None,
    ) -> list[str]:
        kind = "application/grpc-web-text" if text else "application/grpc-web+proto"
        body = grpc_frame(message)
        data = base64.b64encode(body) if text else body
        handle, path = tempfile.mkstemp(suffix=".grpc-web")
        self.addCleanup(os.unlink, path)
        os.write(handle, data)
        os.close(handle)
        args = [
            http,
            "-X",
            "POST",
            "-H",
            f"content-type: {kind}",
            "-H",
            "x-grpc-web: 1",
            "--data-binary",
            "@" + path,
        ]
        if origin is not None:
            args += ["-H", f"origin: {origin}"]
        return [*args, f"http://127.0.0.1:{port}/{service.SERVICE}/{method}"]

    async def test_unary_binary_over_http1(self) -> None:
        web, port = await self.serve()
        body, headers, status = await self.curl(
            *self.call_args(port, "Unary", b"hello grpc-web")
        )
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], b"application/grpc-web+proto")
        messages, trailers = frames(body)
        self.assertEqual(messages, [b"hello grpc-web"])
        self.assertEqual(trailers[b"grpc-status"], b"0")
        self.assertEqual(web.stats["grpc_web_calls"], 1)

    async def test_server_streaming_text_over_http1_and_h2c(self) -> None:
        _, port = await self.serve()
        for http in ("--http1.1", "--http2-prior-knowledge"):
            body, headers, status = await self.curl(
                *self.call_args(port, "ServerStream", b"3 1000", text=True, http=http)
            )
            self.assertEqual(
                (status, headers[b"content-type"]),
                (200, b"application/grpc-web-text"),
                http,
            )
            messages, trailers = frames(base64.b64decode(body))
            self.assertEqual(messages, [b"0" * 1000, b"1" * 1000, b"2" * 1000], http)
            self.assertEqual(trailers[b"grpc-status"], b"0", http)

    async def test_status_metadata_and_errors_in_the_trailer_frame(self) -> None:
        _, port = await self.serve()
        body, _headers, _ = await self.curl(
            "-H", "x-custom: yes", *self.call_args(port, "Metadata", b"")
        )
        messages, trailers = frames(body)
        self.assertIn(b"x-custom=yes", messages[0].split(b"\n"))
        self.assertEqual(trailers[b"x-trailer"], b"yes")
        failed, _, _ = await self.curl(*self.call_args(port, "Metadata", b"fail"))
        _, trailers = frames(failed)
        self.assertEqual(
            (trailers[b"grpc-status"], trailers[b"grpc-message"]),
            (b"5", b"no such thing"),
        )

    async def test_an_unreachable_backend_is_unavailable(self) -> None:
        closed = await listen(self, server.Site(resource.Resource()))
        number = closed.getHost().port  # type: ignore[attr-defined]
        await closed.stopListening()
        _, port = await self.serve(backend=f"tcp:host=127.0.0.1:port={number}")
        body, _, status = await self.curl(*self.call_args(port, "Unary", b"x"))
        self.assertEqual(status, 200)
        self.assertEqual(frames(body)[1][b"grpc-status"], b"14")

    async def test_cors_preflight_and_origins(self) -> None:
        web, port = await self.serve()
        url = f"http://127.0.0.1:{port}/{service.SERVICE}/Unary"
        preflight = [
            "-X",
            "OPTIONS",
            "-H",
            "access-control-request-method: POST",
            "-H",
            "access-control-request-headers: content-type,x-grpc-web,x-user-agent",
        ]
        _, headers, status = await self.curl(*preflight, "-H", f"origin: {PAGE}", url)
        self.assertEqual(status, 204)
        self.assertEqual(headers[b"access-control-allow-origin"], PAGE.encode())
        self.assertIn(b"x-grpc-web", headers[b"access-control-allow-headers"])
        self.assertIn(b"POST", headers[b"access-control-allow-methods"])
        _, headers, status = await self.curl(
            *preflight, "-H", "origin: https://evil.example", url
        )
        self.assertEqual(status, 403)
        self.assertNotIn(b"access-control-allow-origin", headers)
        # An allowed page's call gets the CORS headers its script needs.
        body, headers, status = await self.curl(
            *self.call_args(port, "Unary", b"cors", origin=PAGE)
        )
        self.assertEqual(headers[b"access-control-allow-origin"], PAGE.encode())
        self.assertIn(b"grpc-status", headers[b"access-control-expose-headers"])
        self.assertEqual(frames(body)[0], [b"cors"])
        # Another origin's call is refused before it reaches the backend.
        calls = web.grpc_backend.stats["calls"]  # type: ignore[union-attr]
        _, _, status = await self.curl(
            *self.call_args(port, "Unary", b"no", origin="https://evil.example")
        )
        self.assertEqual(status, 403)
        self.assertEqual(web.grpc_backend.stats["calls"], calls)  # type: ignore[union-attr]
        self.assertEqual(web.stats["grpc_web_refused"], 2)

    async def test_other_requests_still_reach_the_site(self) -> None:
        _, port = await self.serve()
        body, _, status = await self.curl(f"http://127.0.0.1:{port}/hello")
        self.assertEqual((status, body), (200, b"hello from the Site\n"))
        _, _, status = await self.curl(
            "-X", "OPTIONS", f"http://127.0.0.1:{port}/hello"
        )
        self.assertNotEqual(status, 204)  # not a gRPC-Web preflight: the Site's answer

    async def test_a_leaf_root_such_as_an_app(self) -> None:
        _, port = await self.serve(root=LeafRoot())
        body, _, status = await self.curl(f"http://127.0.0.1:{port}/any/path")
        self.assertEqual((status, body), (200, b"leaf /any/path"))
        body, _, _ = await self.curl(*self.call_args(port, "Unary", b"through a leaf"))
        self.assertEqual(frames(body)[0], [b"through a leaf"])

    async def test_a_text_body_that_is_not_base64_is_refused(self) -> None:
        web, port = await self.serve()
        _, _, status = await self.curl(
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc-web-text",
            "--data-binary",
            "!!not base64!!",
            f"http://127.0.0.1:{port}/{service.SERVICE}/Unary",
        )
        self.assertEqual(status, 400)
        self.assertEqual(web.stats["grpc_web_refused"], 1)

    def test_grpc_web_needs_a_backend(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            WebFactory(server.Site(resource.Resource()), grpc_web=True)
        self.assertIn("grpc_backend", str(caught.exception))
