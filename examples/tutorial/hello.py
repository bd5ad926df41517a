"""The tutorial's application: one web page and one gRPC method.

Every step of docs/tutorial.md serves these two, in more and more ways.
The gRPC service uses grpcio's generic handlers, so it needs no generated
code: its request and answer are plain UTF-8 bytes.
"""

from __future__ import annotations

import grpc
from twisted.web import resource, server

from txcmux.grpcserver import client_address

#: The one gRPC method: /tutorial.Greeter/Greet, bytes in, bytes out.
METHOD = "/tutorial.Greeter/Greet"


class Page(resource.Resource):
    """The web side: says hello, which HTTP version and whether TLS carried it."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        version = request.clientproto.decode()
        scheme = "https" if request.isSecure() else "http"
        return f"hello from the web side, {scheme} over {version}\n".encode()


def greet(name: bytes, context: grpc.ServicerContext) -> bytes:
    """The gRPC side: greets the caller by the name it sent."""
    peer = client_address(context)
    host = getattr(peer, "host", "?")
    return f"hello {name.decode()}, from the gRPC side; you are {host}".encode()


def add_greeter(grpc_server: grpc.Server) -> None:
    """Add the Greeter service to a grpcio server."""
    handler = grpc.unary_unary_rpc_method_handler(greet)
    grpc_server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("tutorial.Greeter", {"Greet": handler})]
    )
