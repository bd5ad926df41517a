"""Helpers for testing matchers, routes and plugins built on txcmux.

For people who write matchers or route targets, and for txcmux's own tests:
real client openings to feed (:data:`GRPCIO`, :data:`CURL_CLIENT_HELLO`,
:func:`capture`, ...), a check that a matcher keeps the detector's rules
(:func:`assert_well_behaved`), a ProtocolSwitchingFactory driven over
in-memory connections on a fake clock (:class:`SwitchHarness`), and route
targets that record what they were handed (:class:`RecordingFactory`)::

    >>> from txcmux import matchers
    >>> from txcmux.testing import CAPTURES, OPENSSH, SwitchHarness, assert_well_behaved
    >>> assert_well_behaved(matchers.ssh(), CAPTURES.values())
    >>> SwitchHarness({"ssh": matchers.ssh()}).feed(OPENSSH).route
    'ssh'

Import it explicitly (``import txcmux`` does not); it needs nothing beyond
txcmux's own dependencies (no pytest, no Hypothesis).  docs/testing.md has
the whole story.
"""

from ._harness import (
    ConnectionReport,
    InMemoryConnection,
    SwitchHarness,
    every_split,
    split_at,
)
from ._matcher_checks import (
    EXHAUSTIVE_BYTES,
    Feeding,
    assert_well_behaved,
    feed_matcher,
)
from ._openings import (
    CAPTURES,
    CHROMIUM_CLIENT_HELLO,
    CURL_CLIENT_HELLO,
    CURL_H2C,
    CURL_HTTP1,
    GRPC_JS,
    GRPCIO,
    H2LOAD_GRPC,
    HTTP2_CLIENTS,
    OPENSSH,
    SETTINGS_ACK,
    capture,
    http2_opening,
)
from ._recording import (
    HalfCloseRecorder,
    HalfCloseRecordingFactory,
    Recorder,
    RecordingFactory,
)

__all__ = [
    "CAPTURES",
    "CHROMIUM_CLIENT_HELLO",
    "CURL_CLIENT_HELLO",
    "CURL_H2C",
    "CURL_HTTP1",
    "EXHAUSTIVE_BYTES",
    "GRPCIO",
    "GRPC_JS",
    "H2LOAD_GRPC",
    "HTTP2_CLIENTS",
    "OPENSSH",
    "SETTINGS_ACK",
    "ConnectionReport",
    "Feeding",
    "HalfCloseRecorder",
    "HalfCloseRecordingFactory",
    "InMemoryConnection",
    "Recorder",
    "RecordingFactory",
    "SwitchHarness",
    "assert_well_behaved",
    "capture",
    "every_split",
    "feed_matcher",
    "http2_opening",
    "split_at",
]
