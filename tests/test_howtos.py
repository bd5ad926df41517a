"""The how-to guides' files: each loads with the real config loader, several serve.

Every file under examples/howto/ is included by a page of docs/howto/; each
TOML file there is loaded with ``txcmux.config.load`` (with certificates made
at test time where it names some); the files that must agree with each other
(the systemd units and their config, the Kubernetes manifests and theirs,
HAProxy's config and txcmux's) are held to agree; and the cheap ones are run
under twistd on 127.0.0.1 port 0 and asked by curl and grpcio.
"""

from __future__ import annotations

import base64
import configparser
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.stand_ins import ssh_stand_in
from tests.test_twistd import clean_environment, twistd_command
from txcmux.config import load

ROOT = Path(__file__).resolve().parent.parent
HOWTO = ROOT / "examples" / "howto"
PAGES = ROOT / "docs" / "howto"
START_TIMEOUT = 30.0

#: The certificates the TLS how-tos name, each for its own server name.
CERTIFICATES = {
    "example.com": "localhost",
    "api.example.com": "api.example.com",
    "example.org": "*.example.org",
}


def make_certificates(directory: Path) -> None:
    """certs/NAME.pem and certs/NAME.key, self-signed, as the files name them."""
    certs = directory / "certs"
    certs.mkdir()
    for stem, name in CERTIFICATES.items():
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", f"/CN={name}",
                "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1",
                "-keyout", str(certs / f"{stem}.key"),
                "-out", str(certs / f"{stem}.pem"),
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )  # fmt: skip


def copied(tmp_path: Path, name: str) -> Path:
    """examples/howto/NAME in tmp_path, with the certificates it may name
    and examples/websocket_app.py, which the page says to put beside it."""
    if not (tmp_path / "certs").exists():
        make_certificates(tmp_path)
    shutil.copy(HOWTO / name, tmp_path / name)
    if "websocket_app:" in (HOWTO / name).read_text(encoding="utf-8"):
        shutil.copy(ROOT / "examples" / "websocket_app.py", tmp_path)
    return tmp_path / name


def test_every_file_is_on_a_page() -> None:
    included = set()
    for page in PAGES.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        included |= set(
            re.findall(r"\{literalinclude\} \.\./\.\./examples/howto/(\S+)", text)
        )
    files = {p.name for p in HOWTO.iterdir()}
    assert files == included, files ^ included


@pytest.mark.parametrize("name", sorted(p.name for p in HOWTO.glob("*.toml")))
def test_every_config_loads(tmp_path: Path, name: str) -> None:
    config = load(copied(tmp_path, name))
    assert config.listener_routes, name
    assert config.warnings == (), config.warnings


def test_the_systemd_units_and_their_config_agree() -> None:
    units = configparser.ConfigParser(interpolation=None, strict=False)
    units.optionxform = str  # type: ignore[assignment,method-assign]
    units.read_string((HOWTO / "cmux.socket").read_text(encoding="utf-8"))
    name = units["Socket"]["FileDescriptorName"]
    config = load(HOWTO / "systemd.toml")
    assert config.listen == (f"systemd:domain=INET:name={name}",)
    service = configparser.ConfigParser(interpolation=None, strict=False)
    service.optionxform = str  # type: ignore[assignment,method-assign]
    service.read_string((HOWTO / "cmux.service").read_text(encoding="utf-8"))
    assert service["Service"]["Type"] == "notify"
    assert service["Service"]["ExecStart"].endswith("--config /etc/cmux/systemd.toml")
    assert "--nodaemon" in service["Service"]["ExecStart"]
    stop = float(service["Service"]["TimeoutStopSec"])
    assert stop > config.drain_timeout


