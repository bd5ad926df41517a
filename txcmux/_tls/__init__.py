"""TLS termination: the pieces behind :mod:`txcmux.tls`.

Read in this order: ``_pem`` (certificate chains and keys from PEM files),
``_alpn`` (what a TLS route offers in ALPN), ``_inspect`` (what a handler
behind TLS can ask of its transport), ``_factory`` (the route target that
terminates TLS and hands the plaintext to a second detector).
"""
