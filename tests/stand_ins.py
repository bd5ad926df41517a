"""Small loopback servers that stand in for a relay's backend in the tests."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def ssh_stand_in(banner: bytes = b"SSH-2.0-stand-in\r\n") -> Iterator[int]:
    """A TCP server that greets like sshd (``banner``), then echoes what it
    reads until the client closes; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(10)
                connection.sendall(banner)
                with contextlib.suppress(OSError):
                    while data := connection.recv(65536):
                        connection.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(timeout=10)
