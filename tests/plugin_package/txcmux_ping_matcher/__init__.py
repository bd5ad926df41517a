"""A txcmux matcher plugin: ``ping`` matches connections opening with a word.

In a config file, once this distribution is installed::

    match = ["ping"]                          # "PING"
    match = [{ type = "ping", word = "HELO" }]

``ping`` declares its parameter, so the config layer checks it and passes
it as bytes.  ``echo_word`` declares nothing: it gets what TOML gives (a
``str``), and its signature says which keys it takes.
"""

from __future__ import annotations

from txcmux.matchers import (
    MATCH,
    NEED_MORE,
    NO_MATCH,
    FunctionMatcher,
    Param,
    Verdict,
    parameters,
)


def _starts_with(word: bytes) -> FunctionMatcher:
    def verdict(data: bytes) -> Verdict:
        if data.startswith(word):
            return MATCH
        return NEED_MORE if word.startswith(data) else NO_MATCH

    return FunctionMatcher(f"ping({word.decode('latin-1')})", len(word), verdict)


@parameters(Param("word", bytes, b"PING"))
def ping(word: bytes = b"PING") -> FunctionMatcher:
    """Match a connection whose first bytes are ``word``."""
    if not word:
        raise ValueError("ping(): word must not be empty")
    return _starts_with(word)


def echo_word(word="ECHO", upper=False):  # type: ignore[no-untyped-def]
    """Match a connection whose first bytes are ``word`` (a str: undeclared)."""
    if not isinstance(word, str):
        raise TypeError(f"echo_word(): word must be a string, not {word!r}")
    return _starts_with((word.upper() if upper else word).encode("ascii"))
