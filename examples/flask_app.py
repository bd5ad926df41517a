"""A Flask app served by txcmux beside gRPC and SSH (see flask.toml).

Nothing here knows about txcmux: this is an ordinary WSGI app.  ``/`` says
who the client is as the app sees it; ``/stream`` sends its first line at
once and the second only after ``/release`` is asked for, so a client can
tell that the response is streamed, not buffered whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from flask import Flask, Response, request

app = Flask(__name__)
_released = threading.Event()


@app.get("/")
def who() -> dict[str, str]:
    return {
        "client": request.remote_addr or "",
        "scheme": request.scheme,
        "protocol": request.environ["SERVER_PROTOCOL"],
    }


@app.get("/stream")
def stream() -> Response:
    _released.clear()

    def lines() -> Iterator[bytes]:
        yield b"first\n"
        _released.wait(timeout=10)
        yield b"second\n"

    return Response(lines(), mimetype="text/plain")


@app.get("/release")
def release() -> str:
    _released.set()
    return "released\n"
