"""txcmux: many protocols on one port, for Twisted.

Each connection starts with a detector that reads the client's first bytes,
asks each route's matchers in priority order, and hands the connection to the
first route that matches::

    from txcmux import ProtocolSwitchingFactory, Route, matchers

    mux = ProtocolSwitchingFactory([
        Route("grpc", matchers.grpc(), grpc_factory),
        Route("web", [matchers.http1(), matchers.http2()], web_factory),
    ])
"""

from . import matchers
from ._connections import Limits
from ._decision import Reason, Stat
from ._detector import Rejection
from ._errors import ConfigurationError, TxcmuxError
from ._factory import ProtocolSwitchingFactory
from ._handoff import Handoff, IHandoffFactory, IHandoffReceiver
from ._route import Route

__version__ = "0.2.0.dev0"

__all__ = [
    "ConfigurationError",
    "Handoff",
    "IHandoffFactory",
    "IHandoffReceiver",
    "Limits",
    "ProtocolSwitchingFactory",
    "Reason",
    "Rejection",
    "Route",
    "Stat",
    "TxcmuxError",
    "matchers",
]
