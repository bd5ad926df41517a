"""JSON lines out of ``twistd cmux``, for log shippers.

twistd's ``--logger`` option names a log observer factory; this module is
one.  Every event becomes one line of JSON on standard output, with its
fields (``log_namespace``, ``log_level``, ``log_format`` and txcmux's own,
such as ``peer``, ``route``, ``detail``, ``limit``) as keys, in
twisted.logger's own JSON form (``twisted.logger.eventFromJSON`` reads it
back)::

    twistd -n --logger txcmux.jsonlog.observer cmux --config cmux.toml

A line's ``log_format`` with its fields is the text the plain log shows
(``twisted.logger.formatEvent``).
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver

__all__ = ["observer"]


def observer() -> FileLogObserver:
    """A log observer writing one JSON object per line to standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
