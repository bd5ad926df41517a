"""Find one field of an HPACK header block without decoding the others.

The HTTP/2 matchers ask one question of a client's first header block: the
value of ``content-type`` (``grpc``), or of one named field
(``http2_header``).  Decoding the whole block with hpack's ``Decoder``
Huffman-decodes every name and value, a long ``user-agent`` included, and
was most of a gRPC decision's cost.  :func:`values_of` walks the block's
representations (RFC 7541, section 6) with hpack's own integer and Huffman
decoders, and decodes only the strings of the field asked for::

    >>> import hpack
    >>> block = hpack.Encoder().encode(
    ...     [(":method", "POST"), ("content-type", "application/grpc"),
    ...      ("user-agent", "grpc-python/1.85.1 grpc-c/58.0.0 (linux; chttp2)")]
    ... )
    >>> values_of(block, b"content-type")
    [b'application/grpc']

A field that refers to an entry this same block added to the dynamic table
(a client repeating a header within its first request) is answered by
hpack's full ``Decoder`` instead (``None`` from the scan), since finding
such an entry needs the decoded sizes of everything added before it.
Strings the scan skips are not decoded, so a block broken only inside a
field the matcher does not look at still gets an answer; the target, which
decodes everything, refuses such a block itself.
"""

from __future__ import annotations

import functools

import hpack
from hpack.hpack import decode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE  # index 1 is _STATIC[0]
_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@functools.cache
def _huffman(name: bytes) -> bytes:
    """``name`` Huffman-coded: HPACK's code is canonical, so a name has one
    valid coding, and a literal name can be compared without decoding it."""
    return _HUFFMAN.encode(name)


def values_of(block: bytes, name: bytes) -> list[bytes]:
    """The values of every field called ``name`` in header ``block``, in order.

    Raises ``hpack.HPACKError`` for a block that is broken where the scan
    reads it (a representation cut short, an index beyond the tables).
    """
    found = _scan(block, name)
    if found is not None:
        return found
    return [bytes(v) for n, v in hpack.Decoder().decode(block, raw=True) if n == name]


def _scan(block: bytes, name: bytes) -> list[bytes] | None:
    """The values, or None where only a full decode can say."""
    size = len(block)
    position = 0
    found: list[bytes] = []
    coded_name = _huffman(name)
    static = len(_STATIC)
    while position < size:
        first = block[position]
        if first & 0x80:  # an indexed field: both name and value from a table
            index, position = _integer(block, position, 0x7F)
            if index == 0 or index > static:
                return None  # 0 is an error, the rest the dynamic table
            entry = _STATIC[index - 1]
            if entry[0] == name:
                found.append(entry[1])
            continue
        if first & 0xC0 == 0x40:
            mask = 0x3F  # a literal added to the dynamic table
        elif first & 0xE0 == 0x20:  # a dynamic table size update
            _, position = _integer(block, position, 0x1F)
            continue
        else:
            mask = 0x0F  # a literal without indexing, or never indexed
        index, position = _integer(block, position, mask)
        if index:
            if index > static:
                return None
            wanted = _STATIC[index - 1][0] == name
        else:
            huffman, start, position = _string(block, position)
            wanted = block[start:position] == (coded_name if huffman else name)
        huffman, start, position = _string(block, position)
        if wanted:
            raw = block[start:position]
            found.append(decode_huffman(raw) if huffman else raw)
    return found


def _integer(block: bytes, position: int, mask: int) -> tuple[int, int]:
    """An integer with a ``mask``-bit prefix at ``position``, and what follows.

    One byte in the usual case; hpack's decoder for the longer forms.
    """
    value = block[position] & mask
    if value < mask:
        return value, position + 1
    value, used = decode_integer(memoryview(block)[position:], mask.bit_length())
    return value, position + used


def _string(block: bytes, position: int) -> tuple[bool, int, int]:
    """A string literal: whether it is Huffman-coded, where it starts and ends."""
    if position >= len(block):
        raise hpack.HPACKDecodingError("a header block ends inside a field")
    huffman = bool(block[position] & 0x80)
    length, start = _integer(block, position, 0x7F)
    end = start + length
    if end > len(block):
        raise hpack.HPACKDecodingError("a string runs past the header block")
    return huffman, start, end
