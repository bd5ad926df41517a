"""atheris target: the detector with every matcher, fed whole and split.

The first bytes of an input choose the routes (from tests/fuzzing.py's
matchers), the split points, whether the client half-closes and the
sniff-byte limit; the rest is what the client sends.  The decision fed
whole and fed split must be the same, and nothing may be logged as a
failure (a matcher that raised).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["txcmux"]):
    from twisted.logger import globalLogPublisher

    from txcmux.testing import SwitchHarness, split_at

from ..fuzzing import CLIENT, LOCAL, all_matchers
from ._target import run

MATCHERS = all_matchers()
NAMES = sorted(MATCHERS)
_failures: list[object] = []


def _observe(event: dict[str, object]) -> None:
    if "log_failure" in event:
        _failures.append(event)


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    count = provider.ConsumeIntInRange(1, 6)
    names = list(dict.fromkeys(provider.PickValueInList(NAMES) for _ in range(count)))
    cuts = [
        provider.ConsumeIntInRange(0, 400)
        for _ in range(provider.ConsumeIntInRange(0, 8))
    ]
    eof = provider.ConsumeBool()
    limit = provider.PickValueInList([16384, 512, 24])
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    harness = SwitchHarness(
        {name: MATCHERS[name] for name in names}, max_sniff_bytes=limit
    )
    whole = harness.feed(stream, eof=eof, peer=CLIENT, host=LOCAL)
    split = harness.feed(*split_at(stream, *cuts), eof=eof, peer=CLIENT, host=LOCAL)
    if (whole.route, whole.rejected) != (split.route, split.rejected):
        raise AssertionError(f"{names}: {whole.decision} whole, {split.decision} split")
    if _failures:
        raise AssertionError(f"logged a failure: {_failures[0]}")


if __name__ == "__main__":
    globalLogPublisher.addObserver(_observe)
    run(test_one_input)