def test_haproxy_sends_to_where_txcmux_listens() -> None:
    text = (HOWTO / "haproxy.cfg").read_text(encoding="utf-8")
    server = re.search(r"server \w+ ([\d.]+):(\d+) send-proxy-v2", text)
    assert server is not None
    config = load(HOWTO / "behind-proxy.toml")
    first = config.listeners[0]
    assert first.proxy_protocol == "required"
    assert first.endpoint == f"tcp:{server.group(2)}:interface={server.group(1)}"
    assert server.group(1) in config.listeners[0].trusted_proxies


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy")
def test_haproxy_accepts_its_config() -> None:
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(HOWTO / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_kubernetes_manifests_and_their_config_agree() -> None:
    yaml = pytest.importorskip("yaml")
    documents = list(
        yaml.safe_load_all((HOWTO / "kubernetes.yaml").read_text(encoding="utf-8"))
    )
    kinds = {document["kind"]: document for document in documents}
    config = load(HOWTO / "kubernetes.toml")
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert config.listen == (f"tcp:{ports['public']}",)
    assert config.admin is not None
    assert config.admin.listen == f"tcp:{ports['admin']}"
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "admin",
    }
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "admin",
    }
    assert pod["terminationGracePeriodSeconds"] > config.drain_timeout
    assert container["command"][-1] == "/etc/cmux/kubernetes.toml"
    assert container["volumeMounts"][0]["mountPath"] == "/etc/cmux"
    # The balancer reaches the public port only; the probes' port stays inside.
    (service_port,) = kinds["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "public"
    assert config.listeners[0].proxy_protocol == "required"


# -- served by twistd ----------------------------------------------------------


class Served:
    """A twistd serving one how-to's config on a free loopback port."""

    def __init__(self, directory: Path, config: str) -> None:
        self.port_file = directory / "ports"
        self.log = directory / "twistd.log"
        with self.log.open("w", encoding="utf-8") as output:
            self.process = subprocess.Popen(
                [
                    *twistd_command(), "-n", "--pidfile=", "cmux",
                    "--config", config,
                    "--listen", "tcp:0:interface=127.0.0.1",
                    "--port-file", str(self.port_file),
                ],
                cwd=directory,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=clean_environment(),
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port_file.exists():
            if self.process.poll() is not None:
                pytest.fail(f"twistd exited:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"twistd did not listen in time:\n{self.log.read_text()}")
            time.sleep(0.05)  # waiting for another process, not for time to pass
        self.port = int(self.port_file.read_text().split()[0])

    def stop(self) -> str:
        """SIGTERM, wait (bounded), and return the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return self.log.read_text(encoding="utf-8")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """Serve examples/howto/NAME (copied, with certificates) under twistd."""
    started: list[Served] = []

    def start(name: str, edit: dict[str, str] | None = None) -> Served:
        path = copied(tmp_path, name)
        text = path.read_text(encoding="utf-8")
        for old, new in (edit or {}).items():
            assert old in text
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
        started.append(Served(tmp_path, name))
        return started[-1]

    yield start
    for served in started:
        log = served.stop()
        assert "Traceback" not in log, log
        assert served.process.returncode == 0, log


def curl(*arguments: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "20", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def health(channel: grpc.Channel) -> int:
    """The gRPC health service's answer over ``channel``."""
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=20)
    return int(answer.status)


needs_curl = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None,
    reason="needs curl and openssl",
)


@needs_curl
def test_grpc_and_web_serves_both(serve) -> None:  # type: ignore[no-untyped-def]
    served = serve("grpc-and-web.toml")
    url = f"http://127.0.0.1:{served.port}/hello"
    assert curl(url) == "Hello from txcmux over HTTP/1.1\n"
    assert (
        curl("--http2-prior-knowledge", url) == "Hello from txcmux over HTTP/2 (h2c)\n"
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{served.port}")
    assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    # A client that began with a web request makes a gRPC call on the same
    # connection: the web route's grpc_backend forwards it.
    web, call = one_connection(served.port)
    assert web == b"Hello from txcmux over HTTP/2 (h2c)\n"
    assert call[b"grpc-status"] == b"0"
    answer = health_pb2.HealthCheckResponse.FromString(call[b"message"])
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def one_connection(port: int) -> tuple[bytes, dict[bytes, bytes]]:
    """GET /hello, then a gRPC health check, on one HTTP/2 connection (h2)."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)

    def exchange(
        headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> dict[bytes, bytes]:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            conn.send_data(stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        got: dict[bytes, bytes] = {b"body": b""}
        while True:
            data = sock.recv(65536)
            assert data, "connection closed"
            for event in conn.receive_data(data):
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, h2.events.DataReceived):
                    got[b"body"] += event.data
                    conn.acknowledge_received_data(
                        event.flow_controlled_length, stream_id
                    )
                elif isinstance(
                    event, (h2.events.ResponseReceived, h2.events.TrailersReceived)
                ):
                    got.update(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    sock.sendall(conn.data_to_send())
                    return got
            sock.sendall(conn.data_to_send())

    common = [(b":scheme", b"http"), (b":authority", b"127.0.0.1")]
    with sock:
        web = exchange([(b":method", b"GET"), (b":path", b"/hello"), *common], None)
        call = exchange(
            [(b":method", b"POST"), (b":path", b"/grpc.health.v1.Health/Check"),
             *common, (b"content-type", b"application/grpc"), (b"te", b"trailers")],
            b"\x00\x00\x00\x00\x00",  # one empty message: HealthCheckRequest()
        )  # fmt: skip
    call[b"message"] = call[b"body"][5:]
    return web[b"body"], call


@needs_curl
def test_https_sni_gives_each_name_its_certificate(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    served = serve("https-sni.toml")
    certs = tmp_path / "certs"
    names = [
        ("api.example.com", "api.example.com"),
        ("example.org", "www.example.org"),
        ("example.com", "localhost"),
    ]
    for stem, name in names:
        url = f"https://{name}:{served.port}/hello"
        resolve = f"{name}:{served.port}:127.0.0.1"
        # Each name verifies only against its own certificate.
        trusted = str(certs / f"{stem}.pem")
        answer = curl("--cacert", trusted, "--resolve", resolve, "--http2", url)
        assert answer.startswith("Hello from txcmux over HTTP/2"), answer
    wrong = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(certs / "example.com.pem"),
         "--resolve", f"api.example.com:{served.port}:127.0.0.1",
         f"https://api.example.com:{served.port}/hello"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0  # api.example.com is not served the default one
    root = (certs / "api.example.com.pem").read_bytes()
    channel = grpc.secure_channel(
        f"127.0.0.1:{served.port}",
        grpc.ssl_channel_credentials(root_certificates=root),
        options=[("grpc.ssl_target_name_override", "api.example.com")],
    )
    assert health(channel) == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def fake_sshd() -> Iterator[int]:
    """A loopback server that greets like sshd and echoes what it reads."""
    with ssh_stand_in(b"SSH-2.0-OpenSSH_9.2 fake\r\n") as port:
        yield port


@needs_curl
def test_ssh_and_https_share_the_port(serve, fake_sshd: int) -> None:  # type: ignore[no-untyped-def]
    served = serve(
        "ssh-and-https.toml",
        {"port=22": f"port={fake_sshd}"},
    )
    answer = curl("-k", "--http2", f"https://127.0.0.1:{served.port}/hello")
    assert answer.startswith("Hello from txcmux over HTTP/2"), answer
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as client:
        client.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        received = b""
        while b"SSH-2.0-OpenSSH_9.2\r\n" not in received.split(b"fake\r\n", 1)[-1]:
            chunk = client.recv(256)
            assert chunk, received
            received += chunk
    assert received == b"SSH-2.0-OpenSSH_9.2 fake\r\nSSH-2.0-OpenSSH_9.2\r\n"


@needs_curl
def test_behind_a_proxy_takes_the_header(serve) -> None:  # type: ignore[no-untyped-def]
    served = serve("behind-proxy.toml")
    url = f"http://127.0.0.1:{served.port}/hello"
    assert curl("--haproxy-protocol", url) == "Hello from txcmux over HTTP/1.1\n"
    refused = subprocess.run(
        ["curl", "-sS", "--max-time", "20", url],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0  # no header on a "required" listener: closed


#: ``Message(text="curl")`` as one gRPC-Web frame, base64: the how-to's curl call.
GRPC_WEB_TEXT_CALL = base64.b64encode(b"\x00\x00\x00\x00\x06\x0a\x04curl").decode()


@needs_curl
def test_browsers_get_grpc_web_and_websockets(serve) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("autobahn")
    from tests.test_grpc_web import frames
    from tests.test_websocket import Socket

    page = (PAGES / "browsers.md").read_text(encoding="utf-8")
    assert f"--data-binary {GRPC_WEB_TEXT_CALL}" in page
    served = serve("browsers.toml")
    greet = f"http://127.0.0.1:{served.port}/txcmux.demo.Demo/Greet"
    # gRPC-Web's text variant, exactly as the page has curl send it.
    answer = curl(
        "-H", "content-type: application/grpc-web-text",
        "-H", "accept: application/grpc-web-text",
        "--data-binary", GRPC_WEB_TEXT_CALL, greet,
    )  # fmt: skip
    messages, trailers = frames(base64.b64decode(answer))
    assert messages == [b"\x0a\x0cHello, curl!"]
    assert trailers[b"grpc-status"] == b"0"
    # A page of the allowed origin gets its preflight answered; another does not.
    allowed = curl(
        "-i", "-X", "OPTIONS", "-H", "origin: https://app.example.com",
        "-H", "access-control-request-method: POST",
        "-H", "access-control-request-headers: content-type,x-grpc-web", greet,
    ).lower()  # fmt: skip
    assert "access-control-allow-origin: https://app.example.com" in allowed
    refused = subprocess.run(
        [
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
            "-H", "origin: https://elsewhere.example", "-H",
            "content-type: application/grpc-web-text", "--data-binary",
            GRPC_WEB_TEXT_CALL, greet,
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.stdout == "403"
    # A new connection that upgrades /ws goes to the ws route; an upgrade
    # after a page view on a kept-alive connection, to the Site's /ws.
    fresh = Socket(served.port)
    assert fresh.upgrade("/ws") == "txcmux-example-route"
    assert fresh.echo("text", b"\x00binary") == ("text", b"\x00binary")
    fresh.close()
    late = Socket(served.port)
    page = late.request(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200"), page
    assert late.upgrade("/ws") == "txcmux-example-site"
    assert late.echo("late", b"!") == ("late", b"!")
    late.close()
