"""The relay: a route's connections joined byte for byte to a backend's.

Read in this order: ``_clients`` (the hook telling a backend who the
client is), ``_splice`` (the kernel moves the bytes between plain sockets),
``_relay`` (the factory and both ends of a relayed connection).  The public
names are in :mod:`txcmux.relay`::

    >>> from txcmux.relay import RelayFactory, lookup_client
"""
