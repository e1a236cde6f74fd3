"""Dropping the copies of bus messages that come through several brokers (sans-I/O)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from roomd.cluster import _wire
from roomd.cluster._dedup import MAX_ORIGINS, WINDOW, Dedup


def message(node: str, epoch: int, seq: int) -> bytes:
    return _wire.encode(_wire.room_topic("/", "r"), _wire.Kind.ROOM, node, epoch, seq, [b"x"])


def test_stamp_reads_origin_epoch_and_seq_without_decoding() -> None:
    for epoch in (0, 5, 200, 70_000, 2**40, 2**62 - 1):
        for seq in (0, 1, 127, 128, 65_536, 2**33):
            assert _wire.stamp(message("nodeA", epoch, seq)) == (b"nodeA", epoch, seq)
    assert _wire.stamp(b"no terminators") is None
    assert _wire.stamp(b"t\x00n\x00") is None
    assert _wire.stamp(b"t\x00n\x00\x94\xa2ab") is None  # cut short
    assert _wire.stamp(b"n\x00probe:1234") is None


def test_the_first_copy_passes_and_the_others_do_not() -> None:
    dedup = Dedup()
    assert dedup.first(message("a", 1, 1)) and not dedup.first(message("a", 1, 1))
    assert dedup.first(message("a", 2, 1))  # a new life of the same node
    assert dedup.first(message("b", 1, 1))  # another node
    assert dedup.first(message("a", 1, 5))
    assert dedup.first(message("a", 1, 3))  # late, but its first copy: passed on
    assert not dedup.first(message("a", 1, 3))
    assert dedup.first(message("a", 1, 5 + WINDOW))
    assert not dedup.first(message("a", 1, 4))  # further behind than the window: seen
    assert dedup.first(b"n\x00probe:1234") and dedup.first(b"n\x00probe:1234")


def test_memory_is_bounded() -> None:
    dedup = Dedup()
    for i in range(MAX_ORIGINS + 10):
        assert dedup.first_of(b"node%d" % i, 1, 1)
    assert len(dedup._seen) == MAX_ORIGINS


@given(st.lists(st.integers(0, WINDOW - 1), max_size=300), st.randoms(use_true_random=False))
def test_two_interleaved_copies_of_a_stream_give_each_message_once(
    seqs: list[int], rng: random.Random
) -> None:
    # Two brokers deliver the same numbered messages, each in order, interleaved anyhow (one
    # never more than the window behind the other); one of them lacks some. Every message
    # passes once, whichever copy comes first.
    numbers = sorted(set(seqs))
    lacking = set(numbers[::3])
    first = [n for n in numbers if n not in lacking]
    second = list(numbers)
    merged: list[int] = []
    while first or second:
        source = first if first and (not second or rng.random() < 0.5) else second
        merged.append(source.pop(0))
    dedup = Dedup()
    passed = [n for n in merged if dedup.first_of(b"a", 1, n)]
    assert sorted(passed) == numbers
