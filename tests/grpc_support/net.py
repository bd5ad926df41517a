"""Small helpers for real-socket relay, gRPC and TLS tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.trial import unittest


async def listen(
    case: unittest.TestCase, factory: IProtocolFactory, where: str = "tcp:0"
) -> IListeningPort:
    """Listen on ``where`` (default: a free port on 127.0.0.1) until the test ends."""
    if where == "tcp:0":
        where = "tcp:0:interface=127.0.0.1"
    port: IListeningPort = await endpoints.serverFromString(reactor, where).listen(
        factory
    )
    case.addCleanup(port.stopListening)
    return port


async def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` every 10 ms until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still waiting after {timeout} s: {what or condition}"
            )
        await task.deferLater(reactor, 0.01, lambda: None)


async def start_peer(
    test: unittest.TestCase,
    argv: list[str],
    listening: Callable[[], object],
    what: str,
) -> subprocess.Popen[bytes]:
    """Start a peer program (HAProxy, nginx) for ``test``, stopped at its end.

    Returns once ``listening()`` is true; fails with the program's error
    output if it exits first.
    """
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop() -> None:
        process.terminate()
        process.wait(10)

    test.addCleanup(stop)
    await wait_until(lambda: process.poll() is not None or listening(), what=what)
    assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
    return process


def buffered(transport: Any) -> int:
    """Bytes a tcp/unix transport holds in its write buffer."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def tool(name: str) -> str:
    """The path of a client program; the test is skipped if it is missing."""
    path = shutil.which(name)
    if path is None:
        raise unittest.SkipTest(f"{name} is not installed")
    return path


class RawClient(protocol.Protocol):
    """Sends ``payload`` (then closes, if ``close``) and collects the answer.

    ``done`` fires once the connection has ended.
    """

    def __init__(self, payload: bytes, close: bool = False) -> None:
        self.payload = payload
        self.close = close
        self.received = b""
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)
        if self.close:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)
