"""The two faces of the cluster layer: what it needs of its node, and what it offers it.

The cluster layer never imports the node: a node hands it a :class:`ClusterHost` (local
deliveries, presence effects, its load) and plain values, and uses it through
:class:`ClusterLink`, which both a real :class:`~roomd.cluster.Cluster` and the single-node
:class:`~roomd.cluster.SingleNode` implement.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import trio

from ..protocol import PushTemplate
from ._calls import Calls
from ._streaming import StreamService
from ._streams import Entry, StreamKey
from ._view import Delta, Effect, RoomKey


class ClusterHost(Protocol):
    """What the cluster layer asks of the node it serves. Deliveries are to this node's own
    connections only (what arrives from the bus is never forwarded again); each returns how
    many connections took the push."""

    def deliver_room(self, key: RoomKey, template: PushTemplate, skip_user: str | None) -> int:
        """To the room's members here, except ``skip_user``'s connections."""
        ...

    def deliver_users(self, users: list[str], template: PushTemplate) -> int:
        """To every connection here of each of ``users``."""
        ...

    def deliver_all(self, template: PushTemplate) -> int:
        """To every connection here."""
        ...

    def deliver_entry(self, stream: StreamKey, entry: Entry) -> int:
        """A numbered message of a room's or a user's stream, to its readers here."""
        ...

    def apply_effects(self, effects: list[Effect]) -> None:
        """Tell the local connections concerned what changed cluster-wide (joins, leaves,
        statuses)."""
        ...

    def hosted_users(self) -> list[str]:
        """The users with a session here (attached or detached): their inboxes are read here."""
        ...

    def load(self) -> dict[str, Any]:
        """What this node tells the others about itself in its heartbeats (status, url,
        connections, users, rooms)."""
        ...


class ClusterLink(Protocol):
    """What a node uses of its cluster layer."""

    mode: str  # "none", "broker" or "mesh"
    calls: Calls
    streams: StreamService

    @property
    def bus_live(self) -> bool: ...

    async def wait_synced(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the node hears the cluster and has caught
        up what it missed while it could not. Whether it has."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster (started once the node may serve) and stay until cancelled."""
        ...

    async def leave(self) -> None:
        """Say goodbye; nothing is published after it."""
        ...

    def drain(self) -> None:
        """The node drains: it hands its streams over (and says so at once)."""
        ...

    def publish_room(self, key: RoomKey, template: PushTemplate, skip_user: str | None) -> None:
        """A push to a room's members on the other nodes."""
        ...

    def publish_users(self, users: Iterable[str], template: PushTemplate) -> None:
        """A push to ``users`` on the other nodes where they are connected."""
        ...

    def publish_all(self, template: PushTemplate) -> None:
        """A push to every connection of the other nodes."""
        ...

    def presence_changed(self, seq: int, delta: Delta) -> None:
        """A change of this node's presence (numbered ``seq`` in its view), for the others."""
        ...

    def is_up(self, node: str) -> bool:
        """Whether ``node`` is a live member of the cluster (this node is)."""
        ...

    def gone_since(self, node: str) -> float | None:
        """When ``node`` went down or left (wall-clock time), if it did and is not back."""
        ...

    def life(self, node: str) -> tuple[int, float] | None:
        """The life of ``node`` that is up: its epoch, and since when (wall-clock time) this
        node knows it; ``None`` if ``node`` is not up (or lives cannot be told apart)."""
        ...

    def stats(self) -> dict[str, Any]:
        """The mode, the nodes known with status and load, the bus."""
        ...

    def gauges(self) -> dict[str, float]:
        """Gauges for ``/metrics`` (none without a cluster)."""
        ...

    def counters(self) -> dict[str, tuple[str, float]]:
        """Counters for ``/metrics``: name -> (help, value) (none without a cluster)."""
        ...
