"""atheris target: the TLS ClientHello parser and the tls() matchers.

No exception; the tls() variants are monotone over the prefixes of the
input and never answer ``NEED_MORE`` at or past their ``max_bytes``.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["txcmux"]):
    from txcmux import matchers
    from txcmux.matchers import Outcome, Verdict

from ._target import run

_MATCHERS = (
    matchers.tls(),
    matchers.tls(sni=["localhost", "*.example.com"]),
    matchers.tls(alpn="h2", versions="1.3"),
    matchers.tls(sni="localhost", max_bytes=300),
)


def test_one_input(data: bytes) -> None:
    hello = matchers.parse_client_hello(data)
    if not isinstance(hello, Verdict | matchers.ClientHello):
        raise AssertionError(f"parse_client_hello returned {hello!r}")
    for matcher in _MATCHERS:
        decided = None
        for end in (*range(min(len(data), 48)), *range(48, len(data), 97), len(data)):
            outcome = matcher(data[:end]).outcome
            if decided is not None and outcome is not decided:
                raise AssertionError(f"{matcher.name} changed its mind at {end}")
            if outcome is not Outcome.NEED_MORE:
                decided = outcome
            elif end >= matcher.max_bytes:
                raise AssertionError(f"{matcher.name} needs more at {end} bytes")


if __name__ == "__main__":
    run(test_one_input)
