"""The wsgi and asgi keys: what a good file builds, and one clear error for each
mistake (the serving itself is in tests/test_webapps.py and tests/test_asgi.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests.test_config import assert_says, error_of, write
from txcmux import ConfigurationError
from txcmux.asgi import ASGIApplication
from txcmux.config import load, make_service
from txcmux.wsgi import WSGIApplication

APPS = """\
def wsgi_app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

async def asgi_app(scope, receive, send):
    pass

class Starlette:  # an app object whose __call__ is async, like FastAPI's
    async def __call__(self, scope, receive, send):
        pass

starlette = Starlette()

def make_wsgi():
    return wsgi_app

def broken_factory():
    raise RuntimeError("no settings")

not_an_app = 42
"""


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Path]:
    """A module of apps next to the config file."""
    (tmp_path / "apps_under_test.py").write_text(APPS, encoding="utf-8")
    yield tmp_path
    sys.modules.pop("apps_under_test", None)


def route(lines: str) -> str:
    return f'listen = ["tcp:0"]\n[[route]]\nname = "app"\nmatch = ["http1"]\n{lines}\n'


@pytest.mark.parametrize(
    ("lines", "shown"),
    [
        ('wsgi = "apps_under_test:wsgi_app"', "WSGI app apps_under_test:wsgi_app"),
        (
            'wsgi = "apps_under_test:make_wsgi()"\nwsgi_threads = 3',
            "WSGI app apps_under_test:make_wsgi() (3 threads)",
        ),
        ('asgi = "apps_under_test:asgi_app"', "ASGI app apps_under_test:asgi_app"),
        ('asgi = "apps_under_test:starlette"', "ASGI app apps_under_test:starlette"),
    ],
)
def test_good_app_routes(apps: Path, lines: str, shown: str) -> None:
    config = load(write(apps, route(lines)))
    assert config.routes[0].describe() == f"app [http1] -> {shown}"
    service = make_service(config, reactor=MemoryReactorClock())
    (app,) = service.generation.apps.values()
    assert app.parent is service
    if "wsgi" in lines:
        assert isinstance(app, WSGIApplication)
        assert app.threads == (3 if "threads" in lines else 10)
    else:
        assert isinstance(app, ASGIApplication)
        assert app.lifespan == "auto"


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        (
            'wsgi = "apps_under_test:nothing_here"',
            ['key "wsgi"', "apps_under_test has no attribute", '"nothing_here"'],
        ),
        (
            'wsgi = "no_such_module_here:app"',
            ['key "wsgi"', "cannot import", "No module named 'no_such_module_here'"],
        ),
        (
            'asgi = "apps_under_test:not_an_app"',
            ['key "asgi"', "is 42; expected an ASGI application"],
        ),
        (
            'wsgi = "apps_under_test:asgi_app"',
            ["is an ASGI application (it is async)", 'asgi = "apps_under_test:'],
        ),
        (
            'asgi = "apps_under_test:wsgi_app"',
            ["is not an ASGI 3 application", 'wsgi = "apps_under_test:wsgi_app"'],
        ),
        (
            'wsgi = "apps_under_test:broken_factory()"',
            [
                "calling apps_under_test:broken_factory() raised RuntimeError:",
                "no settings",
            ],
        ),
        (
            'asgi = "apps_under_test:asgi_app"\nwsgi_threads = 4',
            ['key "wsgi_threads"', "a key of wsgi routes; this route's target is asgi"],
        ),
        (
            'web = "txcmux.demo:resource"\nasgi_lifespan = "on"',
            ['key "asgi_lifespan"', "a key of asgi routes"],
        ),
        (
            'wsgi = "apps_under_test:wsgi_app"\nwsgi_threads = 0',
            ['key "wsgi_threads"', "0"],
        ),
        (
            'asgi = "apps_under_test:asgi_app"\nasgi_lifespan = "sometimes"',
            ['key "asgi_lifespan"', '"auto"', '"on"', '"off"'],
        ),
    ],
)
def test_app_route_errors(apps: Path, lines: str, fragments: list[str]) -> None:
    assert_says(error_of(apps, route(lines)), 'route "app"', *fragments)


def test_apps_are_kept_across_a_reload(apps: Path) -> None:
    """A reload builds new factories but keeps the running app services, so an
    ASGI app's lifespan starts once and a WSGI pool is not made twice."""
    path = write(
        apps,
        route('asgi = "apps_under_test:asgi_app"')
        + '[[route]]\nname = "flask"\nmatch = ["http2"]\n'
        'wsgi = "apps_under_test:wsgi_app"\n',
    )
    service = make_service(load(path), reactor=MemoryReactorClock())
    before = dict(service.generation.apps)
    service.state = "serving"
    assert service.reload()
    assert service.generation.number == 2
    assert service.generation.apps == before
    assert [s for s in service if isinstance(s, ASGIApplication | WSGIApplication)] == [
        *before.values()
    ]
    # Another thread count is another pool, started beside the first.
    path.write_text(path.read_text() + "wsgi_threads = 2\n")
    assert service.reload()
    assert len(service.generation.apps) == 3


def test_asgi_without_its_extra_says_what_to_install(
    apps: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("txcmux.asgi", "txcmux._apps._asgi_ws"):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "wsproto", None)  # not installed
    config = load(write(apps, route('asgi = "apps_under_test:asgi_app"')))
    with pytest.raises(ConfigurationError) as raised:
        make_service(config, reactor=MemoryReactorClock())
    assert_says(
        str(raised.value),
        'route "app"',
        "target 'asgi' needs what pip install 'txcmux[asgi]' installs",
        "wsproto",
    )


def test_requests_get_a_500_after_a_failed_startup() -> None:
    """From Python (no twistd to stop): a request to an app whose lifespan
    startup failed is answered 500, not left waiting."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "lifespan"
        await receive()  # type: ignore[operator]
        await send({"type": "lifespan.startup.failed", "message": "no db"})  # type: ignore[operator]

    class Reactor(Clock):
        """A clock whose callFromThread queues calls for the test to run."""

        def __init__(self) -> None:
            super().__init__()
            self.queued: list[tuple[object, tuple[object, ...]]] = []

        def callFromThread(self, f: object, *args: object) -> None:
            self.queued.append((f, args))

        def run_calls(self, until: object, seconds: float = 10) -> None:
            import time

            deadline = time.monotonic() + seconds
            while not until():  # type: ignore[operator]
                assert time.monotonic() < deadline, "the app's thread said nothing"
                while self.queued:
                    f, args = self.queued.pop(0)
                    f(*args)  # type: ignore[operator]
                time.sleep(0.01)

    reactor = Reactor()
    api = ASGIApplication(app, reactor=reactor)
    api.startService()
    started = api.when_started()
    failures: list[object] = []
    started.addErrback(failures.append)
    reactor.run_calls(lambda: failures)
    connection = api.factory().buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reactor.run_calls(lambda: b"\r\n\r\n" in transport.value())
    assert transport.value().startswith(b"HTTP/1.1 500"), transport.value()
    api.app_loop.stop()
