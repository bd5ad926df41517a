"""Serve gRPC on a txcmux port: a grpcio server behind a relay.

grpcio cannot take a Twisted transport, so a gRPC route relays its
connections to a grpcio server.  :class:`GrpcServer` runs one in this
process, on a unix socket in a private directory, as a Twisted service;
its :meth:`~GrpcServer.factory` is the route's target::

    >>> from txcmux import ProtocolSwitchingFactory, Route, matchers
    >>> from txcmux.grpcserver import GrpcServer
    >>> def add_services(server):
    ...     pass  # e.g. add_GreeterServicer_to_server(Greeter(), server)
    >>> grpc_server = GrpcServer([add_services], max_workers=16)
    >>> mux = ProtocolSwitchingFactory([
    ...     Route("grpc", matchers.grpc(), grpc_server.factory(name="grpc")),
    ... ])
    >>> grpc_server  # grpc_server.setServiceParent(application) starts it
    <GrpcServer not running>

A gRPC server elsewhere (another process, another language) is reached
with a plain ``txcmux.relay.RelayFactory("tcp:host=127.0.0.1:port=50051")``.
A servicer sees the relay, not the client, as its peer;
:func:`client_address` finds the real client::

    def SayHello(self, request, context):
        client = client_address(context)  # IPv4Address('TCP', '203.0.113.9', 51234)

:class:`GrpcServerError` (a :class:`~txcmux.TxcmuxError`) says grpcio could
not listen.
"""

from ._errors import GrpcServerError
from ._grpc._server import AddServices, GrpcServer, client_address

__all__ = ["AddServices", "GrpcServer", "GrpcServerError", "client_address"]
