"""The in-process gRPC server and what it needs to name a call's real client.

Read in this order: ``_peers`` (which client each relayed connection
carries), ``_unix_endpoint`` (unix client sockets a server can tell apart),
``_server`` (grpcio as a Twisted service behind a relay).  The public names
are in :mod:`txcmux.grpcserver` and :mod:`txcmux.relay`.  Importing this
package imports no grpcio; only ``_server`` does.  Used as::

    >>> from txcmux.grpcserver import GrpcServer, client_address
"""
