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
