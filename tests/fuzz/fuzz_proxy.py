"""atheris target: the PROXY protocol parser (v1 and v2, TLVs).

Every input is parsed whole and at every prefix: the answer is a header, an
error or ``NEED_MORE`` (only below the bound), and once decided for a prefix
it stays the same kind for every longer one.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["txcmux"]):
    from txcmux._proxy._parser import (
        V1_MAX_BYTES,
        V2_SIGNATURE,
        ProxyError,
        ProxyHeader,
        parse,
    )
    from txcmux.matchers import NEED_MORE

from ._target import run

_BOUNDS = (16, 52, 232, 4096)


def _kind(result: object) -> str:
    if isinstance(result, ProxyHeader):
        return "header"
    if isinstance(result, ProxyError):
        return "error"
    if result is NEED_MORE:
        return "need more"
    raise AssertionError(f"parse returned {result!r}")


def test_one_input(data: bytes) -> None:
    bound = _BOUNDS[data[0] % len(_BOUNDS)] if data else 4096
    data = data[1:]
    whole = parse(data, bound)
    kind = _kind(whole)
    limit = bound if data.startswith(V2_SIGNATURE) else V1_MAX_BYTES
    if kind == "need more" and len(data) >= limit:
        raise AssertionError(f"need more past the bound ({limit}): {data!r}")
    if isinstance(whole, ProxyHeader) and not whole.length <= min(len(data), limit):
        raise AssertionError(f"a {whole.length}-byte header in {len(data)}: {data!r}")
    decided = False
    for end in range(min(len(data), 300) + 1):
        found = _kind(parse(data[:end], bound))
        if found != "need more":
            decided = True
        if decided and found != kind:
            raise AssertionError(f"{found} at {end} bytes, {kind} whole: {data!r}")


if __name__ == "__main__":
    run(test_one_input)
