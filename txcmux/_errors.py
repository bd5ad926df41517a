"""The exceptions txcmux raises, under one root."""

from __future__ import annotations


class TxcmuxError(Exception):
    """The root of every error txcmux raises."""


class ConfigurationError(TxcmuxError, ValueError):
    """Routes, matchers or a config file do not fit together.

    The message says what was wrong, where (file, route, key) and what would
    be right.
    """
