"""The hub: clients connected to this node, by session, by user and by room.

Pure bookkeeping and fan-out: no I/O and no tasks. Fan-out writes into each client's bounded
outbox and never blocks, so a room needs no task of its own (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..protocol import PushTemplate
from ._client import NO_ROOMS, Client, RoomKey


class Hub:
    """Local clients and rooms of one node.

    Invariants: a client is in ``users[client.user]`` once it is added; ``rooms[key][user]``
    holds the user's clients in that room and is never empty; ``client.rooms`` mirrors it.
    A user's connections are kept in a list, not a set: there are few of them, and a list of
    one costs a quarter of a set's memory (it counts, with thousands of idle connections).
    """

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.users: dict[str, list[Client]] = {}
        self.rooms: dict[RoomKey, dict[str, list[Client]]] = {}

    # Membership --------------------------------------------------------------------------------

    def add(self, client: Client) -> int:
        """Register an open client; how many connections its user now has here."""
        self.clients[client.id] = client
        conns = self.users.setdefault(client.user, [])
        if client not in conns:
            conns.append(client)
        return len(conns)

    def remove(self, client: Client) -> tuple[int, list[RoomKey]]:
        """Forget a client: how many connections its user has left here, and the rooms the
        user has left entirely because of it."""
        if self.clients.pop(client.id, None) is None:
            return len(self.users.get(client.user, ())), []
        left = [key for key in list(client.rooms) if self.leave(client, key)]
        conns = self.users.get(client.user)
        remaining = 0
        if conns is not None:
            if client in conns:
                conns.remove(client)
            remaining = len(conns)
            if not conns:
                del self.users[client.user]
        return remaining, left

    def join(self, client: Client, key: RoomKey) -> bool:
        """Put ``client`` in room ``key``; ``True`` if its user was not in the room before."""
        members = self.rooms.setdefault(key, {})
        conns = members.setdefault(client.user, [])
        first = not conns
        if client not in conns:
            conns.append(client)
        if client.rooms is NO_ROOMS:
            client.rooms = set()
        client.rooms.add(key)
        return first

    def leave(self, client: Client, key: RoomKey) -> bool:
        """Take ``client`` out of room ``key``; ``True`` if its user has now left the room."""
        if key in client.rooms:
            client.rooms.discard(key)
        members = self.rooms.get(key)
        if members is None or client.user not in members:
            return False
        conns = members[client.user]
        if client in conns:
            conns.remove(client)
        if conns:
            return False
        del members[client.user]
        if not members:
            del self.rooms[key]
        return True

    # Queries -----------------------------------------------------------------------------------

    def member_count(self, key: RoomKey) -> int:
        return len(self.rooms.get(key, ()))

    def members(self, key: RoomKey) -> dict[str, list[Client]]:
        return self.rooms.get(key, {})

    def room_clients(self, key: RoomKey) -> Iterator[Client]:
        for conns in self.rooms.get(key, {}).values():
            yield from conns

    def user_clients(self, user: str) -> list[Client]:
        return self.users.get(user, [])

    def users_clients(self, users: Iterable[str]) -> set[Client]:
        found: set[Client] = set()
        for user in users:
            found.update(self.users.get(user, ()))
        return found

    def rooms_clients(self, keys: Iterable[RoomKey]) -> set[Client]:
        found: set[Client] = set()
        for key in keys:
            found.update(self.room_clients(key))
        return found

    def open_clients(self) -> Iterator[Client]:
        return iter(list(self.clients.values()))

    # Fan-out -----------------------------------------------------------------------------------

    @staticmethod
    def deliver(
        clients: Iterable[Client], template: PushTemplate, exclude: Client | None = None
    ) -> int:
        """Queue ``template`` for every client but ``exclude``; how many accepted it."""
        delivered = 0
        for client in clients:
            if client is not exclude and client.push(template):
                delivered += 1
        return delivered
