"""The real client bytes in ../shared/captures, loaded for tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path

CAPTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "captures"


@cache
def capture(name: str) -> bytes:
    """The bytes of one capture file, e.g. ``capture("curl-http1.1.bin")``."""
    return (CAPTURES / name).read_bytes()


def http2_opening(client: str) -> bytes:
    """What an HTTP/2 client sent before and after our SETTINGS, concatenated."""
    return capture(f"{client}.before-settings.bin") + capture(
        f"{client}.after-settings.bin"
    )


#: A SETTINGS frame with the ACK flag: how a client answers our SETTINGS.
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"

HTTP2_CLIENTS = (
    "grpcio-unary",
    "grpc-js-unary",
    "h2load-grpc",
    "curl-h2c-prior-knowledge",
)
