"""The example ports of examples/, served by twistd to real clients and servers.

- examples/bastion.toml: OpenSSH's ssh-keyscan reaches sshd, curl's SOCKS 5
  reaches microsocks (and through it, the same port's HTTPS), and only a
  client from 127.0.0.2 reaches the admin pages inside TLS.
- examples/iot.toml: mosquitto_sub and mosquitto_pub (MQTT 3.1.1 and 5, plain
  and TLS), curl's MQTT, and the websockets client (plain and TLS) all reach
  one mosquitto broker; curl gets the web page over HTTPS.
- A server-speaks-first protocol (FTP, pyftpdlib as the server, curl as the
  client) through ``on_timeout``.

Each test skips, saying so, when a Debian program it needs is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_twistd import (
    Running,
    free_port,
    start_twistd,  # noqa: F401  (the fixture)
)
from tests.tls_support import pki
from txcmux.testing import capture

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEADLINE = 20.0  # seconds for any one backend or client to be ready or done


def need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None and not Path(program).exists():
            pytest.skip(f"{program} is not installed (Debian has it)")


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    """Wait (bounded) until ``process`` accepts connections on ``port``."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited {process.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            return
        time.sleep(0.05)
    pytest.fail(f"{process.args!r} did not listen on {port} in time")


@contextlib.contextmanager
def serving(*command: str, port: int, also: int | None = None) -> Iterator[None]:
    """Run a backend listening on ``port`` (and ``also``) until the block ends."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process)
        if also is not None:
            wait_listening(also, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run(*command: str) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    assert result.returncode == 0, f"{command!r}: {result.returncode}\n{result.stderr}"
    return result.stdout


def example(tmp_path: Path, name: str, **ports: int) -> Path:
    """examples/NAME with its backends' ports replaced, and the test certificate."""
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    listen = next(line for line in text.splitlines() if line.startswith("listen = "))
    text = text.replace(listen, 'listen = ["tcp:0:interface=127.0.0.1"]')
    for old, new in ports.items():
        assert f'port={old.removeprefix("p")}"' in text, old
        text = text.replace(f'port={old.removeprefix("p")}"', f'port={new}"')
    shutil.copy(pki().server_certificate, tmp_path / "server.pem")
    shutil.copy(pki().server_key, tmp_path / "server.key")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def curl(*arguments: str) -> str:
    return run("curl", "-sS", "--max-time", "10", *arguments)


# -- the bastion: SSH, SOCKS, HTTPS ------------------------------------------


@contextlib.contextmanager
def sshd(tmp_path: Path, port: int) -> Iterator[None]:
    need("/usr/sbin/sshd", "ssh-keyscan")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root for its privilege separation")
    Path("/run/sshd").mkdir(exist_ok=True)
    key = tmp_path / "host_key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nUsePAM no\n"
        "PidFile none\n"
    )
    with serving("/usr/sbin/sshd", "-D", "-e", "-f", str(config), port=port):
        yield


def test_bastion_example(
    tmp_path: Path,
    start_twistd: Callable[..., Running],  # noqa: F811 (the imported fixture)
) -> None:
    need("microsocks", "curl")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("public pages\n")
    socks_port = free_port()
    config = example(tmp_path, "bastion.toml", p22=free_port(), p1080=socks_port)
    socks = ("microsocks", "-i", "127.0.0.1", "-p", str(socks_port))
    with serving(*socks, port=socks_port):
        running: Running = start_twistd("--config", str(config))
        port, ca = running.port, str(pki().ca)
        https = f"https://localhost:{port}"

        # SOCKS 5 to microsocks, which connects back to this port's HTTPS.
        via_socks = curl("-x", f"socks5h://127.0.0.1:{port}", "--cacert", ca, https)
        assert via_socks == "public pages\n"

        # The admin pages answer a client from 127.0.0.2 only.
        admin = ("--http1.1", "--cacert", ca, "-H", "Host: admin.localhost")
        hello = curl(*admin, "--interface", "127.0.0.2", f"{https}/hello")
        assert hello == "Hello from txcmux over HTTP/1.1 over TLS\n"
        outside = curl(
            *admin, "-o", "/dev/null", "-w", "%{http_code}", f"{https}/hello"
        )
        assert outside == "404"  # the static site has no /hello
        output = running.stop()
    assert "Traceback" not in output


def test_bastion_ssh_reaches_sshd(
    tmp_path: Path,
    start_twistd: Callable[..., Running],  # noqa: F811 (the imported fixture)
) -> None:
    ssh_port = free_port()
    config = example(tmp_path, "bastion.toml", p22=ssh_port, p1080=free_port())
    (tmp_path / "www").mkdir()
    with sshd(tmp_path, ssh_port):
        running: Running = start_twistd("--config", str(config))
        keys = run("ssh-keyscan", "-T", "10", "-p", str(running.port), "127.0.0.1")
        assert "127.0.0.1" in keys and "ssh-ed25519" in keys
        running.stop()


# -- the IoT port: MQTT, MQTT over WebSocket, TLS ----------------------------


@contextlib.contextmanager
def mosquitto(tmp_path: Path, mqtt: int, websockets: int) -> Iterator[None]:
    need("mosquitto", "mosquitto_pub", "mosquitto_sub")
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {mqtt} 127.0.0.1\nallow_anonymous true\n"
        f"listener {websockets} 127.0.0.1\nprotocol websockets\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with serving(binary, "-c", str(config), port=mqtt, also=websockets):
        yield


