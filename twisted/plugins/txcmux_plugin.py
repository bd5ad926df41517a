"""The twistd plugin for txcmux: ``twistd cmux --config FILE``.

The command itself is txcmux._config._twistd.  Kept tiny on purpose:
twistd imports every plugin module to list them, so this one imports
nothing of txcmux and never the reactor.
"""

from twisted.application.service import ServiceMaker

cmux = ServiceMaker(
    "txcmux",
    "txcmux._config._twistd",
    "Many protocols on one port: HTTP/1.1, HTTP/2, gRPC, TLS, SSH... (txcmux)",
    "cmux",
)
