"""Step 2: the same Site behind txcmux, over HTTP/1.1 and HTTP/2 (h2c).

python step2_web.py 8080
curl http://127.0.0.1:8080/
curl --http2-prior-knowledge http://127.0.0.1:8080/
"""

import sys

from hello import Page
from twisted.internet import endpoints, reactor
from twisted.web import server

from txcmux import ProtocolSwitchingFactory, Route, matchers
from txcmux.web import WebFactory

port = sys.argv[1] if len(sys.argv) > 1 else "8080"
site = server.Site(Page())
mux = ProtocolSwitchingFactory(
    [
        Route("web", [matchers.http1(), matchers.http2()], WebFactory(site)),
    ]
)
endpoint = endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1")
endpoint.listen(mux).addCallback(
    lambda bound: print(f"listening on 127.0.0.1:{bound.getHost().port}", flush=True)
)
reactor.run()