def subscribe(port: int, topic: str, *options: str) -> subprocess.Popen[str]:
    """mosquitto_sub waiting (bounded) for one message on ``topic``."""
    return subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "localhost",
            "-p",
            str(port),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "15",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def publish_until_received(
    subscriber: subprocess.Popen[str], publish: list[str]
) -> str:
    """Publish (at most 50 times, 0.2 s apart) until the subscriber got one."""
    for _ in range(50):
        run(*publish)
        try:
            out, err = subscriber.communicate(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        assert subscriber.returncode == 0, err
        return out
    subscriber.kill()
    pytest.fail(f"the subscriber never got a message from {publish!r}")


async def mqtt_over_websocket(uri: str, context: ssl.SSLContext | None) -> bytes:
    import websockets

    async with websockets.connect(
        uri,
        subprotocols=["mqtt"],
        ssl=context,
        open_timeout=10,  # type: ignore[list-item]
    ) as connection:
        # mosquitto_pub's own MQTT 3.1.1 CONNECT; the broker answers CONNACK.
        await connection.send(capture("mosquitto-pub-mqtt311.bin"))
        answer = await asyncio.wait_for(connection.recv(), 10)
        assert isinstance(answer, bytes)
        return answer


def test_iot_example(
    tmp_path: Path,
    start_twistd: Callable[..., Running],  # noqa: F811 (the imported fixture)
) -> None:
    pytest.importorskip("websockets")
    mqtt_port, ws_port = free_port(), free_port()
    config = example(tmp_path, "iot.toml", p1883=mqtt_port, p8083=ws_port)
    with mosquitto(tmp_path, mqtt_port, ws_port):
        running: Running = start_twistd("--config", str(config))
        port, ca = running.port, str(pki().ca)

        # MQTT 3.1.1 in the clear, from mosquitto_pub and from curl.
        subscriber = subscribe(port, "plain", "-V", "mqttv311")
        got = publish_until_received(
            subscriber,
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                "plain",
                "-m",
                "from mosquitto_pub",
                "-V",
                "mqttv311",
            ],
        )
        assert got == "from mosquitto_pub\n"
        subscriber = subscribe(port, "curl")
        got = publish_until_received(
            subscriber,
            ["curl", "-sS", "-d", "from curl", f"mqtt://127.0.0.1:{port}/curl"],
        )
        assert got == "from curl\n"

        # MQTT 5 inside TLS, which txcmux terminates: matched again inside.
        tls = ["--cafile", ca, "-V", "mqttv5"]
        subscriber = subscribe(port, "tls", *tls)
        got = publish_until_received(
            subscriber,
            [
                "mosquitto_pub",
                "-h",
                "localhost",
                "-p",
                str(port),
                "-t",
                "tls",
                "-m",
                "over tls",
                *tls,
            ],
        )
        assert got == "over tls\n"

        # MQTT over a WebSocket on /mqtt, plain and inside TLS.
        connack = b"\x20\x02\x00\x00"
        uri = f"ws://127.0.0.1:{port}/mqtt"
        assert asyncio.run(mqtt_over_websocket(uri, None)) == connack
        context = ssl.create_default_context(cafile=ca)
        uri = f"wss://localhost:{port}/mqtt"
        assert asyncio.run(mqtt_over_websocket(uri, context)) == connack

        # And the web page over HTTPS, on the same port.
        page = curl("--cacert", ca, f"https://localhost:{port}/hello")
        assert page == "Hello from txcmux over HTTP/1.1 over TLS\n"
        output = running.stop()
    assert "Traceback" not in output


# -- a protocol whose server speaks first ------------------------------------

SERVER_FIRST = """
listen = ["tcp:0:interface=127.0.0.1"]
sniff_timeout = 0.5
on_timeout = "ftp"

[[route]]
name = "web"
match = ["http1"]
web = "txcmux.demo:resource"

# Last, so that any earlier route still waiting keeps priority; named in
# on_timeout, so that a client that waits for a greeting gets the FTP one.
[[route]]
name = "ftp"
match = ["any"]
proxy = "tcp:host=127.0.0.1:port=FTP_PORT"
"""


def test_a_server_speaks_first_protocol_through_on_timeout(
    tmp_path: Path,
    start_twistd: Callable[..., Running],  # noqa: F811 (the imported fixture)
) -> None:
    need("curl")
    pytest.importorskip("pyftpdlib")
    ftp_root = tmp_path / "ftp-root"
    ftp_root.mkdir()
    (ftp_root / "notes.txt").write_text("served over ftp\n")
    ftp_port = free_port()
    config = tmp_path / "cmux.toml"
    config.write_text(SERVER_FIRST.replace("FTP_PORT", str(ftp_port)))
    ftp = [sys.executable, "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(ftp_port)]
    with serving(*ftp, "-d", str(ftp_root), port=ftp_port):
        running: Running = start_twistd("--config", str(config))
        port = running.port
        assert curl(f"ftp://127.0.0.1:{port}/notes.txt") == "served over ftp\n"
        assert curl(f"http://127.0.0.1:{port}/hello") == (
            "Hello from txcmux over HTTP/1.1\n"
        )
        output = running.stop()
    assert "Traceback" not in output
