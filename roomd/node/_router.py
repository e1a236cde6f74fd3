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
    Joined,
    Left,
    MemberJoined,
    MemberLeft,
    Online,
    Status,
    StatusChanged,
)
from ..hub import Connection, Hub, RoomKey
from ..protocol import Push, PushTemplate


class Router:
    """Pushes and presence of one node; the cluster layer's host.

    ``cluster`` is attached once the cluster layer exists (it needs the router as its host).
    """

    def __init__(self, hub: Hub, view: ClusterView, load: Callable[[], dict[str, Any]]) -> None:
        self.hub = hub
        self.view = view
        self.load = load
        self.cluster: ClusterLink | None = None

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
        exclude: Connection | None = None,
        skip_user: str | None = None,
    ) -> int:
        """Deliver to a room's members here and publish to the other nodes; how many local
        connections took it."""
        self._cluster.publish_room(key, template, skip_user)
        return self.deliver_room(key, template, skip_user, exclude)

    def route_users(
        self, users: list[str], template: PushTemplate, sender: Connection | None = None
    ) -> int:
        """Deliver to ``users`` everywhere; the sender's other connections get a copy too."""
        targets = set(users)
        if sender is not None:
            targets.add(sender.user)
        self._cluster.publish_users(targets, template)
        conns = self.hub.users_connections(targets)
        return self.hub.deliver(conns, template, exclude=sender)

    def route_all(self, template: PushTemplate, exclude: Connection | None = None) -> int:
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

    def deliver_users(self, users: list[str], template: PushTemplate) -> int:
        return self.hub.deliver(self.hub.users_connections(users), template)

    def deliver_all(self, template: PushTemplate, exclude: Connection | None = None) -> int:
        return self.hub.deliver(list(self.hub.connections.values()), template, exclude)

    def apply_effects(self, effects: list[Effect]) -> None:
        """Push what changed cluster-wide to the local connections concerned."""
        for effect in effects:
            if isinstance(effect, MemberJoined | MemberLeft):
                event = "room.joined" if isinstance(effect, MemberJoined) else "room.left"
                ns, room = effect.key
                member = {"ns": ns, "room": room, "user": effect.user}
                self.deliver_room(effect.key, PushTemplate.of(Push(event, member)), effect.user)
            elif isinstance(effect, StatusChanged):
                status = {"user": effect.user, "status": effect.status, "text": effect.text}
                template = PushTemplate.of(Push("status", status))
                conns = self.hub.rooms_connections(self.view.rooms_of(effect.user))
                conns.update(self.hub.user_connections(effect.user))
                self.hub.deliver(conns, template)

    # Presence ----------------------------------------------------------------------------------

    def opened(self, conn: Connection) -> None:
        """``conn`` completed its handshake: it counts among its user's connections."""
        self._change(Online(conn.user, self.hub.add(conn)))

    def closed(self, conn: Connection, was_open: bool) -> None:
        """``conn`` is gone: out of its rooms, and out of its user's connections."""
        remaining, left = self.hub.remove(conn)
        for key in left:
            self._change(Left(key[0], key[1], conn.user))
        if was_open:
            self._change(Online(conn.user, remaining))

    def join(self, conn: Connection, key: RoomKey) -> None:
        if self.hub.join(conn, key):
            self._change(Joined(key[0], key[1], conn.user))

    def leave(self, conn: Connection, key: RoomKey) -> None:
        if self.hub.leave(conn, key):
            self._change(Left(key[0], key[1], conn.user))

    def set_status(self, user: str, status: str, text: str | None) -> None:
        self._change(Status(user, status, text, time.time()))

    def _change(self, delta: Delta) -> None:
        """A change of this node's presence: to the view (pushing its effects here), then to
        the other nodes."""
        seq, effects = self.view.apply_local(delta)
        self.apply_effects(effects)
        self._cluster.presence_changed(seq, delta)
