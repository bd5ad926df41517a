"""Serve a WSGI application (Flask, Django) on a txcmux port.

:class:`WSGIApplication` is a Twisted service owning a thread pool; its
:meth:`~WSGIApplication.factory` is the route's target, serving the app
over HTTP/1.1, h2c and h2 (TLS ALPN) like :class:`txcmux.web.WebFactory`::

    >>> from txcmux import ProtocolSwitchingFactory, Route, matchers
    >>> from txcmux.wsgi import WSGIApplication
    >>> def app(environ, start_response):
    ...     start_response("200 OK", [("Content-Type", "text/plain")])
    ...     return [environ["REMOTE_ADDR"].encode()]
    >>> flask_app = WSGIApplication(app, threads=8)
    >>> mux = ProtocolSwitchingFactory([
    ...     Route("web", [matchers.http1(), matchers.http2()], flask_app.factory()),
    ... ])
    >>> flask_app  # flask_app.setServiceParent(application) starts the pool
    <WSGIApplication txcmux.wsgi:app threads=8 not running>

The app is run by Twisted's :class:`twisted.web.wsgi.WSGIResource`; each
request holds one of the pool's threads while the app runs.
"""

from ._apps._wsgi import DEFAULT_THREADS, WSGIApplication

__all__ = ["DEFAULT_THREADS", "WSGIApplication"]
