"""Fuzzing the SETTINGS-ACK filter: it removes exactly one frame, the first ACK.

:class:`~txcmux.matchers.SettingsAckFilter` keeps the client's ACK of the
detector's SETTINGS from the target.  Fed a random HTTP/2 frame stream cut at
random points, its output, joined, is the stream less exactly the first
SETTINGS frame with the ACK flag and no payload: the oracle here is the list
of frames the stream was built from, not a second parser.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txcmux.matchers import PREFACE, SettingsAckFilter
from txcmux.testing import split_at

from .fuzzing import frame, fuzz_settings, h2_frame

ACK = frame(4, 1, 0, b"")

#: Frames that look like the ACK but are not it: other flags set too are
#: still an ACK; a payload, another type or no ACK flag are not.
near_misses = st.sampled_from(
    [
        frame(4, 0, 0, b""),
        frame(4, 1, 0, b"\x00\x03\x00\x00\x00\x64"),
        frame(6, 1, 0, b"\x00" * 8),
        frame(4, 0, 1, b""),
    ]
)
acks = st.sampled_from([ACK, frame(4, 0xFF, 0, b""), frame(4, 1, 5, b"")])
frames = st.lists(st.one_of(h2_frame(), near_misses, acks), max_size=16)


def _is_ack(raw: bytes) -> bool:
    return raw[3] == 4 and raw[4] & 1 == 1 and raw[:3] == b"\x00\x00\x00"


def _feed(pieces: list[bytes]) -> tuple[bytes, bool]:
    strip = SettingsAckFilter()
    out = b"".join(strip.feed(piece) for piece in pieces)
    return out, strip.done


@fuzz_settings(500)
@given(frames=frames, cuts=st.lists(st.integers(0, 2000), max_size=20))
def test_exactly_the_first_ack_is_removed_whatever_the_split(
    frames: list[bytes], cuts: list[int]
) -> None:
    stream = PREFACE + b"".join(frames)
    first = next((i for i, raw in enumerate(frames) if _is_ack(raw)), None)
    expected = (
        stream
        if first is None
        else PREFACE + b"".join(frames[:first] + frames[first + 1 :])
    )
    out, done = _feed(split_at(stream, *cuts))
    assert out == expected
    assert done == (first is not None)
    assert _feed([stream]) == (out, done)
    assert _feed([stream[i : i + 1] for i in range(len(stream))]) == (out, done)


@fuzz_settings(200)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_a_stream_without_the_preface_passes_untouched(
    data: bytes, cuts: list[int]
) -> None:
    if data.startswith(PREFACE[: len(data)]):
        data = b"X" + data  # not a prefix of the preface
    out, done = _feed(split_at(data, *cuts))
    assert out == data
    assert done or not data


@fuzz_settings(200)
@given(
    frames=frames,
    tail=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_bytes_after_the_ack_pass_untouched(
    frames: list[bytes], tail: bytes, cuts: list[int]
) -> None:
    # Once the ACK is removed the filter is done; garbage after it is the
    # target's business.
    plain = [raw for raw in frames if not _is_ack(raw)]
    stream = PREFACE + b"".join(plain) + ACK + tail
    out, done = _feed(split_at(stream, *cuts))
    assert out == PREFACE + b"".join(plain) + tail
    assert done


@fuzz_settings(300)
@given(
    frames=frames,
    partial=st.binary(min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_a_frame_header_cut_by_the_end_of_the_stream_is_given_back(
    frames: list[bytes], partial: bytes, cuts: list[int]
) -> None:
    # The filter holds a frame header back until its nine bytes are in; when
    # the client closes its side first, flush() gives the bytes back (they
    # were lost before).
    stream = PREFACE + b"".join(frames) + partial
    first = next((i for i, raw in enumerate(frames) if _is_ack(raw)), None)
    kept = frames if first is None else frames[:first] + frames[first + 1 :]
    strip = SettingsAckFilter()
    out = b"".join(strip.feed(piece) for piece in split_at(stream, *cuts))
    if first is not None:
        assert strip.done
        assert out == PREFACE + b"".join(kept) + partial
    else:
        assert out + strip.flush() == stream
    assert strip.flush() == b""
