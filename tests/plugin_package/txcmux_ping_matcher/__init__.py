"""A txcmux matcher plugin: ``ping`` matches connections opening with a word.

In a config file, once this distribution is installed::

    match = ["ping"]                          # "PING"
    match = [{ type = "ping", word = "HELO" }]
"""

from __future__ import annotations

from txcmux.matchers import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict


def ping(word: bytes = b"PING") -> FunctionMatcher:
    """Match a connection whose first bytes are ``word``."""
    if not word:
        raise ValueError("ping(): word must not be empty")

    def verdict(data: bytes) -> Verdict:
        if data.startswith(word):
            return MATCH
        return NEED_MORE if word.startswith(data) else NO_MATCH

    return FunctionMatcher(f"ping({word.decode('latin-1')})", len(word), verdict)
