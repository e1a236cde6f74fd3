"""Where pushes go, and what this node tells the cluster about its presence.

The router sends a push to this node's connections (through the hub) and, through the cluster
layer, to the other nodes; what arrives from other nodes it delivers locally and never forwards
again (it is the cluster's :class:`~roomd.cluster.ClusterHost`). Membership changes go to the
presence view first (which answers with the effects to push) and then to the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..cluster import (
    ClusterLink,
    ClusterView,
    Delta,
    Effect,
    Entry,
    Joined,
    Left,
    MemberJoined,
    MemberLeft,
    Online,
    Position,
    Status,
    StatusChanged,
    StreamKey,
    UserOffline,
    UserOnline,
    room_of,
    room_stream,
    user_of,
    user_stream,
    with_position,
)
from ..hub import Connection, Hub, RoomKey
from ..protocol import Push, PushTemplate
from ._ids import new_message_id

Done = Callable[[Position | None], None]


class _Countdown:
    """Calls ``done`` once every part is done, with the first part's position (``None`` if any
    part failed)."""

    def __init__(self, parts: int, done: Done | None) -> None:
        self._left = parts
        self._done = done
        self._first: Position | None = None
        self._failed = False

    def part(self, index: int) -> Done | None:
        if self._done is None:
            return None

        def finished(position: Position | None) -> None:
            if index == 0:
                self._first = position
            self._failed = self._failed or position is None
            self._left -= 1
            if self._left == 0 and self._done is not None:
                self._done(None if self._failed else self._first)

        return finished


class Router:
    """Pushes and presence of one node; the cluster layer's host.

    ``cluster`` is attached once the cluster layer exists (it needs the router as its host).
    """

    def __init__(
        self,
        hub: Hub,
        view: ClusterView,
        load: Callable[[], dict[str, Any]],
        announce_members_up_to: int = 0,
    ) -> None:
        self.hub = hub
        self.view = view
        self.load = load
        self.announce_members_up_to = announce_members_up_to  # (see _announced)
        self.cluster: ClusterLink | None = None
        self.on_presence: Callable[[], None] | None = None  # a user came online or went

    def attach(self, cluster: ClusterLink) -> None:
        self.cluster = cluster

    @property
    def _cluster(self) -> ClusterLink:
        assert self.cluster is not None, "Router.attach() first"
        return self.cluster

    # Everywhere --------------------------------------------------------------------------------

    def route_room(
        self,
        key: RoomKey,
        template: PushTemplate,
        *,
        message_id: str | None = None,
        exclude: Connection | None = None,
        skip_user: str | None = None,
        done: Done | None = None,
    ) -> None:
        """Deliver to a room's members everywhere. A reliable push is appended to the room's
        stream (``done(position)`` once numbered; ``None`` if that failed); a volatile one is
        sent as it is, to whoever is there."""
        if template.volatile:
            self._cluster.publish_room(key, template, skip_user)
            self.deliver_room(key, template, skip_user, exclude)
            if done is not None:
                done(None)
            return
        self._cluster.streams.append(
            room_stream(*key),
            template.body,
            message_id or new_message_id(),
            skip_user=skip_user,
            except_session=exclude.id if exclude is not None else None,
            done=done,
        )

    def route_users(
        self,
        users: list[str],
        template: PushTemplate,
        *,
        message_id: str | None = None,
        sender: Connection | None = None,
        done: Done | None = None,
    ) -> None:
        """Deliver to ``users`` everywhere; the sender's other connections get a copy too. A
        reliable push is appended to each user's inbox stream (the sender's too, when it has
        other connections); ``done`` gets the position in the first addressee's inbox once
        every inbox has numbered it."""
        targets = set(users)
        if sender is not None and self.view.connections_of(sender.user) > 1:
            targets.add(sender.user)
        if template.volatile:
            self._cluster.publish_users(targets, template)
            self.hub.deliver(self.hub.users_connections(targets), template, exclude=sender)
            if done is not None:
                done(None)
            return
        message_id = message_id or new_message_id()
        ordered = [*users, *sorted(targets - set(users))]
        countdown = _Countdown(len(ordered), done)
        for index, user in enumerate(ordered):
            self._cluster.streams.append(
                user_stream(user),
                template.body,
                message_id,
                except_session=sender.id if sender is not None and user == sender.user else None,
                done=countdown.part(index),
            )

    def route_all(self, template: PushTemplate, exclude: Connection | None = None) -> int:
        """To every connection everywhere (not a stream: never replayed)."""
        self._cluster.publish_all(template)
        return self.deliver_all(template, exclude)

    # Here only (the ClusterHost side) ------------------------------------------------------------

    def deliver_room(
        self,
        key: RoomKey,
        template: PushTemplate,
        skip_user: str | None = None,
        exclude: Connection | None = None,
    ) -> int:
        delivered = 0
        for user, conns in list(self.hub.members(key).items()):
            if user != skip_user:
                delivered += self.hub.deliver(list(conns), template, exclude)
        return delivered

    def deliver_entry(self, stream: StreamKey, entry: Entry) -> int:
        """A numbered message of a stream, to its readers here: a room's members or a user's
        connections (each stamped with the message's position). Nothing is built for a stream
        with no reader here (a sequencer often has none)."""
        room = room_of(stream)
        user = user_of(stream) if room is None else None
        if not (
            self.hub.members(room) if room is not None else self.hub.user_connections(user or "")
        ):
            return 0
        template = PushTemplate(
            with_position(entry.body, entry.epoch, entry.offset),
            stream=stream,
            offset=entry.offset,
        )
        excluded = self.hub.connections.get(entry.except_session) if entry.except_session else None
        if room is not None:
            return self.deliver_room(room, template, entry.skip_user, excluded)
        return self.hub.deliver(self.hub.user_connections(user or ""), template, excluded)

    def deliver_users(self, users: list[str], template: PushTemplate) -> int:
        return self.hub.deliver(self.hub.users_connections(users), template)

    def deliver_all(self, template: PushTemplate, exclude: Connection | None = None) -> int:
        return self.hub.deliver(list(self.hub.connections.values()), template, exclude)

    def hosted_users(self) -> list[str]:
        return list(self.hub.users)

    def apply_effects(self, effects: list[Effect]) -> None:
        """Push what changed cluster-wide to the local connections concerned."""
        for effect in effects:
            if isinstance(effect, MemberJoined | MemberLeft):
                if not self._announced(effect.key):
                    continue
                event = "room.joined" if isinstance(effect, MemberJoined) else "room.left"
                ns, room = effect.key
                member = {"ns": ns, "room": room, "user": effect.user}
                self.deliver_room(effect.key, PushTemplate.of(Push(event, member)), effect.user)
            elif isinstance(effect, UserOnline | UserOffline):
                if self.on_presence is not None:
                    self.on_presence()
            elif isinstance(effect, StatusChanged):
                status = {"user": effect.user, "status": effect.status, "text": effect.text}
                template = PushTemplate.of(Push("status", status))
                conns = self.hub.rooms_connections(self.view.rooms_of(effect.user))
                conns.update(self.hub.user_connections(effect.user))
                self.hub.deliver(conns, template)

    def _announced(self, key: RoomKey) -> bool:
        """Whether joins and leaves in room ``key`` are pushed to its members: in a room of at
        most ``announce_members_up_to`` users (counted after the change), as in a chat room;
        not in a larger one, where a push per member per change costs the square of its size
        (a node of a 5,000-user room declared down would push a million ``room.left``). Its
        members ask for ``room.members`` instead."""
        limit = self.announce_members_up_to
        return not limit or len(self.view.room_users.get(key, ())) <= limit

    # Presence ----------------------------------------------------------------------------------

    def opened(self, conn: Connection) -> None:
        """``conn`` completed its handshake: it counts among its user's connections."""
        self._change(Online(conn.user, self.hub.add(conn)))

    def closed(self, conn: Connection, was_open: bool) -> None:
        """``conn``'s session is over: out of its rooms, and out of its user's connections
        (nothing to do for a connection whose session another one took over)."""
        if self.hub.connections.get(conn.id) is not conn:
            return
        remaining, left = self.hub.remove(conn)
        for key in left:
            self._left_room(conn.user, key)
        if was_open:
            self._change(Online(conn.user, remaining))
        if not remaining:
            self._cluster.streams.forget(user_stream(conn.user))

    def join(self, conn: Connection, key: RoomKey) -> None:
        if self.hub.join(conn, key):
            self._change(Joined(key[0], key[1], conn.user))

    def leave(self, conn: Connection, key: RoomKey) -> None:
        if self.hub.leave(conn, key):
            self._left_room(conn.user, key)

    def _left_room(self, user: str, key: RoomKey) -> None:
        self._change(Left(key[0], key[1], user))
        if not self.hub.member_count(key):
            self._cluster.streams.forget(room_stream(*key))

    def set_status(self, user: str, status: str, text: str | None) -> None:
        self._change(Status(user, status, text, time.time()))

    def _change(self, delta: Delta) -> None:
        """A change of this node's presence: to the view (pushing its effects here), then to
        the other nodes."""
        seq, effects = self.view.apply_local(delta)
        self.apply_effects(effects)
        self._cluster.presence_changed(seq, delta)
