"""The asyncio event loop an ASGI app runs on: a thread of its own.

ASGI apps are coroutines, and the frameworks (Starlette, FastAPI, Django)
need a running asyncio loop.  Rather than asking for Twisted's asyncio
reactor (which ``twistd`` would have to be told to install before anything
imports a reactor), each :class:`AppLoop` runs one asyncio loop in a
thread beside the reactor.  Work crosses in two directions only:
:meth:`AppLoop.run` starts a coroutine on the loop, and the coroutine's
side calls ``reactor.callFromThread`` for everything that touches a
transport.  Both keep their order (FIFO), which is what lets a response's
writes go one way without waiting for an answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


class AppLoop:
    """An asyncio loop in a daemon thread, started and stopped from the reactor."""

    def __init__(self, reactor: Any, name: str) -> None:
        self.reactor = reactor
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread and its loop (returns once the loop runs)."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        running = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(running.set)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self.loop = loop
        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        running.wait()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
        """Run ``coroutine`` on the loop; a Deferred (in the reactor) of its result."""
        assert self.loop is not None, "the app's loop is not running"
        done: Deferred[T] = Deferred()
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)

        def settled(future: Future[T]) -> None:
            self.reactor.callFromThread(_settle, done, future)

        future.add_done_callback(settled)
        return done

    def spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        """Run ``coroutine`` on the loop, with no word back (it reports itself)."""
        assert self.loop is not None, "the app's loop is not running"
        self.loop.call_soon_threadsafe(self.loop.create_task, coroutine)

    def call_soon(self, function: Callable[..., object], *args: object) -> None:
        """Call ``function(*args)`` on the loop's thread, soon (from the reactor)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(function, *args)

    def stop(self) -> None:
        """Stop the loop and wait for its thread (its tasks should be done)."""
        thread, self._thread = self._thread, None
        loop, self.loop = self.loop, None
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def _settle(done: Deferred[T], future: Future[T]) -> None:
    if future.cancelled():
        done.cancel()
        return
    error = future.exception()
    if error is not None:
        done.errback(error)
    else:
        done.callback(future.result())


#: How many bytes the app may have sent that the reactor has not written yet.
IN_FLIGHT = 512 * 1024


class Outbox:
    """(On the app's loop.)  When the app may send more on one connection.

    The app waits in :meth:`wait` while the transport (or an HTTP/2
    stream's window) is full, as the transport's producer calls say
    (:meth:`pause`, :meth:`resume`), or while more than :data:`IN_FLIGHT`
    bytes it sent are still on their way to the reactor (:meth:`sent`,
    then :meth:`written` once the reactor wrote them).  :meth:`close`
    lets every wait end.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self._open = asyncio.Event()  # not paused
        self._open.set()
        self._room = asyncio.Event()  # in_flight below the bound
        self._room.set()

    async def wait(self) -> None:
        """Return once the app may send."""
        await self._open.wait()
        if self.in_flight >= IN_FLIGHT:
            self._room.clear()
            await self._room.wait()

    def sent(self, size: int) -> None:
        self.in_flight += size

    def written(self, size: int) -> None:
        self.in_flight -= size
        if self.in_flight < IN_FLIGHT:
            self._room.set()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.set()
        self._room.set()
        self.in_flight = 0
