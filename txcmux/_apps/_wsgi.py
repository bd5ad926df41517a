"""WSGIApplication: a WSGI app (Flask, Django) on a thread pool, as a Twisted service.

Twisted's own :class:`twisted.web.wsgi.WSGIResource` runs the app; this
module gives it a thread pool of its own, started and stopped with the
service, and a :class:`~txcmux.web.WebFactory` over it, so that the app is
served over HTTP/1.1, h2c and h2 like any ``web`` route::

    >>> def app(environ, start_response):
    ...     start_response("200 OK", [("Content-Type", "text/plain")])
    ...     return [b"hello"]
    >>> flask_like = WSGIApplication(app, threads=4)
    >>> flask_like
    <WSGIApplication txcmux._apps._wsgi:app threads=4 not running>
    >>> factory = flask_like.factory()  # the route's target

``REMOTE_ADDR`` is the client (the one a PROXY header named, on a listener
that reads them) and ``wsgi.url_scheme`` is ``https`` on connections that
came through a ``tls`` route, because WSGIResource asks the request, and
the request asks the transport txcmux prepared.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.python.threadpool import ThreadPool
from twisted.web.wsgi import WSGIResource

from .._web._channel import WebFactory

#: Twisted's own default for the reactor's thread pool, and waitress's
#: order of magnitude (4): each request in the app holds one thread.
DEFAULT_THREADS = 10


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


def app_name(application: object) -> str:
    """How logs and ``repr`` name an app: its module and name where it has them."""
    name = getattr(application, "__qualname__", None) or type(application).__name__
    module = getattr(application, "__module__", None)
    if module in (None, "__main__", "builtins", "__console__") or module is None:
        return str(name)
    return f"{module}:{name}"


class WSGIApplication(Service):
    """A WSGI application served from a thread pool of ``threads`` threads.

    The pool starts with the service and stops with it (after a drain,
    when the requests have finished); a request that arrives while the
    service is not running waits in the pool's queue until it starts.
    :meth:`factory` gives the route's protocol factory; several routes may
    share one application and its pool.
    """

    def __init__(
        self,
        application: Any,
        *,
        threads: int = DEFAULT_THREADS,
        reactor: IReactorThreads | IReactorTime | None = None,
    ) -> None:
        if not callable(application):
            raise TypeError(f"a WSGI application is callable, not {application!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.application = application
        self.threads = threads
        self._reactor = _reactor(reactor)
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="txcmux-wsgi")
        self.resource = WSGIResource(self._reactor, self.pool, application)  # type: ignore[no-untyped-call]

    def factory(self, *, http2: bool = True, **web: Any) -> WebFactory:
        """A protocol factory serving the app over HTTP/1.1, h2c and h2.

        ``web`` are more of :class:`~txcmux.web.WebFactory`'s keywords
        (``grpc_backend``, for one).
        """
        return WebFactory(self.resource, reactor=self._reactor, http2=http2, **web)

    def startService(self) -> None:
        """Start the thread pool."""
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> None:
        """Stop the thread pool: its threads finish their request and end."""
        super().stopService()  # type: ignore[no-untyped-call]
        self.pool.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return (
            f"<WSGIApplication {app_name(self.application)}"
            f" threads={self.threads} {state}>"
        )
