"""The gRPC-Web browser harness works: the official client in headless Chromium.

The bundled client (tests/browser/, see tests/browser_support.py) is served
by a twisted.web Site under ``twistd -n cmux`` together with a stand-in
gRPC-Web server (tests/browser/grpc_web_stub.py) that records each POST
and answers with hand-built gRPC-Web frames.  Chromium runs the page; the
test checks both sides: what the client sent (path, content type,
``x-grpc-web``, the length-prefixed message, base64 for the text format)
and what it made of the answer (the decoded messages, the status, the
response headers and the trailers), for a unary and a server-streaming
call, in the binary and the text format.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

[[route]]
name = "web"
match = ["http1", "http2"]
web = "grpc_web_stub:resource"
"""

UNARY = "/txcmux.test.Harness/Say"
STREAM = "/txcmux.test.Harness/SayStream"


def length_prefixed(text: str) -> bytes:
    """A gRPC message frame holding field 1 = ``text`` (text under 128 bytes)."""
    message = b"\x0a" + bytes([len(text.encode())]) + text.encode()
    return b"\x00" + len(message).to_bytes(4, "big") + message


@pytest.fixture
def stub(
    tmp_path: Path,
    grpc_web_bundle: Path,
    start_twistd: Callable[..., Running],
) -> Running:
    grpc_web_page_files(grpc_web_bundle, tmp_path)
    shutil.copy(BROWSER / "grpc_web_stub.py", tmp_path / "grpc_web_stub.py")
    (tmp_path / "cmux.toml").write_text(CONFIG, encoding="utf-8")
    return start_twistd("--config", str(tmp_path / "cmux.toml"))


def recorded(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/recorded", timeout=10) as r:
        answer: list[dict[str, Any]] = json.loads(r.read())
    return answer


def page_url(port: int, **query: str) -> str:
    return f"http://127.0.0.1:{port}/?{urllib.parse.urlencode(query)}"


@pytest.mark.parametrize("format_", ["binary", "text"])
def test_the_client_calls_and_decodes(stub: Running, format_: str) -> None:
    url = page_url(
        stub.port,
        unary=UNARY,
        stream=STREAM,
        fields=json.dumps({"1": "héllo"}),
        metadata=json.dumps({"x-asked": "by the page"}),
        format=format_,
    )
    result = dom_result(chromium_dom(url))
    assert "script_error" not in result, result
    ok = {"code": 0, "details": "", "metadata": {"x-trailer": "done"}}
    assert result["unary"]["error"] is None, result
    assert result["unary"]["messages"] == [{"1": "echo: héllo"}]
    assert result["unary"]["status"] == ok
    assert result["unary"]["metadata"]["x-header"] == "yes"
    assert result["stream"]["error"] is None, result
    assert result["stream"]["messages"] == [{"1": f"héllo #{n}"} for n in (1, 2, 3)]
    assert result["stream"]["status"] == ok

    calls = recorded(stub.port)
    assert [call["path"] for call in calls] == [UNARY, STREAM]
    sent = length_prefixed("héllo")
    for call in calls:
        body = bytes.fromhex(call["body_hex"])
        if format_ == "text":
            assert call["content_type"] == "application/grpc-web-text"
            assert call["accept"] == "application/grpc-web-text"
            assert base64.b64decode(body) == sent
        else:
            assert call["content_type"] == "application/grpc-web+proto"
            assert body == sent
        assert call["x_grpc_web"] == "1"
        assert call["x_user_agent"].startswith("grpc-web-javascript/")
        assert call["messages"] == ["héllo"]
        assert call["headers"]["x-asked"] == "by the page"
    assert_clean_exit(stub, stub.stop())
