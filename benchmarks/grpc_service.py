"""The gRPC service the benchmarks call: raw-bytes echo, unary and bidi.

No generated code: grpcio's generic handlers with identity serializers::

    server = grpc.server(ThreadPoolExecutor(16))
    add_to(server)                      # serves /bench.Echo/Unary and /Bidi
    channel = grpc.insecure_channel("127.0.0.1:50051")
    reply = channel.unary_unary(UNARY)(b"x" * 100)

h2load can call ``Unary`` with a request body from :func:`grpc_frame`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import grpc

SERVICE = "bench.Echo"
UNARY = f"/{SERVICE}/Unary"
BIDI = f"/{SERVICE}/Bidi"
#: grpcio channel/server options: room for the largest message used here.
OPTIONS = [
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


def _identity(data: bytes) -> bytes:
    return data


def _unary(request: bytes, context: Any) -> bytes:
    return request


def _bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    yield from requests


def add_to(server: grpc.Server) -> None:
    """Add the echo service to ``server`` (a GrpcServer ``add_services`` item)."""
    raw = {"request_deserializer": _identity, "response_serializer": _identity}
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary, **raw),
                    "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, **raw),
                },
            ),
        )
    )


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (not compressed), length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message
