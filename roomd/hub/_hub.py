"""The hub: connections to this node, by session, by user and by room.

Pure bookkeeping and fan-out: no I/O and no tasks. Fan-out writes into each connection's bounded
outbox and never blocks, so a room needs no task of its own (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..protocol import PushTemplate
from ._connection import NO_ROOMS, Connection, RoomKey


class Hub:
    """Local connections and rooms of one node.

    Invariants: an added connection is in ``users[conn.user]``; ``rooms[key][user]`` holds the
    user's connections in that room and is never empty; ``conn.rooms`` mirrors it.
    A user's connections are kept in a list, not a set: there are few of them, and a list of
    one costs a quarter of a set's memory (it counts, with thousands of idle connections).
    """

    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}  # by session id
        self.users: dict[str, list[Connection]] = {}
        self.rooms: dict[RoomKey, dict[str, list[Connection]]] = {}

    # Membership --------------------------------------------------------------------------------

    def add(self, conn: Connection) -> int:
        """Register an open connection; how many connections its user now has here."""
        self.connections[conn.id] = conn
        conns = self.users.setdefault(conn.user, [])
        if conn not in conns:
            conns.append(conn)
        return len(conns)

    def remove(self, conn: Connection) -> tuple[int, list[RoomKey]]:
        """Forget a connection: how many connections its user has left here, and the rooms the
        user has left entirely because of it."""
        if self.connections.get(conn.id) is not conn:  # never added, or replaced (resumed)
            return len(self.users.get(conn.user, ())), []
        del self.connections[conn.id]
        left = [key for key in list(conn.rooms) if self.leave(conn, key)]
        conns = self.users.get(conn.user)
        remaining = 0
        if conns is not None:
            if conn in conns:
                conns.remove(conn)
            remaining = len(conns)
            if not conns:
                del self.users[conn.user]
        return remaining, left

    def replace(self, old: Connection, new: Connection) -> None:
        """``new`` takes ``old``'s place (a resumed session): its session id, its user's
        connection, its rooms. Nothing changes for the user's presence."""
        self.connections.pop(old.id, None)
        self.connections[new.id] = new
        conns = self.users.setdefault(new.user, [])
        if old in conns:
            conns[conns.index(old)] = new
        elif new not in conns:
            conns.append(new)
        for key in old.rooms:
            room = self.rooms.get(key, {}).get(new.user)
            if room is not None and old in room:
                room[room.index(old)] = new
        new.rooms = old.rooms
        old.rooms = NO_ROOMS

    def join(self, conn: Connection, key: RoomKey) -> bool:
        """Put ``conn`` in room ``key``; ``True`` if its user was not in the room before."""
        members = self.rooms.setdefault(key, {})
        conns = members.setdefault(conn.user, [])
        first = not conns
        if conn not in conns:
            conns.append(conn)
        if conn.rooms is NO_ROOMS:
            conn.rooms = set()
        conn.rooms.add(key)
        return first

    def leave(self, conn: Connection, key: RoomKey) -> bool:
        """Take ``conn`` out of room ``key``; ``True`` if its user has now left the room."""
        if key in conn.rooms:
            conn.rooms.discard(key)
        members = self.rooms.get(key)
        if members is None or conn.user not in members:
            return False
        conns = members[conn.user]
        if conn in conns:
            conns.remove(conn)
        if conns:
            return False
        del members[conn.user]
        if not members:
            del self.rooms[key]
        return True

    # Queries -----------------------------------------------------------------------------------

    def member_count(self, key: RoomKey) -> int:
        return len(self.rooms.get(key, ()))

    def members(self, key: RoomKey) -> dict[str, list[Connection]]:
        return self.rooms.get(key, {})

    def room_connections(self, key: RoomKey) -> Iterator[Connection]:
        for conns in self.rooms.get(key, {}).values():
            yield from conns

    def user_connections(self, user: str) -> list[Connection]:
        return self.users.get(user, [])

    def users_connections(self, users: Iterable[str]) -> set[Connection]:
        found: set[Connection] = set()
        for user in users:
            found.update(self.users.get(user, ()))
        return found

    def rooms_connections(self, keys: Iterable[RoomKey]) -> set[Connection]:
        found: set[Connection] = set()
        for key in keys:
            found.update(self.room_connections(key))
        return found

    # Fan-out -----------------------------------------------------------------------------------

    @staticmethod
    def deliver(
        conns: Iterable[Connection], template: PushTemplate, exclude: Connection | None = None
    ) -> int:
        """Queue ``template`` for every connection but ``exclude``; how many accepted it."""
        delivered = 0
        for conn in conns:
            if conn is not exclude and conn.push(template):
                delivered += 1
        return delivered
