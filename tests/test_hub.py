"""The hub's bookkeeping: its invariants hold after any sequence of operations."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from roomd.hub import Connection, Hub, RateLimiter
from roomd.protocol import Push, PushTemplate, Session


class Outlet:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes, volatile: bool = False) -> bool:
        self.frames.append(frame)
        return True

    def close(self, code: int, reason: str | None = None, *, discard: bool = False) -> None:
        pass

    def spawn(self, fn: Any, *args: Any) -> None:
        raise AssertionError("no tasks in the hub")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connection(user: str) -> Connection:
    return Connection(Session(user), Outlet(), RateLimiter(1.0, 1, 0.0), 0.0)


def check_invariants(hub: Hub, everyone: list[Connection]) -> None:
    added = set(hub.connections.values())
    for user, conns in hub.users.items():
        assert conns, "a user without connections stays listed"
        assert len(set(conns)) == len(conns)
        assert all(c.user == user and c in added for c in conns)
    assert {c for conns in hub.users.values() for c in conns} == added
    for key, members in hub.rooms.items():
        assert members, f"empty room {key} kept"
        for user, conns in members.items():
            assert conns and all(c.user == user and key in c.rooms for c in conns)
    for conn in everyone:
        for key in conn.rooms:
            assert conn in hub.rooms[key][conn.user]
        if conn not in added:
            assert not conn.rooms, "a removed connection is in no room"


USERS = ["ann", "bob", "cy"]
ROOMS = [("/", "a"), ("/", "b"), ("x", "a")]
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "join", "leave"]),
        st.integers(0, 5),
        st.sampled_from(ROOMS),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(operations=OPERATIONS)
def test_invariants_hold_after_any_operations(
    operations: list[tuple[str, int, tuple[str, str]]],
) -> None:
    hub = Hub()
    everyone = [connection(USERS[i % len(USERS)]) for i in range(6)]
    for op, index, key in operations:
        conn = everyone[index]
        members_before = set(hub.members(key))
        if op == "add":
            count = hub.add(conn)
            assert count == len(hub.users[conn.user])
        elif op == "remove":
            had = conn in hub.connections.values()
            rooms = set(conn.rooms)
            remaining, left = hub.remove(conn)
            if had:
                assert set(left) <= rooms
                assert remaining == len(hub.users.get(conn.user, ()))
            for room in left:
                assert conn.user not in hub.members(room)
        elif op == "join" and conn in hub.connections.values():
            first = hub.join(conn, key)
            assert first == (conn.user not in members_before)
        elif op == "leave":
            gone = hub.leave(conn, key)
            assert gone == (conn.user in members_before and conn.user not in hub.members(key))
        check_invariants(hub, everyone)


def test_deliver_skips_the_excluded_and_counts_acceptances() -> None:
    hub = Hub()
    a, b, c = connection("ann"), connection("bob"), connection("cy")
    for conn in (a, b, c):
        hub.add(conn)
        hub.join(conn, ("/", "r"))
    template = PushTemplate.of(Push("message", {"text": "hi"}))
    assert hub.deliver(hub.room_connections(("/", "r")), template, exclude=b) == 2
    assert [len(x.outlet.frames) for x in (a, b, c)] == [1, 0, 1]  # type: ignore[attr-defined]
    assert a.session.seq == 1 and b.session.seq == 0
