"""TLS termination as a route target: the pieces, one idea each.

Read in this order: ``_pem`` (certificate chains and keys from PEM files),
``_alpn`` (what a TLS route offers in ALPN), ``_inspect`` (what a handler
behind TLS can ask of its transport), ``_factory`` (the route target that
terminates TLS and hands the plaintext to a second detector).  Used
through :mod:`txcmux.tls`::

    >>> from txcmux.tls import TLSTerminationFactory, server_name
"""
