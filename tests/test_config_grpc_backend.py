"""The grpc_backend, grpc_web and grpc_web_origins keys of web routes, and
[grpc_server] services: what a good file builds, one clear error for each
mistake (serving is in tests/test_grpc_streams.py and tests/test_grpc_web.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests.test_config import assert_says, error_of, write
from txcmux.config import load, make_service
from txcmux.grpcserver import GrpcServer
from txcmux.web import WebFactory


def route(lines: str, *, top: str = "") -> str:
    return (
        f'listen = ["tcp:0"]\n{top}[[route]]\nname = "site"\n'
        'match = ["http1", "http2"]\n'
        f'web = "txcmux.demo:resource"\n{lines}\n'
    )


SERVICES = '[grpc_server]\nservices = ["tests.grpc_support.service:add_to"]\n'


def web_factory(service: Any) -> WebFactory:
    """The one WebFactory ``service``'s listener routes to."""
    (mux,) = service.generation.muxes
    (factory,) = [r.factory for r in mux.routes if isinstance(r.factory, WebFactory)]
    return factory


def test_an_external_backend(tmp_path: Path) -> None:
    config = load(
        write(tmp_path, route('grpc_backend = "tcp:host=127.0.0.1:port=50051"'))
    )
    assert config.routes[0].describe() == (
        "site [http1 | http2] -> web txcmux.demo:resource,"
        " gRPC -> tcp:host=127.0.0.1:port=50051"
    )
    service = make_service(config, reactor=MemoryReactorClock())
    web = web_factory(service)
    assert web.grpc_backend is not None
    assert web.grpc_backend.name == "site grpc_backend"
    assert service.grpc_server is None  # nothing in-process was asked for


def test_in_process_with_grpc_server_services(tmp_path: Path) -> None:
    text = route(
        'grpc_backend = "in-process"\ngrpc_web = true\ngrpc_web_origins = ["https://app.example"]',
        top=SERVICES,
    )
    config = load(write(tmp_path, text))
    assert config.routes[0].grpc_web_origins == ("https://app.example",)
    assert "gRPC and gRPC-Web -> in-process" in config.routes[0].describe()
    service = make_service(config, reactor=MemoryReactorClock())
    assert isinstance(service.grpc_server, GrpcServer)
    assert len(service.grpc_server.add_services) == 1
    web = web_factory(service)
    assert web.grpc_backend is not None
    assert "in-process gRPC server" in repr(web.grpc_backend.endpoint)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            route('grpc_backend = "in-process"'),
            [
                'key "grpc_backend"',
                "the in-process gRPC server has no services",
                '[grpc_server] services = ["module:add_services"]',
            ],
        ),
        (
            route("grpc_backend = 50051"),
            ['key "grpc_backend"', '"in-process" or a client endpoint string'],
        ),
        (
            route('grpc_backend = "nonsense:what"'),
            ['key "grpc_backend"', "nonsense:what"],
        ),
        (
            route("grpc_web = true"),
            ['key "grpc_web"', "gRPC-Web calls go to the route's grpc_backend"],
        ),
        (
            route(
                'grpc_backend = "tcp:host=127.0.0.1:port=1"\ngrpc_web_origins = ["https://a.example"]'
            ),
            ['key "grpc_web_origins"', "expected grpc_web = true as well"],
        ),
        (
            route(
                'grpc_backend = "tcp:host=127.0.0.1:port=1"\ngrpc_web = true\n'
                'grpc_web_origins = ["https://a.example/page"]'
            ),
            [
                'key "grpc_web_origins[0]"',
                "an origin: scheme://host[:port] with no path",
            ],
        ),
        (
            'listen = ["tcp:0"]\n[[route]]\nname = "site"\nmatch = ["ssh"]\n'
            'proxy = "tcp:host=127.0.0.1:port=22"\ngrpc_backend = "in-process"\n',
            [
                'key "grpc_backend"',
                "a key of web, static, wsgi and asgi routes",
                "target is proxy",
            ],
        ),
    ],
)
def test_errors(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = (
        error_of(tmp_path, text)
        if "no services" not in fragments[1]
        else _build_error(tmp_path, text)
    )
    assert_says(message, 'route "site"', *fragments)


def _build_error(tmp_path: Path, text: str) -> str:
    from txcmux import ConfigurationError

    config = load(write(tmp_path, text))
    with pytest.raises(ConfigurationError) as raised:
        make_service(config, reactor=MemoryReactorClock())
    message = str(raised.value)
    assert "\n" not in message
    return message
