"""Operating ``twistd cmux``: metrics and status, limits, drain, reload, systemd.

Each test runs a real twistd process on 127.0.0.1 with an ``[admin]``
listener, sends it real traffic (curl, raw sockets), and reads what the
admin site says about it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_twistd import (
    Running,
    assert_clean_exit,
    clean_environment,
    curl,
    free_port,
    start_twistd,  # noqa: F401  (the fixture)
)

SITE = '''
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello\\n"


class Slow(Resource):
    """Ten chunks, one every 0.2 s: a download a drain must let finish."""

    isLeaf = True

    def render_GET(self, request):
        def chunk(left):
            if request.finished or request._disconnected:
                return
            if left == 0:
                request.finish()
                return
            request.write(b"x" * 1000)
            reactor.callLater(0.2, chunk, left - 1)

        request.setHeader(b"content-length", b"10000")
        chunk(10)
        return NOT_DONE_YET


root = Resource()
root.putChild(b"hello", Hello())
root.putChild(b"slow", Slow())
'''


def config_text(admin: int, backend: int, extra: str = "", routes: str = "") -> str:
    return f"""
listen = ["tcp:0:interface=127.0.0.1"]
{extra or "drain_timeout = 3"}

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"
{routes}
[[route]]
name = "echo"
match = [{{ type = "prefix", value = "ECHO" }}]
proxy = "tcp:host=127.0.0.1:port={backend}"

[[route]]
name = "web"
match = ["http1", "http2"]
web = "ops_site:root"
"""


class Echo:
    """A TCP echo server on 127.0.0.1 in a thread, for the relay route."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(client,), daemon=True).start()

    def _echo(self, client: socket.socket) -> None:
        with client:
            while data := client.recv(65536):
                client.sendall(data)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.close()


@pytest.fixture
def ops(
    tmp_path: Path,
    start_twistd: Callable[..., Running],  # noqa: F811 (the imported fixture)
    echo: Echo,
) -> Callable[..., tuple[Running, int, Path]]:
    """Start twistd on a config with an admin listener; (running, admin, file)."""

    def start(
        extra: str = "", routes: str = "", env: dict[str, str] | None = None
    ) -> tuple[Running, int, Path]:
        (tmp_path / "ops_site.py").write_text(SITE, encoding="utf-8")
        admin = free_port()
        path = tmp_path / "cmux.toml"
        path.write_text(config_text(admin, echo.port, extra, routes), encoding="utf-8")
        return start_twistd("--config", str(path), env=env), admin, path

    return start


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of an admin page."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers["content-type"], r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read().decode()


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's parser."""
    status, kind, text = get(port, "/metrics")
    assert status == 200 and kind.startswith("text/plain"), (status, kind)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0)
    ) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        return answer


LISTENER = "tcp:0:interface=127.0.0.1"


