"""One twisted.web Site over HTTP/1.1, h2c and h2: the pieces of the web target.

Read in this order: ``_h2c`` (starting Twisted's HTTP/2 connection on any
transport), ``_channel`` (the factory, and the protocol that becomes the
right channel on a connection's first bytes).  Used through
:mod:`txcmux.web`::

    >>> from txcmux.web import WebFactory
"""
