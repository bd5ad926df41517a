"""What the atheris targets share: instrumented imports and the entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Hand ``test_one_input`` to libFuzzer with this process's arguments.

    libFuzzer takes its options and corpus directories from ``sys.argv``
    (``-runs=N``, ``-max_total_time=S``, ``-artifact_prefix=DIR/``) and ends
    the process: with status 0 when the runs are done, else with the
    exception and the input that raised it written under the prefix.
    """
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
