"""Every private Twisted name txcmux relies on, checked when this is imported.

txcmux reaches into a few of Twisted's private attributes where no public
API does the job.  Each use goes through this module, which checks that the
name is there and, where it is not, says which one and what it is for, so a
new Twisted release that moves one fails loudly at import or at first use
instead of misbehaving.
"""

from __future__ import annotations

import signal
from typing import Any


def clear_sigterm_exit(reactor: Any) -> None:
    """Let twistd exit 0 after an orderly stop on SIGTERM.

    twistd re-raises the signal that stopped the reactor once it returns
    (the reactor's private ``_exitSignal``), so the process would die of
    SIGTERM; after an orderly shutdown we clear it and twistd exits 0.
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None
