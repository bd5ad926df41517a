"""A histogram cheap enough to feed on every connection.

prometheus_client's own ``Histogram.observe`` takes a lock and walks its
buckets in Python on each call (about 1.5 us); the detector and the relay
observe one value per connection, and read the buckets only when
``/metrics`` is scraped, so they keep the counts here (one ``bisect`` and
two additions) and the admin's collector turns them into the Prometheus
histogram form::

    >>> h = Histogram((0.001, 0.01, 0.1))
    >>> for seconds in (0.0005, 0.002, 0.002, 5.0):
    ...     h.observe(seconds)
    >>> h.cumulative()
    [('0.001', 1), ('0.01', 3), ('0.1', 3), ('+Inf', 4)]
    >>> h.count, round(h.sum, 4)
    (4, 5.0045)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

#: Buckets for the time to decide a connection's route, in seconds.
DECISION_SECONDS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.01,
    0.1,
    1.0,
    5.0,
)
#: Buckets for how many bytes a decision needed.
DECISION_BYTES = (0, 8, 16, 24, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)
#: Buckets for the time a backend takes to accept a relay's connection.
CONNECT_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0, 10.0)


class Histogram:
    """Counts of observed values per bucket upper bound (``le``), and their sum."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least it."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` per bucket, counts cumulative, as Prometheus has them."""
        total = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else f"{bound:g}", total))
        return out
