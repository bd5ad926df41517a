"""Step 4: HTTPS and gRPC over TLS on the same port as the plaintext routes.

python step4_https.py 8080 server.pem server.key
curl --cacert server.pem --http2 https://localhost:8080/
python client.py 127.0.0.1:8080 --tls server.pem
curl http://127.0.0.1:8080/        # plaintext still works
"""

import sys

from hello import Page, add_greeter
from twisted.internet import endpoints, reactor
from twisted.web import server

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.grpcserver import GrpcServer
from txcmux.tls import TLSTerminationFactory
from txcmux.web import WebFactory

port = sys.argv[1] if len(sys.argv) > 1 else "8080"
certificate = sys.argv[2] if len(sys.argv) > 2 else "server.pem"
key = sys.argv[3] if len(sys.argv) > 3 else "server.key"

site = server.Site(Page())
grpc_server = GrpcServer([add_greeter])
grpc_route = Route("grpc", matchers.grpc(), grpc_server.factory(name="grpc"))
web_route = Route("web", [matchers.http1(), matchers.http2()], WebFactory(site))
# Behind TLS, a second detector picks among the same routes; ALPN offers
# h2 and http/1.1 because those routes' matchers speak them.
https = TLSTerminationFactory(certificate, key, [grpc_route, web_route])
mux = ProtocolSwitchingFactory(
    [
        Route("tls", matchers.tls(), https),
        grpc_route,
        web_route,
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
