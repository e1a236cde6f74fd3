"""Bus messages of one round joined per topic (sans-I/O): ``_wire.coalesce`` and ``decode_all``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roomd.cluster import _wire
from roomd.cluster._dedup import Dedup

TOPICS = [
    _wire.node_topic("nodeB"),
    _wire.node_topic("nodeC"),
    _wire.room_topic("/", "lobby"),
    _wire.CONTROL,
    _wire.ALL,
]


def published(choices: list[tuple[int, int]]) -> list[bytes]:
    """Messages of node A, numbered in the order published, on the topics chosen."""
    return [
        _wire.encode(TOPICS[topic], _wire.Kind.ENTRY, "nodeA", 7, seq, ["s", b"x" * size])
        for seq, (topic, size) in enumerate(choices, start=1)
    ]


rounds = st.lists(st.tuples(st.integers(0, len(TOPICS) - 1), st.integers(0, 300)), max_size=60)


@given(rounds)
def test_a_round_coalesced_gives_back_every_message_in_its_topics_order(
    choices: list[tuple[int, int]],
) -> None:
    messages = published(choices)
    frames = _wire.coalesce(messages)
    got = [env for frame in frames for env in _wire.decode_all(frame)]
    assert sorted(env.seq for env in got) == list(range(1, len(messages) + 1))
    for topic in TOPICS:  # each topic's messages in the order published
        seqs = [env.seq for env in got if env.topic == topic]
        assert seqs == sorted(seqs)
    by_seq = {env.seq: env for env in got}
    for seq, message in enumerate(messages, start=1):
        original = _wire.decode(message)
        env = by_seq[seq]
        assert (env.topic, env.kind, env.node, env.epoch, env.body) == (
            original.topic,
            original.kind,
            original.node,
            original.epoch,
            original.body,
        )


@given(rounds)
def test_what_was_published_before_a_control_message_leaves_before_it(
    choices: list[tuple[int, int]],
) -> None:
    """A batch leaves where its first message was: a message may leave earlier than alone, never
    later, so everything published before a heartbeat is sent before it (its echo still means
    that they have left the process)."""
    messages = published(choices)
    frames = _wire.coalesce(messages)
    position = {env.seq: i for i, frame in enumerate(frames) for env in _wire.decode_all(frame)}
    control = [
        seq for seq, (topic, _) in enumerate(choices, start=1) if TOPICS[topic] == _wire.CONTROL
    ]
    for beat in control:
        assert all(position[seq] < position[beat] for seq in range(1, beat))
    dedup = Dedup()
    for frame in frames:
        envelopes = _wire.decode_all(frame)
        if len(envelopes) > 1:  # never control messages; stamped as the first
            assert envelopes[0].topic != _wire.CONTROL
            assert _wire.stamp(frame) == (b"nodeA", 7, envelopes[0].seq)
        assert dedup.first(frame)  # distinct for the broker pair's dedup


def test_a_burst_to_one_node_leaves_in_few_frames_and_large_messages_alone() -> None:
    burst = published([(0, 10)] * 600)
    frames = _wire.coalesce(burst)
    assert [len(_wire.decode_all(f)) for f in frames] == [256, 256, 88]
    assert _wire.coalesce(burst[:1]) == burst[:1]
    large = _wire.encode(TOPICS[0], _wire.Kind.ENTRY, "nodeA", 7, 9, b"x" * _wire.MAX_BATCHED)
    mixed = [burst[0], large, burst[1]]
    assert [len(_wire.decode_all(f)) for f in _wire.coalesce(mixed)] == [2, 1]
    beats = published([(3, 0)] * 3)  # the control topic: heartbeats stay single
    assert _wire.coalesce(beats) == beats


def test_a_batch_that_does_not_parse_is_a_bad_message() -> None:
    prefix = _wire.node_topic("nodeB") + _wire.origin_marker("nodeA")
    bad = prefix + _wire._packer.pack([_wire.Kind.BATCH, 7, 1, [["entry", 7]]])
    try:
        _wire.decode_all(bad)
    except _wire.BadMessage as exc:
        assert "batch" in str(exc)
    else:
        raise AssertionError("a malformed batch was accepted")
