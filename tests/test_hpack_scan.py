"""The HPACK scan the HTTP/2 matchers use: the same answer as hpack's full decoder.

Blocks are made by hpack's own Encoder from random header lists (Huffman on
and off, fields never indexed, repeated fields that refer to the dynamic
table, table size updates), so every representation RFC 7541 has appears.
"""

from __future__ import annotations

import contextlib

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from txcmux.matchers._hpack_scan import _scan, values_of
from txcmux.matchers._http2 import first_block
from txcmux.testing import http2_opening

NAMES = [b"content-type", b":path", b"user-agent", b"grpc-timeout", b"x-custom", b"te"]
name = st.sampled_from(NAMES) | st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(c % 26 + 97 for c in b)
)
value = st.sampled_from(
    [b"application/grpc", b"", b"application/grpc+proto"]
) | st.binary(max_size=40)
field = st.tuples(name, value, st.booleans())  # (name, value, sensitive)


def encode(
    fields: list[tuple[bytes, bytes, bool]], huffman: bool, resize: bool
) -> bytes:
    encoder = hpack.Encoder()
    if resize:
        encoder.header_table_size = 256  # the block starts with a size update
    items = [hpack.NeverIndexedHeaderTuple(n, v) if s else (n, v) for n, v, s in fields]
    return encoder.encode(items, huffman=huffman)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(field, max_size=12), st.booleans(), st.booleans(), st.sampled_from(NAMES)
)
def test_the_scan_agrees_with_a_full_decode(
    fields: list[tuple[bytes, bytes, bool]], huffman: bool, resize: bool, wanted: bytes
) -> None:
    block = encode(fields, huffman, resize)
    decoded = [
        bytes(v) for n, v in hpack.Decoder().decode(block, raw=True) if n == wanted
    ]
    assert values_of(block, wanted) == decoded


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(NAMES))
def test_garbage_raises_hpack_errors_only(block: bytes, wanted: bytes) -> None:
    with contextlib.suppress(hpack.HPACKError):
        values_of(block, wanted)


def test_real_clients_take_the_fast_path() -> None:
    """grpcio's, grpc-js's and curl's first blocks need no full decode."""
    for client in (
        "grpcio-unary",
        "grpc-js-unary",
        "curl-h2c-prior-knowledge",
        "h2load-grpc",
    ):
        opening = http2_opening(client)
        block = first_block(opening)
        assert isinstance(block, bytes), client
        assert _scan(block, b"content-type") is not None, client


def test_a_repeated_field_falls_back_to_the_full_decoder() -> None:
    block = hpack.Encoder().encode([("x-custom", "one"), ("x-custom", "one")])
    assert _scan(block, b"x-custom") is None  # the second refers to the first
    assert values_of(block, b"x-custom") == [b"one", b"one"]