def assert_cut(sock: socket.socket) -> None:
    """The server aborted the connection (a reset, or an end with no data)."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(100) == b""


def test_metrics_and_status_say_what_happened(ops: Callable[..., Any]) -> None:
    running, admin, _ = ops()
    assert curl(running.port, "/hello") == "hello\n"
    assert curl(running.port, "/hello", "--http2-prior-knowledge") == "hello\n"
    assert exchange(running.port, b"ECHO over the relay") == b"ECHO over the relay"
    assert exchange(running.port, b"\x00<script>hostile</script>") == b""
    key = (("listener", LISTENER),)

    def closed() -> bool:
        return metrics(admin)[("txcmux_connections_open", key)] == 0

    wait_for(closed, "every connection to be closed")
    found = metrics(admin)
    assert found[("txcmux_connections_accepted_total", key)] == 4
    web = (("listener", LISTENER), ("route", "web"))
    assert found[("txcmux_route_connections_total", web)] == 2
    echo_key = (("listener", LISTENER), ("route", "echo"))
    assert found[("txcmux_route_connections_total", echo_key)] == 1
    no_match = (("listener", LISTENER), ("reason", "no_match"))
    assert found[("txcmux_rejections_total", no_match)] == 1
    assert found[("txcmux_decision_seconds_count", key)] == 3
    assert (
        found[("txcmux_relay_bytes_total", (("direction", "up"), ("route", "echo")))]
        == 19
    )
    assert found[("txcmux_backend_connect_seconds_count", (("route", "echo"),))] == 1
    assert found[("txcmux_route_connections_open", (("route", "web"),))] == 0
    assert found[("txcmux_config_generation", ())] == 1
    assert ("process_cpu_seconds_total", ()) in found

    status, kind, body = get(admin, "/status.json")
    assert status == 200 and kind == "application/json"
    snapshot = json.loads(body)
    assert snapshot["state"] == "serving"
    assert [r["name"] for r in snapshot["routes"]] == ["echo", "web"]
    assert snapshot["routes"][1]["accepted"] == 2
    [rejection] = snapshot["rejections"]["recent"]
    assert rejection["reason"] == "no_match"
    assert rejection["first_bytes"].startswith("\\x00<script>")
    assert snapshot["backends"][0]["state"] == "up"

    status, kind, page = get(admin, "/")
    assert status == 200 and kind.startswith("text/html")
    assert "Routes, in priority order" in page
    assert "&lt;script&gt;hostile" in page and "<script>" not in page
    assert get(admin, "/healthz")[:3:2] == (200, "ok\n")
    assert get(admin, "/readyz")[:3:2] == (200, "serving\n")
    assert get(admin, "/nothing")[0] == 404
    # Nothing of the admin site on the public port.
    assert curl(running.port, "/metrics", "--write-out", "%{http_code}").endswith("404")
    output = running.stop()
    assert_clean_exit(running, output)


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_the_status_page_reads_in_a_browser(
    ops: Callable[..., Any], tmp_path: Path
) -> None:
    running, admin, _ = ops()
    curl(running.port, "/hello")
    exchange(running.port, b"\x16\x03\x01 not really TLS")
    assert CHROMIUM is not None
    url = f"http://127.0.0.1:{admin}/"
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run(
        [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=60
    )
    assert "Recent rejections, newest first" in dom.stdout, dom.stderr[-2000:]
    assert "ops_site:root" in dom.stdout
    shot = tmp_path / "status.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,1000", url],
        capture_output=True,
        timeout=60,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("TXCMUX_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert_clean_exit(running, running.stop())


def test_a_flood_from_one_address_is_refused_while_others_are_served(
    ops: Callable[..., Any],
) -> None:
    running, admin, _ = ops(extra="max_connections_per_ip = 5\ndrain_timeout = 3")
    flood = []
    for _ in range(20):
        flood.append(socket.create_connection(("127.0.0.1", running.port), timeout=10))
    try:
        assert curl(running.port, "/hello", "--interface", "127.0.0.2") == "hello\n"
        refused = (("limit", "max_connections_per_ip"), ("listener", LISTENER))
        wait_for(
            lambda: metrics(admin).get(("txcmux_limit_refusals_total", refused)) == 15,
            "15 refusals",
        )
        open_key = ("txcmux_connections_open", (("listener", LISTENER),))
        assert metrics(admin)[open_key] == 5
    finally:
        for sock in flood:
            sock.close()
    output = running.stop()
    assert (
        "refusing connections: the listener holds its max_connections_per_ip (5)"
        in output
    )
    assert_clean_exit(running, output)


def background_curl(port: int, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            *options,
            f"http://127.0.0.1:{port}/slow",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_lets_downloads_finish_and_cuts_relays_at_the_deadline(
    ops: Callable[..., Any],
) -> None:
    running, admin, _ = ops()
    downloads = [
        background_curl(running.port),
        background_curl(running.port, "--http2-prior-knowledge"),
    ]
    relay = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    relay.sendall(b"ECHO stay")
    assert relay.recv(100) == b"ECHO stay"
    open_key = ("txcmux_connections_open", (("listener", LISTENER),))
    wait_for(lambda: metrics(admin)[open_key] == 3, "three open connections")
    started = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    wait_for(lambda: get(admin, "/readyz")[0] == 503, "/readyz to say draining")
    assert get(admin, "/readyz")[2] == "draining\n"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=2).close()
    for download in downloads:
        body, errors = download.communicate(timeout=30)
        assert download.returncode == 0, errors
        assert body == "x" * 10000
    running.process.wait(timeout=30)
    elapsed = time.monotonic() - started
    assert_cut(relay)  # at drain_timeout
    relay.close()
    output = running.log.read_text(encoding="utf-8")
    assert "drain: cut 1 connections still open" in output
    assert 2.5 < elapsed < 15, elapsed
    assert_clean_exit(running, output)


def test_a_second_sigterm_cuts_the_drain_short(ops: Callable[..., Any]) -> None:
    running, admin, _ = ops(extra="drain_timeout = 60")
    relay = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    relay.sendall(b"ECHO stay")
    assert relay.recv(100) == b"ECHO stay"
    running.process.send_signal(signal.SIGTERM)
    wait_for(lambda: get(admin, "/readyz")[0] == 503, "the drain to start")
    running.process.send_signal(signal.SIGTERM)
    running.process.wait(timeout=20)
    assert_cut(relay)
    relay.close()
    output = running.log.read_text(encoding="utf-8")
    assert "drain: cut 1 connections still open" in output
    assert_clean_exit(running, output)


def test_sighup_reloads_routes_and_refuses_a_broken_file(
    ops: Callable[..., Any],
) -> None:
    running, admin, path = ops()
    keep_alive = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    keep_alive.sendall(b"ECHO before")
    assert keep_alive.recv(100) == b"ECHO before"
    assert exchange(running.port, b"PING") == b""  # no such route yet
    backend = int(path.read_text().split("port=")[1].split('"')[0])
    ping = f"""
