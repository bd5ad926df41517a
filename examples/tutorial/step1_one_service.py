"""Step 1: the application as it starts, one twisted.web Site on its own port.

python step1_one_service.py 8080
curl http://127.0.0.1:8080/
"""

import sys

from hello import Page
from twisted.internet import endpoints, reactor
from twisted.web import server

port = sys.argv[1] if len(sys.argv) > 1 else "8080"
site = server.Site(Page())
endpoint = endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1")
endpoint.listen(site).addCallback(
    lambda bound: print(f"listening on 127.0.0.1:{bound.getHost().port}", flush=True)
)
reactor.run()
