"""examples/app.py runs, and serves web over HTTP/1.1 and h2c and gRPC on one port."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "app.py"


def test_example_app_serves_web_and_grpc_on_one_port() -> None:
    app = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        first = app.stdout.readline()
        assert first.startswith("listening on 127.0.0.1:"), first
        port = first.rsplit(":", 1)[1].strip()
        url = f"http://127.0.0.1:{port}/"

        def run(*command: str) -> str:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert run("curl", "-sS", url) == "hello from the web side, over HTTP/1.1\n"
        assert run("curl", "-sS", "--http2-prior-knowledge", url) == (
            "hello from the web side, over HTTP/2\n"
        )
        answer = run(sys.executable, str(EXAMPLE), "--call", port)
        assert answer == "hello example, from the gRPC side; you are 127.0.0.1\n"
    finally:
        app.send_signal(signal.SIGTERM)
        _, errors = app.communicate(timeout=30)
    assert "Traceback" not in errors, errors
    assert app.returncode == 0