[[route]]
name = "ping"
match = [{{ type = "prefix", value = "PING" }}]
proxy = "tcp:host=127.0.0.1:port={backend}"
"""
    path.write_text(path.read_text().replace("[[route]]", ping + "\n[[route]]", 1))
    running.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: json.loads(get(admin, "/status.json")[2])["config"]["generation"] == 2,
        "the reload",
    )
    assert exchange(running.port, b"PING new") == b"PING new"
    keep_alive.sendall(b"ECHO after")  # made before the reload: still relayed
    assert keep_alive.recv(100) == b"ECHO after"
    path.write_text(path.read_text() + "\nsniff_timout = 2\n")
    running.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: (
            json.loads(get(admin, "/status.json")[2])["config"]["last_reload_error"]
            is not None
        ),
        "the refused reload",
    )
    snapshot = json.loads(get(admin, "/status.json")[2])
    assert 'unknown key "sniff_timout"' in snapshot["config"]["last_reload_error"]
    assert snapshot["config"]["generation"] == 2
    assert exchange(running.port, b"PING still") == b"PING still"
    assert metrics(admin)[("txcmux_config_reload_failed", ())] == 1
    keep_alive.close()
    output = running.stop()
    assert "reload refused, the running config stays" in output
    assert output.count("Traceback") == 0
    assert_clean_exit(running, output)


def test_systemd_notify_ready_reloading_stopping(
    ops: Callable[..., Any], tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(20)

    env = clean_environment(NOTIFY_SOCKET=str(notify_path))
    running, _, _ = ops(env=env)
    try:
        assert notify.recv(4096).startswith(b"READY=1\nSTATUS=serving")
        running.process.send_signal(signal.SIGHUP)
        assert notify.recv(4096) == b"RELOADING=1"
        assert notify.recv(4096).startswith(b"READY=1")
        running.process.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
    finally:
        notify.close()
    running.process.wait(timeout=30)
    assert_clean_exit(running, running.log.read_text(encoding="utf-8"))


def twistd_argv(tmp_path: Path, echo: Echo, *twistd_options: str) -> list[str]:
    """Write the site and a config; the command running twistd on them in the
    foreground, writing its port to ``tmp_path / "ports"``."""
    from tests.test_twistd import twistd_command

    (tmp_path / "ops_site.py").write_text(SITE, encoding="utf-8")
    path = tmp_path / "cmux.toml"
    path.write_text(config_text(free_port(), echo.port), encoding="utf-8")
    return [
        *twistd_command(),
        "-n",
        "--pidfile=",
        *twistd_options,
        "cmux",
        "--config",
        str(path),
        "--port-file",
        str(tmp_path / "ports"),
    ]


def test_json_lines_for_log_shippers(tmp_path: Path, echo: Echo) -> None:
    from twisted.logger import eventFromJSON, formatEvent

    port_file = tmp_path / "ports"
    process = subprocess.Popen(
        twistd_argv(tmp_path, echo, "--logger", "txcmux.jsonlog.observer"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    try:
        wait_for(port_file.exists, "twistd to listen", timeout=30)
        port = int(port_file.read_text().split()[0])
        assert exchange(port, b"\x00junk") == b""
    finally:
        process.send_signal(signal.SIGTERM)
        out, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    events = [eventFromJSON(line) for line in out.splitlines() if line.strip()]
    [closing] = [e for e in events if e.get("detail") == "no route matched"]
    assert closing["log_namespace"] == "txcmux"
    assert closing["size"] == 5
    assert formatEvent(closing).startswith("txcmux: closing connection from 127.0.0.1:")


def test_silent_flooders_make_room_for_a_client_that_speaks(
    ops: Callable[..., Any],
) -> None:
    running, admin, _ = ops(extra="max_sniffing = 10\ndrain_timeout = 3")
    flood = [
        socket.create_connection(("127.0.0.1", running.port), timeout=10)
        for _ in range(30)
    ]
    try:
        shed = (("limit", "max_sniffing"), ("listener", LISTENER))
        wait_for(
            lambda: metrics(admin).get(("txcmux_limit_refusals_total", shed)) == 20,
            "20 silent connections closed to make room",
        )
        # Still ten silent ones open, and a client that speaks is served.
        assert curl(running.port, "/hello") == "hello\n"
        sniffing = ("txcmux_connections_sniffing", (("listener", LISTENER),))
        assert metrics(admin)[sniffing] == 9  # curl's made room for itself
    finally:
        for sock in flood:
            sock.close()
    assert_clean_exit(running, running.stop())


def served_certificate(port: int) -> str:
    """The subject line of the certificate a TLS client gets on ``port``."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    [subject] = [
        line for line in result.stdout.splitlines() if line.startswith("subject=")
    ]
    return subject


