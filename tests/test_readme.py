"""The README's library example runs as pasted and serves what it says."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _library_example() -> str:
    text = README.read_text("utf-8")
    section = text[text.index("**2. In a Twisted program.**") :]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # waiting for the child process to listen


def test_the_library_example_serves_echo_and_web(tmp_path: Path) -> None:
    source = _library_example()
    assert '"tcp:8080:interface=127.0.0.1"' in source
    port = _free_port()
    script = tmp_path / "mux.py"
    script.write_text(source.replace(":8080:", f":{port}:"), "utf-8")
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with _connect(port, time.monotonic() + 30) as echo:
            echo.sendall(b"ECHO hello")
            assert echo.recv(100) == b"ECHO hello"
        for flags in ([], ["--http2-prior-knowledge"]):
            done = subprocess.run(
                ["curl", "-sS", *flags, f"http://127.0.0.1:{port}/hello"],
                capture_output=True,
                timeout=30,
            )
            assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
    finally:
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=30)
    assert "Traceback" not in output, output
    assert "Starting factory <ProtocolSwitchingFactory" in output, output
