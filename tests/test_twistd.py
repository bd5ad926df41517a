"""``twistd cmux`` end to end: real twistd processes, curl and a grpcio client.

Each test starts twistd in the foreground on ``tcp:0`` and learns the port
from ``--port-file`` (written once every listener listens), talks to it with
real clients, then stops it with SIGTERM and checks it exited 0 with no
traceback in its output.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.tls_support import pki
from txcmux.demo import Message

START_TIMEOUT = 30.0


def twistd_command() -> list[str]:
    """twistd from the running environment."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without inherited sockets, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    return {**env, **extra}


def run_twistd(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run twistd to completion (for --help, --check and failing starts)."""
    return subprocess.run(
        [*twistd_command(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_environment(),
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed start printed, checked to be all it printed."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("twistd cmux: error: "), lines
    return lines[0]


@dataclass
class Running:
    """A twistd process serving on ``port``."""

    process: subprocess.Popen[str]
    port: int
    log: Path

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it printed."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return self.log.read_text(encoding="utf-8")


@pytest.fixture
def start_twistd(tmp_path: Path) -> Iterator[object]:
    """Start ``twistd -n cmux ARGS`` and wait (bounded) until it listens."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Running:
        port_file = tmp_path / f"ports-{len(started)}"
        log = tmp_path / f"twistd-{len(started)}.log"
        output = log.open("w", encoding="utf-8")
        process = subprocess.Popen(
            [
                *twistd_command(),
                "-n",
                "--pidfile=",
                "cmux",
                *args,
                "--port-file",
                str(port_file),
            ],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or clean_environment(),
        )
        output.close()
        started.append(process)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            if process.poll() is not None:
                pytest.fail(f"twistd exited {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"twistd did not listen in time:\n{log.read_text()}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        return Running(process, port, log)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def curl(port: int, path: str, *options: str) -> str:
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            *options,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_grpc(port: int) -> None:
    """Health says SERVING; the demo service echoes and greets."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        for method, sent, expected in (
            ("Echo", "over one port", "over one port"),
            ("Greet", "cmux", "Hello, cmux!"),
        ):
            call = channel.unary_unary(
                f"/txcmux.demo.Demo/{method}",
                request_serializer=Message.SerializeToString,
                response_deserializer=Message.FromString,
            )
            assert call(Message(text=sent), timeout=10).text == expected


def assert_clean_exit(running: Running, output: str) -> None:
    assert running.process.returncode == 0, output
    assert "Traceback" not in output, output


# -- the plugin and --check --------------------------------------------------


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    result = run_twistd(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cmux" in result.stdout
    result = run_twistd(["cmux", "--help"], tmp_path)
    assert "--config" in result.stdout and "--check" in result.stdout


GOOD = """\
listen = ["tcp:0"]
[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]
[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
[[route]]
name = "ssh"
match = ["ssh"]
proxy = "tcp:host=127.0.0.1:port=22"
"""


def test_check_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = run_twistd(["cmux", "--check", "--config", str(path)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK, 1 listener, 3 routes"
    assert not list(tmp_path.glob("twistd.*"))  # nothing ran


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('match = ["ssh"]', 'match = ["shh"]'), 'did you mean "ssh"?'),
        (('listen = ["tcp:0"]', 'listen = ["tcp:0"'), "not valid TOML"),
        (("proxy =", "proxi ="), 'did you mean "proxy"?'),
    ],
)
def test_check_bad_file(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*change))
    result = run_twistd(["cmux", "--check", "--config", str(path)], tmp_path)
    assert result.returncode == 1  # as docs/configuration.md says
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"twistd cmux: error: {path}: ")
    assert expected in lines[0]


def test_bad_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        GOOD.replace('listen = ["tcp:0"]', 'listen = ["tcp:0"]\nsniff_timeout = "5"')
    )
    result = run_twistd(["-n", "--pidfile=", "cmux", "--config", str(path)], tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert (
        f'{path}: key "sniff_timeout": found the string "5", expected a positive'
        in result.stderr
    )


def test_address_in_use_stops_start_up(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        result = run_twistd(
            ["-n", "--pidfile=", "cmux", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            tmp_path,
        )
    finally:
        taken.close()
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in output


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def kill_daemon(pid_file: Path) -> None:
    """Stop a daemon that should not have started (so a failure leaves none)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("daemon", [False, True])
def test_address_in_use_leaves_no_pid_file(
    tmp_path: Path, taken_port: int, daemon: bool
) -> None:
    # twistd's default pid file (twistd.pid here): the listen is tried before
    # twistd writes it or forks, so neither mode leaves it, nor hangs.
    listen = f"tcp:{taken_port}:interface=127.0.0.1"
    mode = ["--logfile=twistd.log"] if daemon else ["-n"]
    try:
        result = run_twistd([*mode, "cmux", "--listen", listen], tmp_path)
    finally:
        kill_daemon(tmp_path / "twistd.pid")
    line = one_error_line(result)
    assert line.startswith(f"twistd cmux: error: cannot listen on {listen}: ")
    assert "Address already in use" in line
    assert not (tmp_path / "twistd.pid").exists()


def test_a_daemon_serves_what_it_listened_on_before_forking(tmp_path: Path) -> None:
    port_file, pid_file = tmp_path / "ports", tmp_path / "twistd.pid"
    args = ["--logfile=twistd.log", "cmux", "--listen", "tcp:0:interface=127.0.0.1"]
    try:
        result = run_twistd([*args, "--port-file", str(port_file)], tmp_path)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        assert "HTTP/2 (h2c)" in curl(port, "/hello", "--http2-prior-knowledge")
        check_grpc(port)
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_file.exists()
    finally:
        kill_daemon(pid_file)
    log = (tmp_path / "twistd.log").read_text()
    assert "txcmux: stopped" in log and "Traceback" not in log


# -- systemd socket activation -----------------------------------------------

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def test_a_systemd_listener_without_a_socket_says_so(tmp_path: Path) -> None:
    expected = (
        'twistd cmux: error: the command line: key "--listen[0]":'
        ' "systemd:domain=INET:index=0": no socket was passed for index 0:'
        " this process was passed 0 sockets."
    )
    listen = ["--listen", "systemd:domain=INET:index=0"]
    line = one_error_line(run_twistd(["-n", "--pidfile=", "cmux", *listen], tmp_path))
    assert line.startswith(expected), line
    assert "LISTEN_FDS" in line
    config = tmp_path / "systemd.toml"
    config.write_text(GOOD.replace('"tcp:0"', '"systemd:domain=INET:index=0"'))
    line = one_error_line(
        run_twistd(["cmux", "--check", "--config", str(config)], tmp_path)
    )
    assert line.startswith(
        f'twistd cmux: error: {config}: key "listen[0]": "systemd:domain=INET:index=0":'
        " no socket was passed for index 0: this process was passed 0 sockets."
    ), line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def socket_activated(
    tmp_path: Path, fdname: str | None, *args: str
) -> tuple[subprocess.Popen[str], int]:
    """twistd cmux under systemd-socket-activate, started by a first client."""
    port = free_port()
    names = [f"--fdname={fdname}"] if fdname else []
    assert SOCKET_ACTIVATE is not None
    twistd = [*twistd_command(), "-n", "--pidfile=", "cmux", *args]
    process = subprocess.Popen(
        [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", *names, *twistd],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    assert process.stderr is not None
    assert "Listening on" in process.stderr.readline()
    return process, port


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="needs systemd-socket-activate")
def test_under_systemd_socket_activate(tmp_path: Path) -> None:
    # Without --fdname there is no LISTEN_FDNAMES, and Twisted takes no socket.
    listen = ["--listen", "systemd:domain=INET:index=0"]
    process, port = socket_activated(tmp_path, None, *listen)
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 1, errors
    assert "Traceback" not in errors
    assert (
        "no socket was passed for index 0: this process was passed 0 sockets." in errors
    )
    # With it, the inherited socket serves, by name as by index.
    port_file = tmp_path / "ports"
    process, port = socket_activated(
        tmp_path,
        "web",
        "--listen",
        "systemd:domain=INET:name=web",
        "--port-file",
        str(port_file),
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(
                b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.endswith(b"Hello from txcmux over HTTP/1.1\n"), answer
        assert port_file.read_text().split() == [str(port)]
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors


# -- warnings under --check --------------------------------------------------


def shadowing_plugin(tmp_path: Path) -> dict[str, str]:
    """An environment where a distribution claims the built-in name ssh."""
    site = tmp_path / "site"
    info = site / "shadow_ssh-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: shadow-ssh\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[txcmux.matchers]\nssh = shadow_ssh:ssh\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return clean_environment(PYTHONPATH=path)


SHADOW_WARNING = (
    "matcher plugin entry point ssh = shadow_ssh:ssh (shadow-ssh) is ignored:"
    " 'ssh' is a built-in matcher name, and built-ins win"
)


def test_check_prints_what_running_logs(tmp_path: Path, start_twistd: object) -> None:
    env = shadowing_plugin(tmp_path)
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = run_twistd(["cmux", "--check", "--config", str(path)], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"twistd cmux: warning: {SHADOW_WARNING}"]
    assert result.stdout.strip() == f"{path}: OK, 1 listener, 3 routes"
    running = start_twistd("--config", str(path), env=env)  # type: ignore[operator]
    output = running.stop()
    assert_clean_exit(running, output)
    assert f"txcmux: {SHADOW_WARNING}" in output


# -- running -----------------------------------------------------------------


SERVED = """\
listen = ["tcp:0:interface=127.0.0.1"]
routes = ["grpc", "files", "web"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "cmux_test_site:site"

[[route]]
name = "files"
match = [{ type = "http1_header", name = "host", value = "files.test" }]
static = "www"

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]
"""

SITE_MODULE = """\
from twisted.web.server import Site
import txcmux.demo

def site():
    return Site(txcmux.demo.resource(), logPath={log!r})
"""


def test_config_end_to_end(tmp_path: Path, start_twistd: object) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "file.txt").write_text("a static file\n")
    access_log = tmp_path / "access.log"
    (tmp_path / "cmux_test_site.py").write_text(SITE_MODULE.format(log=str(access_log)))
    config = tmp_path / "cmux.toml"
    config.write_text(SERVED)
    running = start_twistd("--config", str(config))  # type: ignore[operator]
    port = running.port

    assert curl(port, "/hello", "--http1.1") == "Hello from txcmux over HTTP/1.1\n"
    assert curl(port, "/hello", "--http2-prior-knowledge") == (
        "Hello from txcmux over HTTP/2 (h2c)\n"
    )
    assert curl(port, "/file.txt", "-H", "Host: files.test") == "a static file\n"
    check_grpc(port)

    output = running.stop()
    assert_clean_exit(running, output)
    start_up = next(
        line for line in output.splitlines() if "routes in priority" in line
    )
    assert f"(127.0.0.1:{port})" in start_up
    assert start_up.index("1. grpc [grpc]") < start_up.index("2. files")
    assert start_up.index("2. files") < start_up.index("3. web [http1 | http2]")
    # The Site was stopped: its access log was flushed and closed.
    assert "Stopping factory <twisted.web.server.Site" in output
    assert access_log.read_text().count('"GET /hello HTTP/') == 2
    assert "txcmux: stopped" in output


def test_builtin_demo(start_twistd: object) -> None:
    running = start_twistd("--listen", "tcp:0:interface=127.0.0.1")  # type: ignore[operator]
    port = running.port
    page = curl(port, "/")
    assert "txcmux demo on 127.0.0.1:" in page
    assert "--http2-prior-knowledge" in page
    assert "HTTP/2 (h2c)" in curl(port, "/hello", "--http2-prior-knowledge")
    check_grpc(port)
    output = running.stop()
    assert_clean_exit(running, output)
    assert "the built-in demo: listening on tcp:0:interface=127.0.0.1" in output


def test_the_demo_pages_grpc_client_needs_no_txcmux(start_twistd: object) -> None:
    running = start_twistd("--listen", "tcp:0:interface=127.0.0.1")  # type: ignore[operator]
    page = curl(running.port, "/")
    found = re.search(r"<pre>python - &lt;&lt;'EOF'\n(.*?)EOF</pre>", page, re.S)
    assert found, page
    client = html.unescape(found.group(1))
    assert f'grpc.insecure_channel("127.0.0.1:{running.port}")' in client
    # Run as pasted into an environment with grpcio but no txcmux.
    blocked = "import sys; sys.modules['txcmux'] = None; exec(sys.stdin.read())"
    result = subprocess.run(
        [sys.executable, "-I", "-c", blocked],
        input=client,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["status: SERVING", "", "Hello, world!"]
    assert_clean_exit(running, running.stop())


def test_the_demo_listens_on_loopback_unless_told(tmp_path: Path) -> None:
    from tests.logs import captured_logs
    from txcmux._config._twistd import Options
    from txcmux.demo import DEMO_LISTEN, LOOPBACK_NOTE

    assert DEMO_LISTEN == "tcp:8080:interface=127.0.0.1"
    for args, listen, noted in (
        ([], (DEMO_LISTEN,), True),
        (["--listen", "tcp:8080"], ("tcp:8080",), False),
    ):
        options = Options()
        with captured_logs() as lines:
            options.parseOptions(args)
        assert options.service is not None
        assert options.service.config.listen == listen
        assert any(LOOPBACK_NOTE in line for line in lines) is noted, lines
    assert "--listen tcp:8080" in LOOPBACK_NOTE


def test_sigterm_while_a_client_is_connected(start_twistd: object) -> None:
    running = start_twistd("--listen", "tcp:0:interface=127.0.0.1")  # type: ignore[operator]
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as client:
        client.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in client.recv(4096)
        output = running.stop()
    assert_clean_exit(running, output)


def test_port_file_lists_every_listener(tmp_path: Path, start_twistd: object) -> None:
    socket_path = tmp_path / "cmux.sock"
    running = start_twistd(  # type: ignore[operator]
        "--listen", "tcp:0:interface=127.0.0.1", "--listen", f"unix:{socket_path}"
    )
    lines = sorted(tmp_path.glob("ports-*"))[-1].read_text().splitlines()
    assert lines == [str(running.port), str(socket_path)]
    output = running.stop()
    assert_clean_exit(running, output)


TLS_CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1"]
routes = ["https", "web"]

[[route]]
name = "https"
match = ["tls"]
[route.tls]
certificate = "{certificate}"
key = "{key}"
routes = ["grpc", "web"]

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
"""


def test_tls_route_end_to_end(tmp_path: Path, start_twistd: object) -> None:
    files = pki()
    config = tmp_path / "tls.toml"
    config.write_text(
        TLS_CONFIG.format(certificate=files.server_certificate, key=files.server_key)
    )
    running = start_twistd("--config", str(config))  # type: ignore[operator]
    port = running.port
    tls = ["--cacert", str(files.ca), "--resolve", f"localhost:{port}:127.0.0.1"]
    url = f"https://localhost:{port}/hello"
    for option, expected in (
        ("--http2", "HTTP/2 (h2)"),
        ("--http1.1", "HTTP/1.1 over TLS"),
    ):
        result = subprocess.run(
            ["curl", "--silent", "--show-error", "--max-time", "10", *tls, option, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"Hello from txcmux over {expected}\n"
    # Plain HTTP on the same port still reaches the web route directly.
    assert curl(port, "/hello") == "Hello from txcmux over HTTP/1.1\n"
    credentials = grpc.ssl_channel_credentials(root_certificates=files.ca.read_bytes())
    with grpc.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    output = running.stop()
    assert_clean_exit(running, output)
    assert "1. https [tls] -> TLS (server.pem) then grpc | web" in output


BEHIND_A_PROXY = """\
listen = ["haproxy:tcp:0:interface=127.0.0.1"]
routes = ["web"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "cmux_test_site:site"
"""


def test_proxy_protocol_listener_gives_routes_the_clients_address(
    tmp_path: Path, start_twistd: object
) -> None:
    """Behind a load balancer that speaks PROXY (v1 here, as HAProxy sends).

    Twisted's ``haproxy:`` endpoint prefix reads the header; the detector
    then routes on the bytes after it and the Site logs the client the
    header named, over HTTP/1.1 and h2c alike.
    """
    access_log = tmp_path / "access.log"
    (tmp_path / "cmux_test_site.py").write_text(SITE_MODULE.format(log=str(access_log)))
    config = tmp_path / "cmux.toml"
    config.write_text(BEHIND_A_PROXY)
    running = start_twistd("--config", str(config))  # type: ignore[operator]
    header = b"PROXY TCP4 192.0.2.7 192.0.2.1 51000 443\r\n"
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as client:
        client.sendall(header + request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"Hello from txcmux over HTTP/1.1\n")
    # curl sends PROXY v1 with its own address; h2c is routed after it too.
    assert curl(
        running.port, "/hello", "--haproxy-protocol", "--http2-prior-knowledge"
    ) == ("Hello from txcmux over HTTP/2 (h2c)\n")
    output = running.stop()
    assert_clean_exit(running, output)
    logged = access_log.read_text()
    assert logged.startswith('"192.0.2.7" - - '), logged
    assert '"GET /hello HTTP/2"' in logged


PROXY_LISTENERS = """\
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1"]
listen = [
    "tcp:0:interface=127.0.0.1",
    {{ endpoint = "tcp:0:interface=127.0.0.1", proxy_protocol = "off" }},
]

[[route]]
name = "ssh"
match = ["ssh"]
proxy = "tcp:host=127.0.0.1:port={backend}"
send_proxy = "v2"

[[route]]
name = "web"
match = ["http1", "http2"]
web = "cmux_test_site:site"
"""


def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send ``data`` from ``source`` to the port; all that comes back."""
    with socket.socket() as client:
        client.settimeout(10)
        client.bind((source, 0))
        client.connect(("127.0.0.1", port))
        client.sendall(data)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def test_proxy_protocol_keys_end_to_end(tmp_path: Path, start_twistd: object) -> None:
    """``proxy_protocol`` at the top level, off for one listener, and
    ``send_proxy``: the Site logs the client of the header, an untrusted
    peer's header and a missing header are refused, the relayed backend is
    told the client in a v2 header.
    """
    from txcmux.proxy import ProxyHeader, parse

    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(10)
    access_log = tmp_path / "access.log"
    (tmp_path / "cmux_test_site.py").write_text(SITE_MODULE.format(log=str(access_log)))
    config = tmp_path / "cmux.toml"
    config.write_text(PROXY_LISTENERS.format(backend=backend.getsockname()[1]))
    running = start_twistd("--config", str(config))  # type: ignore[operator]
    behind, direct = map(int, (tmp_path / "ports-0").read_text().split())
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    header = b"PROXY TCP4 192.0.2.7 192.0.2.1 51000 443\r\n"

    assert exchange(behind, header + request).startswith(b"HTTP/1.1 200 ")
    assert exchange(behind, header + request, source="127.0.0.3") == b""
    assert exchange(behind, request) == b""
    assert exchange(direct, request).startswith(b"HTTP/1.1 200 ")

    with socket.socket() as client:
        client.settimeout(10)
        client.connect(("127.0.0.1", behind))
        client.sendall(b"PROXY TCP4 192.0.2.9 192.0.2.1 52000 22\r\nSSH-2.0-test\r\n")
        relayed, _ = backend.accept()
        with relayed:
            relayed.settimeout(10)
            received = b""
            while b"SSH-2.0-test\r\n" not in received:
                chunk = relayed.recv(65536)
                assert chunk, received
                received += chunk
    backend.close()
    told = parse(received)
    assert isinstance(told, ProxyHeader), told
    assert told.version == 2
    assert (told.source.host, told.source.port) == ("192.0.2.9", 52000)  # type: ignore[union-attr]
    assert received[told.length :] == b"SSH-2.0-test\r\n"

    output = running.stop()
    assert_clean_exit(running, output)
    assert "(PROXY required from 127.0.0.1)" in output
    assert "ssh [ssh] -> proxy to tcp:host=127.0.0.1" in output
    assert "with PROXY v2" in output
    # The relay's close line names the id the backend was sent.
    assert f"; PROXY id {told.unique_id.decode()}" in output  # type: ignore[union-attr]
    refused = [line for line in output.splitlines() if "127.0.0.3" in line]
    assert refused and "not in trusted_proxies" in refused[0], output
    assert "no PROXY header, which this listener requires" in output
    logged = access_log.read_text().splitlines()
    assert [line.split()[0] for line in logged] == ['"192.0.2.7"', '"127.0.0.1"']
