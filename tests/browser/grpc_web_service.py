"""A grpcio service for the gRPC-Web browser test, with messages of one string field.

``add_services(server)`` adds ``txcmux.test.Harness``: ``Say`` answers
``echo: TEXT`` with the response header ``x-header: yes`` and the trailer
``x-trailer: done`` (a request of ``fail`` ends with NOT_FOUND,
``no such thing``); ``SayStream`` answers ``TEXT #1`` to ``TEXT #3``.
Messages are field 1, a string, as ``txcmux.demo.Message``; they are
encoded here by hand (a tag byte, a length, UTF-8), so no protoc is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc


def decode(data: bytes) -> str:
    """Field 1 of a one-field message (strings under 128 bytes)."""
    if not data:
        return ""
    assert data[0] == 0x0A and data[1] < 0x80, data
    return data[2 : 2 + data[1]].decode("utf-8")


def encode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"\x0a" + bytes([len(raw)]) + raw


def _say(request: str, context: Any) -> str:
    context.send_initial_metadata((("x-header", "yes"),))
    context.set_trailing_metadata((("x-trailer", "done"),))
    if request == "fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return f"echo: {request}"


def _say_stream(request: str, context: Any) -> Iterator[str]:
    context.set_trailing_metadata((("x-trailer", "done"),))
    for n in (1, 2, 3):
        yield f"{request} #{n}"


def add_services(server: grpc.Server) -> None:
    """Add ``txcmux.test.Harness`` to ``server``."""
    codec = {"request_deserializer": decode, "response_serializer": encode}
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "txcmux.test.Harness",
                {
                    "Say": grpc.unary_unary_rpc_method_handler(_say, **codec),
                    "SayStream": grpc.unary_stream_rpc_method_handler(
                        _say_stream, **codec
                    ),
                },
            ),
        )
    )
