"""The cluster view: which users are online where, who is in which room, which nodes are up.

Sans-I/O: it is fed what arrives on the bus (heartbeats, presence deltas, snapshots) with the
time it arrived, and answers with *effects* (a member joined a room, a user went offline...) for
the node to turn into pushes, and with the nodes whose state it must fetch again.

Every node publishes its own presence as numbered deltas (``seq`` 1, 2, 3 ... within an
``epoch``, a random number drawn at start). A receiver that sees a gap, or a new epoch, stops
applying that node's deltas, buffers them, and asks for a snapshot; the snapshot replaces the
node's state and the buffered deltas newer than it are applied (the Clone pattern of the ZeroMQ
Guide, chapter 5). The node's own state lives in the view too, so queries and effects are the
same for local and remote members.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, Final

import attrs

RoomKey = tuple[str, str]

MAX_BUFFERED_DELTAS: Final = 10_000


# Deltas: what one node says about itself ---------------------------------------------------------


@attrs.frozen
class Online:
    """``user`` now has ``count`` connections on the node (0: none)."""

    user: str
    count: int


@attrs.frozen
class Joined:
    ns: str
    room: str
    user: str


@attrs.frozen
class Left:
    ns: str
    room: str
    user: str


@attrs.frozen
class Status:
    user: str
    status: str
    text: str | None
    stamp: float  # wall-clock time it was set: the latest setting wins across nodes


Delta = Online | Joined | Left | Status

DELTA_TAGS: Final[dict[type[Any], str]] = {Online: "on", Joined: "j", Left: "l", Status: "st"}
DELTA_TYPES: Final = {tag: cls for cls, tag in DELTA_TAGS.items()}


def delta_to_wire(delta: Delta) -> list[Any]:
    return [DELTA_TAGS[type(delta)], *attrs.astuple(delta)]


def delta_from_wire(data: list[Any]) -> Delta:
    cls = DELTA_TYPES[data[0]]
    return cls(*data[1:])  # type: ignore[no-any-return]


# Effects: what changed cluster-wide --------------------------------------------------------------


@attrs.frozen
class MemberJoined:
    key: RoomKey
    user: str


@attrs.frozen
class MemberLeft:
    key: RoomKey
    user: str


@attrs.frozen
class UserOnline:
    user: str


@attrs.frozen
class UserOffline:
    user: str


@attrs.frozen
class StatusChanged:
    user: str
    status: str
    text: str | None


Effect = MemberJoined | MemberLeft | UserOnline | UserOffline | StatusChanged


# Per-node state ----------------------------------------------------------------------------------


@attrs.define
class NodeState:
    """What the view knows of one node."""

    name: str
    epoch: int = 0
    seq: int = 0  # last delta applied
    last_seen: float = 0.0
    status: str = "up"  # up | draining | down
    info: dict[str, Any] = attrs.field(factory=dict)  # load, url ... from heartbeats
    users: dict[str, int] = attrs.field(factory=dict)
    rooms: dict[RoomKey, set[str]] = attrs.field(factory=dict)
    statuses: dict[str, Status] = attrs.field(factory=dict)
    syncing: bool = False  # waiting for a snapshot
    sync_asked: float | None = None  # when the snapshot was last asked for
    buffer: list[tuple[int, Delta]] = attrs.field(factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "users": dict(self.users),
            "rooms": [[ns, room, sorted(users)] for (ns, room), users in self.rooms.items()],
            "statuses": [delta_to_wire(s) for s in self.statuses.values()],
        }


class ClusterView:
    """Presence and membership of the whole cluster, as seen from node ``self_name``."""

    def __init__(self, self_name: str, epoch: int) -> None:
        self.self_name = self_name
        self.nodes: dict[str, NodeState] = {self_name: NodeState(self_name, epoch=epoch)}
        # Aggregates over all nodes. (Who is online is not aggregated: a user's connections are
        # summed over the nodes when needed, which saves an entry per user on every node.)
        self.room_users: dict[RoomKey, collections.Counter[str]] = {}
        self.version = 0  # counts changes of the nodes known and of their status
        self.statuses: dict[str, Status] = {}

    @property
    def own(self) -> NodeState:
        return self.nodes[self.self_name]

    # Queries -------------------------------------------------------------------------------------

    def online_users(self) -> list[str]:
        return sorted(set().union(*(n.users for n in self.nodes.values())))

    def online_count(self) -> int:
        return len(set().union(*(n.users for n in self.nodes.values())))

    def connections_of(self, user: str) -> int:
        """The user's connections on every node (asked for every direct message's sender)."""
        count = 0
        for node in self.nodes.values():  # (a loop: a generator costs four times as much)
            count += node.users.get(user, 0)
        return count

    def remote_hosts(self, users: Iterable[str]) -> dict[str, list[str]]:
        """The other nodes where any of ``users`` is connected, and which of them."""
        hosts: dict[str, list[str]] = {}
        for node in self.nodes.values():
            connected = node.users
            if connected and node.name != self.self_name:
                for user in users:
                    if user in connected:
                        if node.name in hosts:
                            hosts[node.name].append(user)
                        else:
                            hosts[node.name] = [user]
        return hosts

    def room_members(self, key: RoomKey) -> list[str]:
        return sorted(self.room_users.get(key, ()))

    def status_of(self, user: str) -> tuple[str, str | None]:
        status = self.statuses.get(user)
        return ("online", None) if status is None else (status.status, status.text)

    def rooms_of(self, user: str) -> list[RoomKey]:
        return [key for key, users in self.room_users.items() if user in users]

    def nodes_up(self) -> list[str]:
        return sorted(n.name for n in self.nodes.values() if n.status != "down")

    def nodes_in_room(self, key: RoomKey) -> list[str]:
        return sorted(n.name for n in self.nodes.values() if key in n.rooms)

    # Local changes -------------------------------------------------------------------------------

    def apply_local(self, delta: Delta) -> tuple[int, list[Effect]]:
        """Apply a change of this node's own state; its sequence number and the effects."""
        own = self.own
        own.seq += 1
        return own.seq, self._apply(own, delta)

    # Remote input --------------------------------------------------------------------------------

    def heartbeat(
        self, name: str, epoch: int, seq: int, now: float, info: dict[str, Any]
    ) -> tuple[bool, list[Effect]]:
        """A node's heartbeat; whether its state must be fetched, and effects of a restart."""
        node, effects = self._node(name, epoch, now)
        node.info = info
        status = info.get("status", "up")
        if status != node.status:
            node.status = status
            self.version += 1
        if not node.syncing and seq > node.seq:
            _start_sync(node)  # we missed its latest deltas
        return self._wants_snapshot(node, now), effects

    def delta(
        self, name: str, epoch: int, seq: int, delta: Delta, now: float
    ) -> tuple[bool, list[Effect]]:
        """A node's presence delta; whether its state must be fetched, and the effects."""
        node, effects = self._node(name, epoch, now)
        if node.syncing:
            if len(node.buffer) < MAX_BUFFERED_DELTAS:
                node.buffer.append((seq, delta))
            return self._wants_snapshot(node, now), effects
        if seq <= node.seq:
            return False, effects  # a duplicate or an old one
        if seq != node.seq + 1:
            _start_sync(node)
            node.buffer.append((seq, delta))
            return self._wants_snapshot(node, now), effects
        node.seq = seq
        effects += self._apply(node, delta)
        return False, effects

    def snapshot(
        self, name: str, epoch: int, seq: int, state: dict[str, Any], now: float
    ) -> list[Effect]:
        """Replace a node's state with its snapshot, then apply the newer buffered deltas."""
        node, effects = self._node(name, epoch, now)
        if epoch != node.epoch:
            return effects
        statuses_before = dict(self.statuses)
        effects += self._clear(node)
        for user, count in state["users"].items():
            effects += self._apply(node, Online(user, count))
        for ns, room, users in state["rooms"]:
            for user in users:
                effects += self._apply(node, Joined(ns, room, user))
        for wire in state["statuses"]:
            status = delta_from_wire(wire)
            effects += self._apply(node, status)
        node.seq = seq
        node.syncing = False
        pending = sorted(b for b in node.buffer if b[0] > seq)
        node.buffer.clear()
        for delta_seq, delta in pending:
            if delta_seq != node.seq + 1:
                _start_sync(node)  # still a hole: ask again
                node.buffer = [(s, d) for s, d in pending if s >= delta_seq]
                break
            node.seq = delta_seq
            effects += self._apply(node, delta)
        return [
            e
            for e in _net(effects)
            if not (
                isinstance(e, StatusChanged)
                and self.statuses.get(e.user) == statuses_before.get(e.user)
            )
        ]

    def bye(self, name: str) -> list[Effect]:
        """A node announced it is leaving: forget it at once."""
        return self.remove(name)

    def touch_all(self, now: float) -> None:
        """Count every node as heard from now: this node could not listen for a while (it was
        frozen, or its bus was down), so their silence meanwhile says nothing about them."""
        for node in self.nodes.values():
            node.last_seen = max(node.last_seen, now)

    def expire(self, now: float, timeout: float) -> tuple[list[str], list[Effect]]:
        """Declare nodes silent for ``timeout`` down; their names and the effects."""
        dead = [
            n.name
            for n in self.nodes.values()
            if n.name != self.self_name and now - n.last_seen > timeout
        ]
        effects: list[Effect] = []
        for name in dead:
            effects += self.remove(name)
        return dead, effects

    def remove(self, name: str) -> list[Effect]:
        node = self.nodes.get(name)
        if node is None or name == self.self_name:
            return []
        effects = self._clear(node)  # while it still counts in the totals
        del self.nodes[name]
        self.version += 1
        return effects

    def resync_due(self, now: float, retry: float) -> list[str]:
        """Nodes whose snapshot was asked for more than ``retry`` seconds ago without answer."""
        due = []
        for node in self.nodes.values():
            if node.syncing and (node.sync_asked is None or now - node.sync_asked > retry):
                node.sync_asked = now
                due.append(node.name)
        return due

    # Internals -----------------------------------------------------------------------------------

    def _node(self, name: str, epoch: int, now: float) -> tuple[NodeState, list[Effect]]:
        node = self.nodes.get(name)
        effects: list[Effect] = []
        if node is None:
            node = self.nodes[name] = NodeState(name, epoch=epoch)
            self.version += 1
            _start_sync(node)
        elif node.epoch != epoch:
            # Restarted: its old life's connections are gone with it; its new state comes with
            # its snapshot.
            effects += self._clear(node)
            node.epoch, node.seq = epoch, 0
            node.buffer.clear()
            _start_sync(node)
        node.last_seen = now
        return node, effects

    def _wants_snapshot(self, node: NodeState, now: float) -> bool:
        """Whether to ask for a snapshot now (once per sync; retries: :meth:`resync_due`)."""
        if node.syncing and node.sync_asked is None:
            node.sync_asked = now
            return True
        return False

    def _clear(self, node: NodeState) -> list[Effect]:
        effects: list[Effect] = []
        for key, users in list(node.rooms.items()):
            for user in list(users):
                effects += self._apply(node, Left(key[0], key[1], user))
        for user in list(node.users):
            effects += self._apply(node, Online(user, 0))
        for user in list(node.statuses):
            del node.statuses[user]
            self._recompute_status(user, effects)
        return effects

    def _apply(self, node: NodeState, delta: Delta) -> list[Effect]:
        effects: list[Effect] = []
        if isinstance(delta, Online):
            user = delta.user
            was_here = user in node.users
            if delta.count > 0:
                node.users[user] = delta.count
            else:
                node.users.pop(user, None)
                if node.statuses.pop(user, None) is not None:  # status ends with presence
                    self._recompute_status(user, effects)
            # Online or offline cluster-wide when the first connection anywhere opens, or the
            # last one closes.
            if was_here != (delta.count > 0) and not self._connected_elsewhere(user, node):
                effects.append(UserOnline(user) if delta.count > 0 else UserOffline(user))
        elif isinstance(delta, Joined):
            key = (delta.ns, delta.room)
            users = node.rooms.setdefault(key, set())
            if delta.user not in users:
                users.add(delta.user)
                counter = self.room_users.setdefault(key, collections.Counter())
                counter[delta.user] += 1
                if counter[delta.user] == 1:
                    effects.append(MemberJoined(key, delta.user))
        elif isinstance(delta, Left):
            key = (delta.ns, delta.room)
            users = node.rooms.get(key, set())
            if delta.user in users:
                users.discard(delta.user)
                if not users:
                    del node.rooms[key]
                counter = self.room_users[key]
                counter[delta.user] -= 1
                if counter[delta.user] <= 0:
                    del counter[delta.user]
                    if not counter:
                        del self.room_users[key]
                    effects.append(MemberLeft(key, delta.user))
        else:
            node.statuses[delta.user] = delta
            self._recompute_status(delta.user, effects)
        return effects

    def _connected_elsewhere(self, user: str, node: NodeState) -> bool:
        for other in self.nodes.values():  # noqa: SIM110 (a generator costs four times as much)
            if other is not node and user in other.users:
                return True
        return False

    def _recompute_status(self, user: str, effects: list[Effect]) -> None:
        candidates = [n.statuses[user] for n in self.nodes.values() if user in n.statuses]
        best = max(candidates, key=lambda s: s.stamp, default=None)
        before = self.statuses.get(user)
        if best is None:
            self.statuses.pop(user, None)
        else:
            self.statuses[user] = best
        if best is not None and (
            before is None or (before.status, before.text) != (best.status, best.text)
        ):
            effects.append(StatusChanged(user, best.status, best.text))


def _start_sync(node: NodeState) -> None:
    node.syncing = True
    node.sync_asked = None


def _net(effects: Iterable[Effect]) -> list[Effect]:
    """Cancel out pairs that undo each other (left then joined again within one snapshot)."""
    result: list[Effect] = []
    for effect in effects:
        undo: Effect | None = None
        if isinstance(effect, MemberJoined):
            undo = MemberLeft(effect.key, effect.user)
        elif isinstance(effect, UserOnline):
            undo = UserOffline(effect.user)
        if undo is not None and undo in result:
            result.remove(undo)
            continue
        result.append(effect)
    return result
