"""A Twisted app that serves its web pages and its gRPC service on one port.

Run it and try each protocol::

    python examples/app.py 8080
    curl http://127.0.0.1:8080/
    curl --http2-prior-knowledge http://127.0.0.1:8080/
    python examples/app.py --call 8080        # a gRPC call, made with grpcio

The web resource is served by one twisted.web Site over HTTP/1.1 and HTTP/2
(h2c); the gRPC service by a grpcio server that txcmux runs in-process and
relays gRPC connections to.  The service is built with grpcio's generic
handlers, so the example needs no generated code: its messages are plain
UTF-8 bytes.
"""

from __future__ import annotations

import sys

import grpc
from twisted.internet import defer, endpoints, task
from twisted.web import resource, server

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.grpcserver import GrpcServer, client_address
from txcmux.web import WebFactory

METHOD = "/example.Greeter/Greet"


class Page(resource.Resource):
    """The web side: says hello and which HTTP version carried the request."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        version = request.clientproto.decode()
        return f"hello from the web side, over {version}\n".encode()


def greet(name: bytes, context: grpc.ServicerContext) -> bytes:
    """The gRPC side: greets the caller and says where the call came from."""
    peer = client_address(context)
    host = getattr(peer, "host", "?")
    return f"hello {name.decode()}, from the gRPC side; you are {host}".encode()


def add_greeter(grpc_server: grpc.Server) -> None:
    """Register the Greeter service with a grpcio server."""
    handler = grpc.unary_unary_rpc_method_handler(greet)
    grpc_server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("example.Greeter", {"Greet": handler})]
    )


@defer.inlineCallbacks
def serve(reactor: object, port: str):  # type: ignore[no-untyped-def]
    """Listen on ``port`` until interrupted."""
    greeter = GrpcServer([add_greeter])
    yield greeter.startService()
    mux = ProtocolSwitchingFactory(
        [
            Route("grpc", matchers.grpc(), greeter.factory()),
            Route("web", [matchers.http1(), matchers.http2()], WebFactory(Page())),
        ]
    )
    listening = yield endpoints.serverFromString(
        reactor, f"tcp:{port}:interface=127.0.0.1"
    ).listen(mux)
    print(f"listening on 127.0.0.1:{listening.getHost().port}", flush=True)

    def stop() -> defer.Deferred[object]:
        # Returning the Deferred makes the reactor wait for both before it stops.
        return defer.gatherResults(
            [defer.maybeDeferred(listening.stopListening), greeter.stopService()]
        )

    reactor.addSystemEventTrigger("before", "shutdown", stop)  # type: ignore[attr-defined]
    yield defer.Deferred()  # serve until the reactor is stopped (Ctrl-C, SIGTERM)


def call(port: str) -> None:
    """Make one gRPC call to a running example, and print the answer."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        greet_call = channel.unary_unary(METHOD)
        print(greet_call(b"example", timeout=10).decode())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--call"]:
        call(sys.argv[2])
    else:
        task.react(serve, [sys.argv[1] if len(sys.argv) > 1 else "8080"])
