"""The built-in demo: what ``twistd -n cmux`` serves without a config file.

::

    twistd -n cmux                       # on 127.0.0.1:8080, this host only
    twistd -n cmux --listen tcp:8080     # open to other hosts
    twistd -n cmux --listen tcp:9000     # elsewhere

One port serves a small web site over HTTP/1.1 and h2c, and an in-process
gRPC server with the standard health service (``grpc.health.v1.Health``),
a ``txcmux.demo.Demo`` service (``Echo`` and ``Greet``) and server
reflection.  Open ``http://localhost:8080/`` for commands that try each.
It listens on the loopback interface unless ``--listen`` (or a config
file) says otherwise, so trying it exposes nothing to the network.

The demo is an ordinary config file, :data:`DEMO_CONFIG`, with two routes::

    >>> for route in config().routes:
    ...     print(route.describe())
    grpc [grpc] -> in-process gRPC (txcmux.demo:add_services)
    web [http1 | http2] -> web txcmux.demo:resource, gRPC and gRPC-Web -> in-process
    >>> config().listen
    ('tcp:8080:interface=127.0.0.1',)

Call the demo service from Python with nothing but grpcio and
grpcio-health-checking installed: a ``Message`` has the same wire form as
protobuf's ``StringValue`` (one string, field 1)::

    import grpc
    from google.protobuf.wrappers_pb2 import StringValue

    channel = grpc.insecure_channel("localhost:8080")
    greet = channel.unary_unary(
        "/txcmux.demo.Demo/Greet",
        request_serializer=StringValue.SerializeToString,
        response_deserializer=StringValue.FromString,
    )
    print(greet(StringValue(value="world")).value)     # Hello, world!

The web page shows the same client as :data:`GRPC_CLIENT`.
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

from ._config._schema import Config, parse

__all__ = [
    "DEMO_CONFIG",
    "DEMO_LISTEN",
    "GRPC_CLIENT",
    "LOOPBACK_NOTE",
    "SERVICE_NAME",
    "Message",
    "add_services",
    "config",
    "resource",
]

#: Where the demo listens by default: port 8080 of the loopback interface.
DEMO_LISTEN = "tcp:8080:interface=127.0.0.1"
SERVICE_NAME = "txcmux.demo.Demo"

#: What ``twistd -n cmux`` logs when the demo listens where it does by default.
LOOPBACK_NOTE = (
    "the built-in demo listens on 127.0.0.1:8080, for this host only; to let"
    " other hosts in, run twistd -n cmux --listen tcp:8080 (or use --config)"
)

#: The demo as a config file (``listen`` is replaced by :func:`config`).
DEMO_CONFIG = f"""\
listen = ["{DEMO_LISTEN}"]

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
# gRPC calls on a connection that began with a web request, and gRPC-Web
# calls from browsers, go to the same in-process server (docs/mixing.md).
grpc_backend = "in-process"
grpc_web = true
"""


def config(listen: Sequence[str] | None = None) -> Config:
    """The demo's :class:`~txcmux.config.Config`, on ``listen`` (default
    :data:`DEMO_LISTEN`)."""
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

#: The gRPC client the demo page shows (``{host}`` is the page's host): it
#: needs grpcio and grpcio-health-checking only, not txcmux, as a
#: ``Message`` has the wire form of protobuf's ``StringValue``.
GRPC_CLIENT = """\
import grpc
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc

channel = grpc.insecure_channel("{host}")
health = health_pb2_grpc.HealthStub(channel)
print(health.Check(health_pb2.HealthCheckRequest()))
greet = channel.unary_unary(
    "/txcmux.demo.Demo/Greet",
    request_serializer=StringValue.SerializeToString,
    response_deserializer=StringValue.FromString,
)
print(greet(StringValue(value="world")).value)
"""

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
<p>gRPC from Python, in any environment with grpcio
(<code>pip install grpcio grpcio-health-checking</code>):</p>
<pre>python - &lt;&lt;'EOF'
{client}EOF</pre>
<p>With <a href="https://github.com/fullstorydev/grpcurl">grpcurl</a>:</p>
<pre>grpcurl -plaintext {host} list
grpcurl -plaintext -d '{{"text": "world"}}' {host} txcmux.demo.Demo/Greet</pre>
<p>Your own services, sites and backends go in a config file:
<code>twistd -n cmux --config cmux.toml</code>. The demo listens on
127.0.0.1 only; <code>twistd -n cmux --listen tcp:8080</code> lets other
hosts in.</p>
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
        host = _host(request)
        page = _PAGE.format(
            host=html.escape(host),
            protocol=html.escape(_protocol(request)),
            client=html.escape(GRPC_CLIENT.format(host=host)),
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
