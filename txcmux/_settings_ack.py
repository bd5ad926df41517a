"""Keep a client's ACK of the detector's SETTINGS from the protocol that takes over.

When an HTTP/2 matcher made the detector send SETTINGS, the client answers
with a SETTINGS frame carrying the ACK flag.  The target (a backend gRPC
server, Twisted's HTTP/2 server) never sent those SETTINGS; strict servers
(Go's) answer an unexpected ACK with PROTOCOL_ERROR.  Peers acknowledge
SETTINGS in the order they were received (RFC 9113 section 6.5.3), and ours
were sent before the target's, so the client's *first* SETTINGS ACK is ours:
drop exactly that one frame, pass every other byte through unchanged.

    >>> strip = SettingsAckStripper()
    >>> strip.feed(PREFACE + b"\\x00\\x00\\x00\\x04\\x01\\x00\\x00\\x00\\x00" + b"rest")
    b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\nrest'
    >>> strip.done
    True
"""

from __future__ import annotations

from .matchers._http2 import PREFACE

_FRAME_HEADER = 9
_SETTINGS = 0x4
_ACK = 0x1


class SettingsAckStripper:
    """An incremental filter over the client-to-server byte stream.

    Frame payloads pass through as they arrive; only a frame header split
    across reads is held back until its nine bytes are in.
    """

    __slots__ = ("_header", "_passing", "done")

    def __init__(self) -> None:
        self._passing = len(PREFACE)  # payload bytes to pass before the next header
        self._header = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return ``data`` without the first SETTINGS ACK frame."""
        if self.done:
            return data
        out: list[bytes] = []
        view = memoryview(data)
        while view and not self.done:
            if self._passing:
                taken = view[: self._passing]
                out.append(bytes(taken))
                self._passing -= len(taken)
                view = view[len(taken) :]
                continue
            needed = _FRAME_HEADER - len(self._header)
            self._header += bytes(view[:needed])
            view = view[needed:]
            if len(self._header) < _FRAME_HEADER:
                break
            header, self._header = self._header, b""
            length = int.from_bytes(header[:3], "big")
            if header[3] == _SETTINGS and header[4] & _ACK and length == 0:
                self.done = True
            else:
                out.append(header)
                self._passing = length
        out.append(bytes(view))
        return b"".join(out)
