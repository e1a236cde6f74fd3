"""The cluster view (sans-I/O): deltas, gaps, snapshots, epochs, expiry and effects."""

from __future__ import annotations

from roomd.cluster._view import (
    ClusterView,
    Joined,
    Left,
    MemberJoined,
    MemberLeft,
    Online,
    Status,
    StatusChanged,
    UserOffline,
    UserOnline,
    delta_from_wire,
    delta_to_wire,
)


def view() -> ClusterView:
    return ClusterView("a", epoch=1)


def test_local_changes_number_deltas_and_produce_effects() -> None:
    v = view()
    assert v.apply_local(Online("alice", 1)) == (1, [UserOnline("alice")])
    assert v.apply_local(Joined("/", "r", "alice")) == (2, [MemberJoined(("/", "r"), "alice")])
    assert v.apply_local(Online("alice", 2)) == (3, [])
    assert v.room_members(("/", "r")) == ["alice"] and v.online_users() == ["alice"]
    assert v.apply_local(Left("/", "r", "alice"))[1] == [MemberLeft(("/", "r"), "alice")]
    assert v.apply_local(Online("alice", 0))[1] == [UserOffline("alice")]
    assert v.online_users() == [] and v.room_users == {}


def test_remote_deltas_in_order_and_membership_across_nodes() -> None:
    v = view()
    v.apply_local(Joined("/", "r", "alice"))
    wants, _ = v.heartbeat("b", 7, 0, now=0.0, info={})
    assert wants  # a new node: fetch its state
    assert v.snapshot("b", 7, 0, {"users": {}, "rooms": [], "statuses": []}, now=0.0) == []
    assert v.delta("b", 7, 1, Joined("/", "r", "alice"), 0.1) == (False, [])  # already a member
    assert v.delta("b", 7, 2, Joined("/", "r", "bob"), 0.1) == (
        False,
        [MemberJoined(("/", "r"), "bob")],
    )
    assert v.nodes_in_room(("/", "r")) == ["a", "b"]
    assert v.delta("b", 7, 2, Joined("/", "r", "bob"), 0.1) == (False, [])  # duplicate


def test_gap_buffers_until_snapshot_then_applies_newer_deltas() -> None:
    v = view()
    v.heartbeat("b", 7, 0, 0.0, {})
    v.snapshot("b", 7, 0, {"users": {}, "rooms": [], "statuses": []}, 0.0)
    v.delta("b", 7, 1, Online("u1", 1), 0.1)
    wants, effects = v.delta("b", 7, 3, Online("u3", 1), 0.2)  # 2 is missing
    assert wants and effects == []
    assert v.delta("b", 7, 4, Online("u4", 1), 0.3) == (False, [])  # buffered, asked once
    assert v.online_users() == ["u1"]
    state = {"users": {"u1": 1, "u2": 1, "u3": 1}, "rooms": [], "statuses": []}
    effects = v.snapshot("b", 7, 3, state, 0.4)
    assert effects == [UserOnline("u2"), UserOnline("u3"), UserOnline("u4")]
    assert not v.nodes["b"].syncing and v.nodes["b"].seq == 4


def test_heartbeat_ahead_of_deltas_means_we_missed_some() -> None:
    v = view()
    v.heartbeat("b", 7, 0, 0.0, {})
    v.snapshot("b", 7, 0, {"users": {}, "rooms": [], "statuses": []}, 0.0)
    assert v.heartbeat("b", 7, 0, 0.5, {})[0] is False
    assert v.heartbeat("b", 7, 5, 1.0, {})[0] is True
    assert v.resync_due(1.2, retry=1.0) == []
    assert v.resync_due(2.5, retry=1.0) == ["b"]  # unanswered: ask again


def test_a_restart_clears_the_old_lifes_state_at_once() -> None:
    v = view()
    v.heartbeat("b", 7, 0, 0.0, {})
    state = {"users": {"bob": 1}, "rooms": [["/", "r", ["bob"]]], "statuses": []}
    v.snapshot("b", 7, 2, state, 0.0)
    # A new epoch: the old life's connections died with it.
    wants, effects = v.heartbeat("b", 8, 0, 1.0, {})
    assert wants and effects == [MemberLeft(("/", "r"), "bob"), UserOffline("bob")]
    assert v.room_members(("/", "r")) == [] and v.online_users() == []
    # The new life's snapshot: bob connected again (not in the room yet).
    effects = v.snapshot("b", 8, 1, {"users": {"bob": 1}, "rooms": [], "statuses": []}, 1.1)
    assert effects == [UserOnline("bob")]


def test_expired_and_departed_nodes_take_their_users() -> None:
    v = view()
    v.heartbeat("b", 7, 0, 0.0, {})
    v.snapshot(
        "b", 7, 0, {"users": {"bob": 1}, "rooms": [["/", "r", ["bob"]]], "statuses": []}, 0.0
    )
    v.heartbeat("c", 9, 0, 0.0, {})
    v.snapshot("c", 9, 0, {"users": {"carol": 1}, "rooms": [], "statuses": []}, 0.0)
    v.heartbeat("c", 9, 0, 2.5, {})
    dead, effects = v.expire(now=3.1, timeout=3.0)
    assert dead == ["b"]
    assert effects == [MemberLeft(("/", "r"), "bob"), UserOffline("bob")]
    assert v.bye("c") == [UserOffline("carol")]
    assert v.nodes_up() == ["a"]
    assert v.expire(now=100.0, timeout=3.0) == ([], [])  # never expires itself


def test_latest_status_wins_and_ends_with_presence() -> None:
    v = view()
    v.apply_local(Online("alice", 1))
    _, effects = v.apply_local(Status("alice", "away", "lunch", stamp=10.0))
    assert effects == [StatusChanged("alice", "away", "lunch")]
    v.heartbeat("b", 7, 0, 0.0, {})
    v.snapshot("b", 7, 0, {"users": {"alice": 1}, "rooms": [], "statuses": []}, 0.0)
    assert v.delta("b", 7, 1, Status("alice", "busy", None, stamp=5.0), 0.1)[1] == []  # older
    assert v.status_of("alice") == ("away", "lunch")
    _, effects = v.delta("b", 7, 2, Status("alice", "dnd", None, stamp=20.0), 0.2)
    assert effects == [StatusChanged("alice", "dnd", None)]
    v.delta("b", 7, 3, Online("alice", 0), 0.3)
    assert v.status_of("alice") == ("away", "lunch")


def test_deltas_round_trip_on_the_wire() -> None:
    for delta in (
        Online("u", 2),
        Joined("n", "r", "u"),
        Left("n", "r", "u"),
        Status("u", "s", None, 1.5),
    ):
        assert delta_from_wire(delta_to_wire(delta)) == delta
