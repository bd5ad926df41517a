"""What ties a running service to its process: systemd's notify socket, signals.

``notify_systemd`` tells a service manager how the service is doing, over
the datagram socket systemd names in ``$NOTIFY_SOCKET`` for a
``Type=notify`` unit (``READY=1`` once listening, ``RELOADING=1`` and
``READY=1`` around a reload, ``STOPPING=1`` when the drain starts; see
sd_notify(3)).  Without that variable it does nothing, so it is safe to
call anywhere::

    >>> import os
    >>> "NOTIFY_SOCKET" in os.environ or notify_systemd("READY=1") is False
    True
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from ._log import log


def notify_systemd(*lines: str) -> bool:
    """Send ``lines`` to ``$NOTIFY_SOCKET``; whether there was one to send to.

    A path starting with ``@`` is an abstract socket, as sd_notify(3) says.
    A socket that cannot be reached is logged once per call, not raised.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as error:
        log.warn(
            "txcmux: cannot notify systemd at {path}: {error}",
            path=path,
            error=error.strerror or error,
        )
        return False
    return True


def install_signal_handler(
    number: signal.Signals, reactor: Any, handler: Callable[[], object]
) -> None:
    """Call ``handler`` in the reactor thread whenever signal ``number`` arrives.

    The handler replaces whatever was installed before (Twisted's own
    SIGTERM handler, for a second SIGTERM during a drain).
    """

    def received(signum: int, frame: object) -> None:
        reactor.callFromThread(handler)

    signal.signal(number, received)


#: Where this process's open file descriptors are listed (Linux).
_OPEN_FDS = "/proc/self/fd"


class DescriptorWatch:
    """Pauses accepting while the process is nearly out of file descriptors.

    Every ``interval`` seconds (0.2 s while paused) it counts this
    process's open descriptors against its soft limit (``ulimit -n``).
    With fewer than ``low`` free (a twentieth of the limit, at least 16) it
    stops reading on every listening port that ``ports()`` returns, so new
    connections wait in the kernel's listen backlog instead of being
    accepted and closed, and warns once, with the limit; with twice that
    free again it resumes.  Between two counts a burst may still exhaust
    the descriptors: Twisted's own EMFILE recovery (close the reserved
    descriptor, accept, close) is then the backstop.  Does nothing where
    ``/proc/self/fd`` or the limit is missing.
    """

    def __init__(self, reactor: Any, ports: Callable[[], list[Any]]) -> None:
        self.reactor = reactor
        self.ports = ports
        self.paused = False
        #: How many times accepting was paused.
        self.pauses = 0
        self.limit = _soft_fd_limit()
        self.low = max(16, self.limit // 20) if self.limit else 0
        self._call: Any = None

    def start(self, interval: float = 1.0) -> None:
        """Check now and every ``interval`` seconds."""
        self.interval = interval
        if self.limit and os.path.isdir(_OPEN_FDS):
            self._check()

    def stop(self) -> None:
        """Stop checking (and resume, if paused)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.paused:
            self._set_reading(True)
            self.paused = False

    def _check(self) -> None:
        try:
            used = len(os.listdir(_OPEN_FDS))
        except OSError:  # out of descriptors to list them with: pause
            used = self.limit
        free = self.limit - used
        if not self.paused and free < self.low:
            self.paused = True
            self.pauses += 1
            self._set_reading(False)
            log.warn(
                "txcmux: {used} of {limit} file descriptors open (ulimit -n;"
                " systemd's LimitNOFILE): not accepting new connections until"
                " {free} are free",
                used=used,
                limit=self.limit,
                free=2 * self.low,
            )
        elif self.paused and free >= 2 * self.low:
            self.paused = False
            self._set_reading(True)
            log.info(
                "txcmux: {free} file descriptors free again: accepting",
                free=free,
            )
        delay = 0.2 if self.paused else self.interval
        self._call = self.reactor.callLater(delay, self._check)

    def _set_reading(self, reading: bool) -> None:
        for port in self.ports():
            method = getattr(port, "startReading" if reading else "stopReading", None)
            if method is not None:
                method()


def _soft_fd_limit() -> int:
    """The soft limit on open file descriptors, or 0 if there is none."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError):
        return 0
    return 0 if soft == resource.RLIM_INFINITY else int(soft)
