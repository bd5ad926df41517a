"""The asgi target under ``twistd -n cmux``: what a server must do when an app
misbehaves, and the bounds it keeps (tests/asgi_misbehaving.py is the app).

Real clients: curl, http.client, raw sockets and the websockets library.
The config errors of the wsgi and asgi keys are in tests/test_config_apps.py.
"""

from __future__ import annotations

import ast
import asyncio
import http.client
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_twistd import (
    Running,
    assert_clean_exit,
    clean_environment,
    start_twistd,
    twistd_command,
)

__all__ = ["start_twistd"]  # the fixture, used by name

HERE = Path(__file__).resolve().parent

CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1"]
drain_timeout = 20
routes = ["app"]

[[route]]
name = "app"
match = ["http1", "http2"]
asgi = "asgi_misbehaving:{app}"
{extra}
"""


def serve(tmp_path: Path, start: object, app: str = "app", extra: str = "") -> Running:
    shutil.copy(HERE / "asgi_misbehaving.py", tmp_path)
    config = tmp_path / "asgi.toml"
    config.write_text(CONFIG.format(app=app, extra=extra), encoding="utf-8")
    running: Running = start("--config", str(config))  # type: ignore[operator]
    return running


def curl(port: int, path: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *options, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def seen(port: int) -> dict[str, object]:
    result = curl(port, "/seen")
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = ast.literal_eval(result.stdout)
    return answer


def until(condition: object, what: str, timeout: float = 10.0) -> None:
    """Poll ``condition()`` (bounded) until it is true."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_misbehaving_app_gets_errors_and_cut_responses(
    tmp_path: Path, start_twistd: object
) -> None:
    running = serve(tmp_path, start_twistd)
    port = running.port
    for option in ("--http1.1", "--http2-prior-knowledge"):
        # Raised before answering, or returned without an answer: a 500.
        for path in ("/raise-before", "/nothing"):
            result = curl(port, path, option, "-o", "/dev/null", "-w", "%{http_code}")
            assert result.stdout == "500", (path, option, result.stderr)
        # Raised halfway: the client sees the response cut short, not
        # complete: curl 56 is the connection reset; over HTTP/2 the stream
        # is reset (52 or 92, by what of it had gone out).
        result = curl(port, "/raise-after", option)
        assert result.returncode in ((56,) if option == "--http1.1" else (52, 92))
        # A request body reaches the app whole, and the port goes on serving.
        body = tmp_path / "body"
        body.write_bytes(b"b" * 3_000_000)
        result = curl(port, "/echo", option, "--data-binary", f"@{body}")
        assert result.returncode == 0 and result.stdout == "b" * 3_000_000
    output = running.stop()
    assert running.process.returncode == 0, output  # the app's tracebacks logged
    assert output.count("raised on GET /raise-before") == 2
    assert output.count("returned without completing the response to GET") == 2
    assert output.count("raised on GET /raise-after") == 2


def test_the_app_hears_that_the_client_left(
    tmp_path: Path, start_twistd: object
) -> None:
    running = serve(tmp_path, start_twistd)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as client:
        client.sendall(b"GET /disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"wait" in client.recv(65536)
    until(lambda: seen(running.port)["disconnected"] is True, "http.disconnect")
    assert_clean_exit(running, running.stop())


def test_a_slow_reader_holds_the_app_back(tmp_path: Path, start_twistd: object) -> None:
    """The app's sends wait while the client does not read: what the server
    holds stays bounded, and every byte arrives once the client reads."""
    from tests.asgi_misbehaving import FLOOD_TOTAL

    running = serve(tmp_path, start_twistd)
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    connection.request("GET", "/flood")
    response = connection.getresponse()
    assert len(response.read(1024)) == 1024
    # The client stops reading; the app soon stops being let to send.
    samples: list[int] = []

    def settled() -> bool:
        samples.append(int(seen(running.port)["flood_bytes"]))  # type: ignore[call-overload]
        return len(samples) >= 5 and len(set(samples[-5:])) == 1

    until(settled, "the app to be held back")
    assert samples[-1] < FLOOD_TOTAL // 2, samples
    assert len(response.read()) == FLOOD_TOTAL - 1024
    connection.close()
    assert_clean_exit(running, running.stop())


def test_websocket_rejection_limits_and_drain(
    tmp_path: Path, start_twistd: object
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    running = serve(tmp_path, start_twistd)
    url = f"ws://127.0.0.1:{running.port}"

    async def talk() -> None:
        # Closing before accepting refuses the handshake with 403.
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{url}/ws-reject", open_timeout=10)
        assert refused.value.response.status_code == 403
        # Accepting with a subprotocol the client did not offer: a 500.
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{url}/ws-bad-subprotocol", open_timeout=10)
        assert refused.value.response.status_code == 500
        # The subprotocol the app chose; a message over 16 MiB closes with 1009.
        async with connect(
            f"{url}/ws", subprotocols=["echo.v1"], max_size=None, open_timeout=10
        ) as websocket:
            assert websocket.subprotocol == "echo.v1"
            await websocket.send("small")
            assert await asyncio.wait_for(websocket.recv(), 10) == "small"
            await websocket.send("x" * (16 * 1024 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(websocket.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(talk())

    # A drain closes an open WebSocket with 1001 (Going Away), and twistd
    # exits well before drain_timeout.
    async def drained() -> int:
        async with connect(f"{url}/ws", open_timeout=10) as websocket:
            await websocket.send("before")
            assert await asyncio.wait_for(websocket.recv(), 10) == "before"
            started = time.monotonic()
            running.process.terminate()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(websocket.recv(), 15)
            assert time.monotonic() - started < 10
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code

    assert asyncio.run(drained()) == 1001
    running.process.wait(timeout=30)
    output = running.log.read_text(encoding="utf-8")
    assert_clean_exit(running, output)
    assert "a WebSocket message over 16777216 bytes" in output
    assert "cannot send AcceptConnection on the WebSocket /ws-bad-subprotocol" in output


def run_until_it_stops(tmp_path: Path, app: str, extra: str = "") -> str:
    """Run ``twistd -n cmux`` with ``app`` until it stops by itself; its output."""
    shutil.copy(HERE / "asgi_misbehaving.py", tmp_path)
    config = tmp_path / "asgi.toml"
    config.write_text(CONFIG.format(app=app, extra=extra), encoding="utf-8")
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "cmux", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
    )
    return result.stdout + result.stderr


def test_a_failed_lifespan_startup_stops_the_service(tmp_path: Path) -> None:
    output = run_until_it_stops(tmp_path, "failing_startup")
    assert "ASGI app asgi_misbehaving:failing_startup: lifespan startup failed:" in (
        output
    )
    assert "no database" in output
    assert "not every listener or app could start; stopping" in output


@pytest.mark.parametrize(
    ("lifespan", "serves"), [("auto", True), ("off", True), ("on", False)]
)
def test_an_app_without_lifespan(
    tmp_path: Path, start_twistd: object, lifespan: str, serves: bool
) -> None:
    extra = f'asgi_lifespan = "{lifespan}"'
    if not serves:
        output = run_until_it_stops(tmp_path, "no_lifespan", extra)
        assert 'lifespan = "on", but the app raised' in output
        return
    running = serve(tmp_path, start_twistd, "no_lifespan", extra)
    result = curl(running.port, "/")
    assert result.stdout == "plain"
    output = running.stop()
    assert_clean_exit(running, output)
    said = "does not use the lifespan protocol"
    assert (said in output) is (lifespan == "auto")
