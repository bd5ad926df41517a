"""Flask (WSGI) and FastAPI (ASGI) apps on one port with gRPC and SSH, end to end.

Each example of examples/ (flask.toml, fastapi.toml) runs under
``twistd -n cmux`` as a user would start it, with its SSH backend replaced
by a small stand-in that answers an SSH greeting, and the listener reading
PROXY headers from 127.0.0.1 when one comes.  Real clients talk to it:
curl over HTTP/1.1, h2c and HTTPS (h2 and HTTP/1.1), grpcio at the same
time as HTTP, a raw socket for the SSH relay, http.client after a PROXY
header and for a streamed response, and the websockets library for
FastAPI's WebSocket endpoint (plain and over TLS).  Django's WSGI and ASGI
handlers (examples/django_app.py) are served each way too.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import ssl
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.stand_ins import ssh_stand_in
from tests.test_twistd import Running, assert_clean_exit, check_grpc, start_twistd
from tests.tls_support import pki

__all__ = ["start_twistd"]  # the fixture, used by name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
APPS = {"flask": "flask_app.py", "fastapi": "fastapi_app.py"}


def config_for(tmp_path: Path, kind: str, ssh_port: int) -> Path:
    """examples/KIND.toml on port 0, PROXY headers read from 127.0.0.1, the
    stand-in as its SSH backend, and the test certificate."""
    text = (EXAMPLES / f"{kind}.toml").read_text(encoding="utf-8")
    listen = 'listen = ["tcp:8080:interface=127.0.0.1"]'
    assert listen in text and 'port=22"' in text
    text = text.replace(
        listen,
        'listen = ["tcp:0:interface=127.0.0.1"]\n'
        'proxy_protocol = "optional"\ntrusted_proxies = ["127.0.0.1"]',
    ).replace('port=22"', f'port={ssh_port}"')
    shutil.copy(EXAMPLES / APPS[kind], tmp_path / APPS[kind])
    shutil.copy(pki().server_certificate, tmp_path / "server.pem")
    shutil.copy(pki().server_key, tmp_path / "server.key")
    path = tmp_path / f"{kind}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def curl_json(port: int, *options: str, https: bool = False) -> dict[str, str]:
    if https:
        url = f"https://localhost:{port}/"
        options = (
            *options,
            "--cacert",
            str(pki().ca),
            "--resolve",
            f"localhost:{port}:127.0.0.1",
        )
    else:
        url = f"http://127.0.0.1:{port}/"
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "10", *options, url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, str] = json.loads(result.stdout)
    return answer


def exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data`` (then half-close if asked) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(data)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def through_a_proxy(port: int, client: str) -> dict[str, str]:
    """GET / on a connection that starts with a PROXY v1 header naming ``client``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 80\r\n".encode())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.sock = sock
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        answer: dict[str, str] = json.loads(response.read())
        return answer
    finally:
        connection.close()


def check_http(port: int) -> None:
    """Who the app sees, over each HTTP version, in plain text and TLS."""
    for options, https, protocol in (
        (("--http1.1",), False, "HTTP/1.1"),
        (("--http2-prior-knowledge",), False, "HTTP/2"),
        (("--http2",), True, "HTTP/2"),
        (("--http1.1",), True, "HTTP/1.1"),
    ):
        answer = curl_json(port, *options, https=https)
        assert answer == {
            "client": "127.0.0.1",
            "scheme": "https" if https else "http",
            "protocol": protocol,
        }, options
    # Behind a load balancer: the client a PROXY header names.
    assert through_a_proxy(port, "203.0.113.7")["client"] == "203.0.113.7"


