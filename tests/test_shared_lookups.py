"""Lookups that do not grow with the routes, and answer as the plain way would.

``tls(sni=[...])`` asks a set, not the list, and every ``http1_header``
route of a decision reads one shared parse of the header block: both give
the answers the one-at-a-time way gives (a pattern at a time; a scan of
the block per matcher, with :func:`~txcmux.matchers._http1.find_field`).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txcmux import matchers
from txcmux.matchers import MATCH, NEED_MORE, NO_MATCH, Verdict
from txcmux.matchers._http1 import find_field, request_line_end
from txcmux.matchers._tls import ServerNames, _name_matches

label = st.sampled_from(["a", "b", "example", "org", "x-1", ""])
name = st.lists(label, min_size=1, max_size=4).map(".".join)
pattern = st.one_of(name, name.map(lambda n: "*." + n), st.just("*"))


@given(st.lists(pattern, max_size=8), name)
def test_the_set_answers_as_the_patterns_one_by_one(
    patterns: list[str], asked: str
) -> None:
    expected = any(_name_matches(p, asked) for p in patterns)
    assert ServerNames(patterns).match(asked) is expected


def test_a_wildcard_covers_every_depth_but_not_the_name_itself() -> None:
    names = ServerNames(["*.example.org", "api.example.com"])
    assert names.match("a.example.org")
    assert names.match("a.b.example.org")
    assert not names.match("example.org")
    assert not names.match(".example.org")
    assert not names.match("www.example.com")
    assert names.match("api.example.com")


def scanned(
    data: bytes, name: bytes, value: bytes, prefix: bool, bound: int
) -> Verdict:
    """http1_header's answer by a scan of its own."""
    data = data[:bound]

    def wanted(field: bytes, given: bytes) -> bool:
        given = given.strip(b" \t").lower()
        return field.lower() == name and (
            given == value or (prefix and given.startswith(value))
        )

    position = request_line_end(data)
    found = (
        position
        if isinstance(position, Verdict)
        else find_field(data, position, wanted)
    )
    return NO_MATCH if found is NEED_MORE and len(data) >= bound else found


line = st.sampled_from(
    [b"Host: a", b"X-Tenant: T1", b"x-tenant:t2 ", b"X-Tenant: t10", b"bad line",
     b" folded", b"", b"Upgrade: websocket", b"X-Tenant:\tt1\t"]
)  # fmt: skip
request = st.builds(
    lambda lines, end: b"GET / HTTP/1.1\r\n" + b"\r\n".join(lines) + end,
    st.lists(line, max_size=6),
    st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\n"]),
)


@given(
    st.one_of(request, st.binary(max_size=60)),
    st.sampled_from([b"x-tenant", b"host", b"upgrade"]),
    st.sampled_from([b"t1", b"t", b"a", b"websocket"]),
    st.booleans(),
    st.sampled_from([16, 40, 16384]),
)
def test_http1_header_answers_as_its_own_scan_would(
    data: bytes, name: bytes, value: bytes, prefix: bool, bound: int
) -> None:
    matcher = matchers.http1_header(name.decode(), value.decode(), prefix, bound)
    expected = scanned(data, name, value, prefix, bound)
    # Twice: once parsing, once from the shared parse of the same bytes.
    assert matcher(data).outcome is expected.outcome
    assert matcher(data).outcome is expected.outcome
    # An equal copy, and other bytes between, are parsed again, not mixed up.
    other = matchers.http1_header("x-tenant", "t2")
    assert other(b"GET / HTTP/1.1\r\nX-Tenant: t2\r\n\r\n") is MATCH
    assert matcher(bytes(bytearray(data))).outcome is expected.outcome
