"""The built-in demo: what ``twistd -n cmux`` serves without a config file.

::

    twistd -n cmux                       # on tcp:8080
    twistd -n cmux --listen tcp:9000     # elsewhere

One port serves a small web site over HTTP/1.1 and h2c, and an in-process
gRPC server with the standard health service (``grpc.health.v1.Health``),
a ``txcmux.demo.Demo`` service (``Echo`` and ``Greet``) and server
reflection.  Open ``http://localhost:8080/`` for commands that try each.

The demo is an ordinary config file, :data:`DEMO_CONFIG`, with two routes::

    >>> for route in config().routes:
    ...     print(route.describe())
    grpc [grpc] -> in-process gRPC (txcmux.demo:add_services)
    web [http1 | http2] -> web txcmux.demo:resource

Call the demo service from Python (no generated code needed)::

    import grpc
    from txcmux.demo import Message

    channel = grpc.insecure_channel("localhost:8080")
    greet = channel.unary_unary(
        "/txcmux.demo.Demo/Greet",
        request_serializer=Message.SerializeToString,
        response_deserializer=Message.FromString,
    )
    print(greet(Message(text="world")).text)     # Hello, world!
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)
from twisted.web.resource import Resource
from twisted.web.server import Request

from ._config_schema import Config, parse

__all__ = [
    "DEMO_CONFIG",
    "DEMO_LISTEN",
    "SERVICE_NAME",
    "Message",
    "add_services",
    "config",
    "resource",
]

DEMO_LISTEN = "tcp:8080"
SERVICE_NAME = "txcmux.demo.Demo"

#: The demo as a config file (``listen`` is replaced by :func:`config`).
DEMO_CONFIG = """\
listen = ["tcp:8080"]

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
"""


def config(listen: Sequence[str] | None = None) -> Config:
    """The demo's :class:`~txcmux.config.Config`, on ``listen`` (default
    ``tcp:8080``)."""
    return parse(DEMO_CONFIG, source="the built-in demo", listen=listen)


# -- gRPC --------------------------------------------------------------------


def _message_class() -> Any:
    """``txcmux.demo.Message { string text = 1; }``, built without protoc.

    The file is added to protobuf's default pool, so server reflection can
    describe the service to tools such as grpcurl.
    """
    proto = descriptor_pb2.FileDescriptorProto(
        name="txcmux/demo.proto", package="txcmux.demo", syntax="proto3"
    )
    message = proto.message_type.add(name="Message")
    message.field.add(
        name="text",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    service = proto.service.add(name="Demo")
    for method in ("Echo", "Greet"):
        service.method.add(
            name=method,
            input_type=".txcmux.demo.Message",
            output_type=".txcmux.demo.Message",
        )
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(proto.SerializeToString())
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("txcmux.demo.Message")
    )


#: The demo service's one message type: ``Message(text="...")``.
Message: Any = _message_class()


def _echo(request: Any, context: Any) -> Any:
    return Message(text=request.text)


def _greet(request: Any, context: Any) -> Any:
    return Message(text=f"Hello, {request.text or 'world'}!")


def add_services(server: Any) -> None:
    """Add the demo's services to the ``grpc.Server`` being set up.

    Health (every service SERVING), ``txcmux.demo.Demo`` and reflection.
    """
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            function,
            request_deserializer=Message.FromString,
            response_serializer=Message.SerializeToString,
        )
        for name, function in (("Echo", _echo), ("Greet", _greet))
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
    )
    checker = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    names = [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:  # reflection is a nicety: the demo runs without it
        return
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)


# -- the web site ------------------------------------------------------------

_PAGE = """\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>txcmux demo</title>
<style>body {{ font: 16px/1.5 sans-serif; max-width: 50em; margin: 2em auto;
padding: 0 1em }} pre {{ background: #f4f4f4; padding: .7em; overflow-x: auto }}
</style></head><body>
<h1>txcmux demo on {host}</h1>
<p>This page came over <b>{protocol}</b>. The same port also serves gRPC:
txcmux reads each connection's first bytes and hands it to the route that
matches, in this order:</p>
<ol>
<li><b>grpc</b> &mdash; HTTP/2 with <code>content-type: application/grpc</code>:
an in-process grpcio server with <code>grpc.health.v1.Health</code>,
<code>txcmux.demo.Demo</code> (Echo, Greet) and server reflection.</li>
<li><b>web</b> &mdash; HTTP/1.1 and HTTP/2 without TLS (h2c): this site.</li>
</ol>
<h2>Try it</h2>
<pre>curl http://{host}/hello
curl --http2-prior-knowledge http://{host}/hello</pre>
<p>gRPC from Python (<code>pip install grpcio grpcio-health-checking</code>):</p>
<pre>python - &lt;&lt;'EOF'
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from txcmux.demo import Message

channel = grpc.insecure_channel("{host}")
health = health_pb2_grpc.HealthStub(channel)
print(health.Check(health_pb2.HealthCheckRequest()))
greet = channel.unary_unary(
    "/txcmux.demo.Demo/Greet",
    request_serializer=Message.SerializeToString,
    response_deserializer=Message.FromString,
)
print(greet(Message(text="world")).text)
EOF</pre>
<p>With <a href="https://github.com/fullstorydev/grpcurl">grpcurl</a>:</p>
<pre>grpcurl -plaintext {host} list
grpcurl -plaintext -d '{{"text": "world"}}' {host} txcmux.demo.Demo/Greet</pre>
<p>Your own services, sites and backends go in a config file:
<code>twistd -n cmux --config cmux.toml</code>.</p>
</body></html>
"""


def _protocol(request: Request) -> str:
    version = request.clientproto.decode("ascii", "replace")
    secure = request.isSecure()  # type: ignore[no-untyped-call]
    if version.startswith("HTTP/2"):
        return "HTTP/2 (h2)" if secure else "HTTP/2 (h2c)"
    return f"{version} over TLS" if secure else version


def _host(request: Request) -> str:
    given = request.getHeader(b"host")
    if given:
        return given.decode("ascii", "replace")
    address = request.getHost()  # type: ignore[no-untyped-call]
    return f"{getattr(address, 'host', 'localhost')}:{getattr(address, 'port', '')}"


class _Index(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")  # type: ignore[no-untyped-call]
        page = _PAGE.format(
            host=html.escape(_host(request)),
            protocol=html.escape(_protocol(request)),
        )
        return page.encode("utf-8")


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        return f"Hello from txcmux over {_protocol(request)}\n".encode()


def resource() -> Resource:
    """The demo site: ``/`` (how to try each protocol) and ``/hello``."""
    root = Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"", _Index())  # type: ignore[no-untyped-call]
    root.putChild(b"hello", _Hello())  # type: ignore[no-untyped-call]
    return root
