"""Real client openings: the first bytes curl, grpcio, Chromium and others sent.

The files live in ``_captures/`` beside this module and ship in the wheel;
``_captures/README.md`` says how each was captured::

    >>> from txcmux.testing import capture, OPENSSH
    >>> capture("openssh-client.bin") == OPENSSH
    True
    >>> OPENSSH[:8]
    b'SSH-2.0-'
"""

from __future__ import annotations

from importlib import resources
from types import MappingProxyType
from typing import Final

_FOLDER = resources.files(__package__ or "txcmux.testing") / "_captures"


def capture(name: str) -> bytes:
    """The bytes of one capture file, e.g. ``capture("curl-http1.1.bin")``.

    :data:`CAPTURES` holds them all, by name; an unknown name raises
    ``LookupError`` listing the known ones.
    """
    try:
        return CAPTURES[name]
    except KeyError:
        raise LookupError(
            f"no capture named {name!r}; the captures are: {', '.join(CAPTURES)}"
        ) from None


def http2_opening(client: str) -> bytes:
    """What an HTTP/2 client sent before and after the server's SETTINGS.

    ``client`` is one of :data:`HTTP2_CLIENTS`.  The two halves are
    ``capture(client + ".before-settings.bin")`` (sent unprompted) and
    ``capture(client + ".after-settings.bin")`` (sent once an empty SETTINGS
    frame came from the server; it starts with the client's
    :data:`SETTINGS_ACK`), concatenated: the stream a detector that sends
    SETTINGS sees on such a connection.
    """
    return capture(f"{client}.before-settings.bin") + capture(
        f"{client}.after-settings.bin"
    )


def _read_all() -> dict[str, bytes]:
    return {
        item.name: item.read_bytes()
        for item in sorted(_FOLDER.iterdir(), key=lambda item: item.name)
        if item.name.endswith(".bin")
    }


#: Every capture's bytes, by file name (read-only).
CAPTURES: Final = MappingProxyType(_read_all())

#: The HTTP/2 clients captured before and after the server's SETTINGS, as
#: accepted by :func:`http2_opening`.
HTTP2_CLIENTS: Final = (
    "grpcio-unary",
    "grpc-js-unary",
    "h2load-grpc",
    "curl-h2c-prior-knowledge",
)

#: A SETTINGS frame with the ACK flag: how a client answers the server's SETTINGS.
SETTINGS_ACK: Final = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"

#: curl 7.88 ``--http1.1``: one GET request line and three headers.
CURL_HTTP1: Final = capture("curl-http1.1.bin")

#: curl 7.88 ``--http2-prior-knowledge``: the preface, SETTINGS, WINDOW_UPDATE
#: and a GET's HEADERS at once, without waiting; after the server's SETTINGS,
#: only the ACK.
CURL_H2C: Final = http2_opening("curl-h2c-prior-knowledge")

#: grpcio 1.85 (C core), a unary call: preface, SETTINGS and WINDOW_UPDATE,
#: then it waits for the server's SETTINGS; then the ACK, HEADERS
#: (``content-type: application/grpc``) and DATA.
GRPCIO: Final = http2_opening("grpcio-unary")

#: @grpc/grpc-js (Node), a unary call with a 100 kB message: preface and
#: SETTINGS, then it waits; then the ACK, HEADERS and DATA up to the
#: flow-control window (about 64 KiB).
GRPC_JS: Final = http2_opening("grpc-js-unary")

#: h2load (nghttp2) with gRPC headers: HEADERS and DATA without waiting for
#: the server's SETTINGS; after them only the ACK.
H2LOAD_GRPC: Final = http2_opening("h2load-grpc")

#: curl 7.88 with OpenSSL 3.0 to ``https://localhost``: a 517-byte TLS
#: ClientHello with SNI ``localhost`` and ALPN h2, http/1.1.
CURL_CLIENT_HELLO: Final = capture("curl-tls-clienthello.bin")

#: Chromium 156 headless: a 1,981-byte ClientHello (post-quantum key share),
#: larger than one typical read; SNI ``localhost``, ALPN h2, http/1.1.
CHROMIUM_CLIENT_HELLO: Final = capture("chromium-tls-clienthello.bin")

#: OpenSSH 9.2 client: its identification line (``SSH-2.0-OpenSSH_9.2p1 ...``),
#: the only thing it sends before the server speaks.
OPENSSH: Final = capture("openssh-client.bin")
