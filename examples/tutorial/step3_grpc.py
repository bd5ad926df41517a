"""Step 3: gRPC on the same port, served by grpcio in this process.

python step3_grpc.py 8080
curl --http2-prior-knowledge http://127.0.0.1:8080/
python client.py 127.0.0.1:8080
"""

import sys

from hello import Page, add_greeter
from twisted.internet import endpoints, reactor
from twisted.web import server

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.grpcserver import GrpcServer
from txcmux.web import WebFactory

port = sys.argv[1] if len(sys.argv) > 1 else "8080"
site = server.Site(Page())
grpc_server = GrpcServer([add_greeter])
mux = ProtocolSwitchingFactory(
    [
        # gRPC first: it is HTTP/2 too, told apart by its content-type.
        Route("grpc", matchers.grpc(), grpc_server.factory(name="grpc")),
        Route("web", [matchers.http1(), matchers.http2()], WebFactory(site)),
    ]
)

# The grpcio server starts before the port opens and stops with the reactor.
grpc_server.startService()
reactor.addSystemEventTrigger("before", "shutdown", grpc_server.stopService)
endpoint = endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1")
endpoint.listen(mux).addCallback(
    lambda bound: print(f"listening on 127.0.0.1:{bound.getHost().port}", flush=True)
)
reactor.run()
