"""Capture what txcmux logs, for tests that assert on log lines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from twisted.logger import LogEvent, formatEvent, globalLogPublisher


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Collect the formatted text of every log event inside the block."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)
