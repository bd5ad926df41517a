"""Every step of docs/tutorial.md runs as written and serves what the page says.

Each step is a file under examples/tutorial/, started here as a real process
on 127.0.0.1 port 0 (the Python steps print the port they got; the twistd
step writes it to ``--port-file``) and asked with real clients: curl over
HTTP/1.1, h2c (``--http2-prior-knowledge``) and HTTPS with ``--http2``, and
the tutorial's own grpcio client, plaintext and over TLS.  The certificate
is made with the page's own openssl command (examples/tutorial/
make-certificate.sh), in a temporary directory.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_twistd import twistd_command

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "examples" / "tutorial"
PAGE = ROOT / "docs" / "tutorial.md"
START_TIMEOUT = 30.0
CLIENT_TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None,
    reason="needs curl and openssl",
)


def environment() -> dict[str, str]:
    """This environment without inherited sockets (systemd's LISTEN_*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}


def run(*command: str, cwd: Path | None = None) -> str:
    """Run a client to completion (bounded) and return what it printed."""
    done = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env=environment(),
        check=False,
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def curl(*arguments: str) -> str:
    """What curl printed for a request (failing on HTTP errors)."""
    return run("curl", "-sS", "--fail", "--max-time", "20", *arguments)


def grpc_call(port: int, *tls: str) -> str:
    """The tutorial's gRPC client's answer, plaintext or with ``--tls FILE``."""
    client = TUTORIAL / "client.py"
    return run(sys.executable, str(client), f"127.0.0.1:{port}", *tls).strip()


class Step:
    """One running step: a process and the port it listens on."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"

    def stop(self) -> str:
        """SIGTERM, wait (bounded), and return what it wrote to stderr."""
        self.process.send_signal(signal.SIGTERM)
        _, errors = self.process.communicate(timeout=30)
        return errors


@pytest.fixture
def start() -> Iterator[object]:
    """Start ``python examples/tutorial/STEP ARGS`` and read its port line."""
    started: list[subprocess.Popen[str]] = []

    def start_step(script: str, *arguments: str) -> Step:
        process = subprocess.Popen(
            [sys.executable, str(TUTORIAL / script), "0", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        started.append(process)
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=START_TIMEOUT):
                process.kill()
                pytest.fail(f"{script} printed no port in {START_TIMEOUT} s")
        line = process.stdout.readline()
        found = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        if found is None:
            process.kill()
            pytest.fail(f"{script} said {line!r}: {process.communicate()[1]}")
        return Step(process, int(found.group(1)))

    yield start_step
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """server.pem and server.key in tmp_path, made by the tutorial's command."""
    run("sh", str(TUTORIAL / "make-certificate.sh"), cwd=tmp_path)
    assert (tmp_path / "server.key").stat().st_size > 0
    return tmp_path / "server.pem"


def test_step1_one_service(start) -> None:  # type: ignore[no-untyped-def]
    step = start("step1_one_service.py")
    assert curl(step.url) == "hello from the web side, http over HTTP/1.1\n"
    assert "Traceback" not in step.stop()


def test_step2_http1_and_h2c(start) -> None:  # type: ignore[no-untyped-def]
    step = start("step2_web.py")
    assert curl(step.url) == "hello from the web side, http over HTTP/1.1\n"
    assert curl("--http2-prior-knowledge", step.url) == (
        "hello from the web side, http over HTTP/2\n"
    )
    assert "Traceback" not in step.stop()


def test_step3_grpc_and_web(start) -> None:  # type: ignore[no-untyped-def]
    step = start("step3_grpc.py")
    assert curl(step.url) == "hello from the web side, http over HTTP/1.1\n"
    assert curl("--http2-prior-knowledge", step.url) == (
        "hello from the web side, http over HTTP/2\n"
    )
    assert grpc_call(step.port) == (
        "hello tutorial, from the gRPC side; you are 127.0.0.1"
    )
    errors = step.stop()
    assert "Traceback" not in errors, errors


def check_step4(port: int, certificate: Path) -> None:
    """What step 4 and step 5 both serve: TLS and plaintext, web and gRPC."""
    https = f"https://localhost:{port}/"
    resolve = f"localhost:{port}:127.0.0.1"
    assert curl("--cacert", str(certificate), "--resolve", resolve, https) == (
        "hello from the web side, https over HTTP/2\n"
    )
    assert curl("-k", "--http2", f"https://127.0.0.1:{port}/") == (
        "hello from the web side, https over HTTP/2\n"
    )
    assert curl("-k", "--http1.1", f"https://127.0.0.1:{port}/") == (
        "hello from the web side, https over HTTP/1.1\n"
    )
    plain = f"http://127.0.0.1:{port}/"
    assert curl(plain) == "hello from the web side, http over HTTP/1.1\n"
    assert curl("--http2-prior-knowledge", plain) == (
        "hello from the web side, http over HTTP/2\n"
    )
    expected = "hello tutorial, from the gRPC side; you are 127.0.0.1"
    assert grpc_call(port, "--tls", str(certificate)) == expected
    assert grpc_call(port) == expected


def test_step4_https_and_grpc_over_tls(start, certificate: Path) -> None:  # type: ignore[no-untyped-def]
    step = start(
        "step4_https.py", str(certificate), str(certificate.with_suffix(".key"))
    )
    check_step4(step.port, certificate)
    errors = step.stop()
    assert "Traceback" not in errors, errors


def test_step5_the_config_file_under_twistd(tmp_path: Path, certificate: Path) -> None:
    # The reader's directory: the config, the app module and the certificate.
    for name in ("cmux.toml", "hello.py"):
        shutil.copy(TUTORIAL / name, tmp_path / name)
    checked = run(
        *twistd_command(), "cmux", "--check", "--config", "cmux.toml", cwd=tmp_path
    )
    assert checked.strip() == "cmux.toml: OK, 1 listener, 3 routes"
    port_file, log = tmp_path / "ports", tmp_path / "twistd.log"
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(
            [
                *twistd_command(),
                "-n",
                "--pidfile=",
                "cmux",
                "--config",
                "cmux.toml",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--port-file",
                str(port_file),
            ],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(),
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            if process.poll() is not None:
                pytest.fail(f"twistd exited {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"twistd did not listen in time:\n{log.read_text()}")
            time.sleep(0.05)  # waiting for another process, not for time to pass
        check_step4(int(port_file.read_text().split()[0]), certificate)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_the_page_includes_every_step() -> None:
    page = PAGE.read_text(encoding="utf-8")
    included = set(
        re.findall(r"```\{literalinclude\} \.\./examples/tutorial/(\S+)", page)
    )
    files = {p.name for p in TUTORIAL.iterdir() if p.suffix in (".py", ".toml", ".sh")}
    assert files == included, files ^ included
