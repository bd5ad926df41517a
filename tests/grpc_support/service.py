"""A small gRPC service built from grpcio's generic handlers, with bytes messages.

Used in-process (``add_to(server)``, ``GrpcServer([add_to])``) and, for tests
that kill the backend, as a subprocess: ``python service.py`` serves on
127.0.0.1 on a free port and prints ``PORT <n>`` once it is ready.

Methods of ``txcmux.test.Echo`` (requests and replies are raw bytes):

- ``Unary``: the request back.
- ``Peer``: where the call came from, as ``client_address`` sees it
  (``host:port``, or ``none``) then ``|`` and ``context.peer()``.
- ``ServerStream``: request ``b"<count> <size> [<delay seconds>]"``; replies
  ``count`` messages of ``size`` bytes, each filled with its index's last digit.
- ``ClientStream``: ``b"<messages> <total bytes>"`` of what it received.
- ``Bidi``: each message back as it arrives.
- ``Wait``: holds the call open until the client goes (deadline, cancel),
  at most 20 s; records that in ``ENDED_EARLY``.
- ``Metadata``: the call's metadata back, ``key=value`` lines sorted, and
  the trailing metadata ``x-trailer: yes``; a request of ``fail`` ends it
  with NOT_FOUND and the message ``no such thing``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

SERVICE = "txcmux.test.Echo"
MIB = 1024 * 1024
#: Big enough for the 4 MiB tests, both ways.
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", 8 * MIB),
    ("grpc.max_receive_message_length", 8 * MIB),
]
#: Set once per Wait call that saw its client go away.
ENDED_EARLY: list[threading.Event] = []


def _peer(request: bytes, context: Any) -> bytes:
    from txcmux.grpcserver import client_address

    address = client_address(context)
    host = getattr(address, "host", None)
    shown = f"{host}:{address.port}" if host is not None else "none"  # type: ignore[union-attr]
    return f"{shown}|{context.peer()}".encode()


def _server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    fields = request.split()
    count, size = int(fields[0]), int(fields[1])
    delay = float(fields[2]) if len(fields) > 2 else 0.0
    for index in range(count):
        if delay:
            time.sleep(delay)
        yield str(index % 10).encode() * size


def _client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    count = total = 0
    for message in requests:
        count += 1
        total += len(message)
    return f"{count} {total}".encode()


def _bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    yield from requests


def _wait(request: bytes, context: Any) -> bytes:
    ended = threading.Event()
    context.add_callback(ended.set)
    ENDED_EARLY.append(ended)
    ended.wait(20)
    return b"waited"


def _metadata(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-trailer", "yes"),))
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    lines = sorted(f"{k}={v}" for k, v in context.invocation_metadata())
    return "\n".join(lines).encode()


def _identity(data: bytes) -> bytes:
    return data


def handler() -> grpc.GenericRpcHandler:
    """The generic handler serving ``txcmux.test.Echo``."""
    raw = {"request_deserializer": _identity, "response_serializer": _identity}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: r, **raw),
            "Peer": grpc.unary_unary_rpc_method_handler(_peer, **raw),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream, **raw),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream, **raw),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, **raw),
            "Wait": grpc.unary_unary_rpc_method_handler(_wait, **raw),
            "Metadata": grpc.unary_unary_rpc_method_handler(_metadata, **raw),
        },
    )


def add_to(server: grpc.Server) -> None:
    """Add the service to ``server`` (the shape GrpcServer's add_services take)."""
    server.add_generic_rpc_handlers((handler(),))


class Stub:
    """Callables for each method on a channel, bytes in and out."""

    def __init__(self, channel: grpc.Channel) -> None:
        path = f"/{SERVICE}/"
        self.unary = channel.unary_unary(path + "Unary")
        self.peer = channel.unary_unary(path + "Peer")
        self.server_stream = channel.unary_stream(path + "ServerStream")
        self.client_stream = channel.stream_unary(path + "ClientStream")
        self.bidi = channel.stream_stream(path + "Bidi")
        self.wait = channel.unary_unary(path + "Wait")
        self.metadata = channel.unary_unary(path + "Metadata")


def serve_tcp(port: int = 0, workers: int = 8) -> tuple[grpc.Server, int]:
    """A started grpc server on 127.0.0.1 with this service; (server, port)."""
    server = grpc.server(ThreadPoolExecutor(workers), options=MESSAGE_OPTIONS)
    add_to(server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


if __name__ == "__main__":
    running, bound_port = serve_tcp()
    sys.stdout.write(f"PORT {bound_port}\n")
    sys.stdout.flush()
    running.wait_for_termination()