def test_sighup_reads_renewed_certificates(
    ops: Callable[..., Any], tmp_path: Path
) -> None:
    from tests.tls_support import pki

    files = pki()
    shutil.copy(files.server_certificate, tmp_path / "live.pem")
    shutil.copy(files.server_key, tmp_path / "live.key")
    tls = """
[[route]]
name = "https"
match = ["tls"]
tls = { certificate = "live.pem", key = "live.key", routes = ["web"] }
"""
    running, admin, _ = ops(routes=tls)
    assert "CN = localhost" in served_certificate(running.port)
    shutil.copy(files.a_certificate, tmp_path / "live.pem")
    shutil.copy(files.a_key, tmp_path / "live.key")
    assert "CN = localhost" in served_certificate(running.port)  # not yet
    running.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: json.loads(get(admin, "/status.json")[2])["config"]["generation"] == 2,
        "the reload",
    )
    assert "CN = a.example" in served_certificate(running.port)
    # The detector behind the tls route is its own listener in the metrics.
    inner = ("txcmux_connections_accepted_total", (("listener", "tls:https"),))
    assert metrics(admin)[inner] == 3
    assert_clean_exit(running, running.stop())


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_out_of_file_descriptors_it_neither_spins_nor_dies(
    tmp_path: Path, echo: Echo
) -> None:
    import resource

    argv = twistd_argv(tmp_path, echo)
    port_file = tmp_path / "ports"
    log = (tmp_path / "twistd.log").open("w")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    process = subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_environment(),
        preexec_fn=low_limit,
    )
    log.close()
    flood: list[socket.socket] = []
    try:
        wait_for(port_file.exists, "twistd to listen", timeout=30)
        port = int(port_file.read_text().split()[0])
        for _ in range(100):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        wait_for(
            lambda: (
                "not accepting new connections until"
                in (tmp_path / "twistd.log").read_text()
            ),
            "twistd to pause accepting, out of file descriptors",
        )
        before = cpu_seconds(process.pid)
        time.sleep(2)  # a window to measure CPU in: a busy loop would fill it
        spent = cpu_seconds(process.pid) - before
        assert spent < 0.5, f"{spent:.2f} s of CPU in 2 s while out of descriptors"
        assert process.poll() is None
        # Paused, a new client waits in the listen backlog: not accepted and
        # closed, but served once descriptors are free again.
        waiting = socket.create_connection(("127.0.0.1", port), timeout=10)
        waiting.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for sock in flood:
            sock.close()
        flood = []
        wait_for(
            lambda: (
                "file descriptors free again: accepting"
                in (tmp_path / "twistd.log").read_text()
            ),
            "twistd to accept again",
        )
        waiting.settimeout(10)
        answer = b""
        while chunk := waiting.recv(65536):
            answer += chunk
        waiting.close()
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
        assert curl(port, "/hello") == "hello\n"
    finally:
        for sock in flood:
            sock.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    output = (tmp_path / "twistd.log").read_text()
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert (
        "max_connections (10000) allows more connections than this process has"
        " file descriptors (64, ulimit -n" in output
    )