def check_grpc_beside_http(port: int) -> None:
    """gRPC calls and HTTP requests at the same time, all answered."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        grpc_calls = [pool.submit(check_grpc, port) for _ in range(4)]
        http_calls = [
            pool.submit(curl_json, port, "--http2-prior-knowledge") for _ in range(8)
        ]
        for call in grpc_calls:
            call.result(timeout=60)
        for answer in http_calls:
            assert answer.result(timeout=60)["protocol"] == "HTTP/2"


def check_ssh_relay(port: int) -> None:
    reply = exchange(port, b"SSH-2.0-test-client\r\nping", half_close=True)
    assert reply == b"SSH-2.0-stand-in\r\nSSH-2.0-test-client\r\nping"


def check_streaming(port: int) -> None:
    """The first line arrives while the app still holds back the second."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/stream")
        response = connection.getresponse()
        assert response.status == 200
        assert response.readline() == b"first\n"
        release = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        release.request("GET", "/release")
        assert release.getresponse().status == 200
        release.close()
        assert response.read() == b"second\n"
    finally:
        connection.close()


def check_websocket(port: int) -> None:
    """FastAPI's /ws echoes, over ws:// and wss://, while HTTP goes on."""
    from websockets.asyncio.client import connect

    context = ssl.create_default_context(cafile=str(pki().ca))

    async def talk(url: str, **options: object) -> list[str]:
        async with connect(url, open_timeout=10, **options) as websocket:  # type: ignore[arg-type]
            # The client offered permessage-deflate; the server took it.
            assert websocket.response is not None
            extensions = websocket.response.headers.get("Sec-WebSocket-Extensions")
            assert extensions is not None and "permessage-deflate" in extensions
            answers = []
            for text in ("one", "two", "x" * 100_000):
                await websocket.send(text)
                answers.append(str(await asyncio.wait_for(websocket.recv(), 10)))
            return answers

    async def both() -> list[list[str]]:
        return list(
            await asyncio.gather(
                talk(f"ws://127.0.0.1:{port}/ws"),
                talk(
                    f"wss://localhost:{port}/ws",
                    ssl=context,
                    host="127.0.0.1",
                    port=port,
                ),
            )
        )

    for answers in asyncio.run(both()):
        assert answers == ["echo one", "echo two", "echo " + "x" * 100_000]


@pytest.mark.parametrize("kind", ["flask", "fastapi"])
def test_an_app_on_one_port_with_grpc_and_ssh(
    tmp_path: Path, start_twistd: object, kind: str
) -> None:
    with ssh_stand_in() as ssh_port:
        running: Running = start_twistd(  # type: ignore[operator]
            "--config", str(config_for(tmp_path, kind, ssh_port))
        )
        port = running.port
        check_http(port)
        check_grpc_beside_http(port)
        check_ssh_relay(port)
        check_streaming(port)
        if kind == "fastapi":
            check_websocket(port)
        output = running.stop()
    assert_clean_exit(running, output)
    target = "WSGI app flask_app:app (16 threads)" if kind == "flask" else "ASGI app"
    assert f"4. web [http1 | http2] -> {target}" in output
    if kind == "fastapi":
        assert output.count("fastapi_app: lifespan startup") == 1, output
        assert output.count("fastapi_app: lifespan shutdown") == 1, output
        assert output.index("lifespan shutdown") > output.index("draining")


DJANGO = """\
listen = ["tcp:0:interface=127.0.0.1"]
proxy_protocol = "optional"
trusted_proxies = ["127.0.0.1"]
routes = ["web"]

[[route]]
name = "web"
match = ["http1", "http2"]
{key} = "django_app:{handler}"
"""


@pytest.mark.parametrize(
    ("key", "handler"), [("wsgi", "application"), ("asgi", "asgi_application")]
)
def test_django_through_either_handler(
    tmp_path: Path, start_twistd: object, key: str, handler: str
) -> None:
    pytest.importorskip("django")
    shutil.copy(EXAMPLES / "django_app.py", tmp_path)
    config = tmp_path / "django.toml"
    config.write_text(DJANGO.format(key=key, handler=handler), encoding="utf-8")
    running: Running = start_twistd("--config", str(config))  # type: ignore[operator]
    for option in ("--http1.1", "--http2-prior-knowledge"):
        answer = curl_json(running.port, option)
        assert answer == {"client": "127.0.0.1", "scheme": "http"}, option
    assert through_a_proxy(running.port, "203.0.113.8")["client"] == "203.0.113.8"
    assert_clean_exit(running, running.stop())
