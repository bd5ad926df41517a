"""The real client captures, for txcmux's own tests.

They ship in the package (txcmux/testing/_captures) and are read through
:mod:`txcmux.testing`, the one place that knows where they are.
"""

from txcmux.testing import HTTP2_CLIENTS, SETTINGS_ACK, capture, http2_opening

__all__ = ["HTTP2_CLIENTS", "SETTINGS_ACK", "capture", "http2_opening"]
