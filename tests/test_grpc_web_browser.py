"""gRPC-Web from a real browser: the official client in Chromium, grpcio behind txcmux.

The page (tests/browser/, bundled from npm's grpc-web and google-protobuf by
tests/browser_support.py) is served by the web route of a ``twistd -n cmux``
whose ``grpc_backend`` is the in-process grpcio server and ``grpc_web`` is
on; the page's script calls a unary and a server-streaming method of
tests/browser/grpc_web_service.py, in the binary and the text format, from
the Site's own origin and from another one (CORS).
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browser_support import (
    BROWSER,
    CHROMIUM,
    chromium_dom,
    dom_result,
    grpc_web_bundle,
    grpc_web_page_files,
)
from tests.test_twistd import Running, assert_clean_exit, start_twistd

__all__ = ["grpc_web_bundle", "start_twistd"]  # the fixtures, used by name

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")

CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1"]

[grpc_server]
services = ["grpc_web_service:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
static = "site"
grpc_backend = "in-process"
grpc_web = true
grpc_web_origins = [{origins}]
"""

UNARY = "/txcmux.test.Harness/Say"
STREAM = "/txcmux.test.Harness/SayStream"


def serve(
    tmp_path: Path, bundle: Path, start: Callable[..., Running], origins: str
) -> Running:
    site = tmp_path / "site"
    site.mkdir()
    grpc_web_page_files(bundle, site)
    shutil.copy(BROWSER / "grpc_web_service.py", tmp_path / "grpc_web_service.py")
    config = tmp_path / "cmux.toml"
    config.write_text(CONFIG.format(origins=origins), encoding="utf-8")
    return start("--config", str(config))


def page(page_host: str, port: int, **query: str) -> str:
    """The harness page's URL; ``query`` says what it calls (and ``host``, where)."""
    where = f"http://{page_host}:{port}/grpc_web_page.html"
    return f"{where}?{urllib.parse.urlencode(query)}"


@pytest.mark.parametrize("format_", ["binary", "text"])
def test_the_official_client_calls_grpcio_through_txcmux(
    tmp_path: Path,
    grpc_web_bundle: Path,
    start_twistd: Callable[..., Running],
    format_: str,
) -> None:
    running = serve(tmp_path, grpc_web_bundle, start_twistd, '"https://app.example"')
    url = page(
        "127.0.0.1",
        running.port,
        unary=UNARY,
        stream=STREAM,
        fields=json.dumps({"1": "héllo"}),
        format=format_,
    )
    result = dom_result(chromium_dom(url))
    assert "script_error" not in result, result
    assert result["unary"]["error"] is None, result
    assert result["unary"]["messages"] == [{"1": "echo: héllo"}]
    assert result["unary"]["status"]["code"] == 0
    assert result["unary"]["status"]["metadata"]["x-trailer"] == "done"
    assert result["unary"]["metadata"]["x-header"] == "yes"
    assert result["stream"]["error"] is None, result
    assert result["stream"]["messages"] == [{"1": f"héllo #{n}"} for n in (1, 2, 3)]
    assert result["stream"]["status"]["code"] == 0
    assert_clean_exit(running, running.stop())


def test_an_error_status_reaches_the_page(
    tmp_path: Path, grpc_web_bundle: Path, start_twistd: Callable[..., Running]
) -> None:
    running = serve(tmp_path, grpc_web_bundle, start_twistd, '"*"')
    url = page("127.0.0.1", running.port, unary=UNARY, fields=json.dumps({"1": "fail"}))
    result = dom_result(chromium_dom(url))
    assert result["unary"]["error"]["code"] == 5, result  # NOT_FOUND
    assert result["unary"]["error"]["message"] == "no such thing"
    assert_clean_exit(running, running.stop())


@pytest.mark.parametrize(
    ("origins", "allowed"), [('"*"', True), ('"https://app.example"', False)]
)
def test_a_page_of_another_origin(
    tmp_path: Path,
    grpc_web_bundle: Path,
    start_twistd: Callable[..., Running],
    origins: str,
    allowed: bool,
) -> None:
    """The page at localhost calls 127.0.0.1: another origin, so CORS decides."""
    running = serve(tmp_path, grpc_web_bundle, start_twistd, origins)
    url = page(
        "localhost",
        running.port,
        unary=UNARY,
        fields=json.dumps({"1": "from afar"}),
        host=f"http://127.0.0.1:{running.port}",
    )
    result = dom_result(chromium_dom(url))
    if allowed:
        assert result["unary"]["error"] is None, result
        assert result["unary"]["messages"] == [{"1": "echo: from afar"}]
    else:
        assert result["unary"]["error"] is not None, result  # refused: no CORS
    assert_clean_exit(running, running.stop())
