"""A node alone: the cluster layer of a node started without a cluster (``mode = "none"``).

It has the same surface as :class:`~roomd.cluster.Cluster`, so the node never asks whether it
is clustered: nothing is published, the view holds this node only, and cluster calls reach this
node's own handlers (calls to other nodes fail with ``not_found``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from ..protocol import PushTemplate
from ._calls import Calls
from ._host import ClusterHost
from ._streaming import StreamService
from ._streams import HistoryLimits, StreamStore
from ._view import ClusterView, Delta, RoomKey


class SingleNode:
    """The null cluster."""

    mode = "none"

    def __init__(
        self,
        name: str,
        *,
        view: ClusterView,
        host: ClusterHost,
        timeout: float,
        history: HistoryLimits,
    ) -> None:
        self.name = name
        self.host = host
        self.calls = Calls(name, timeout=timeout, nodes_up=view.nodes_up, publish=None)
        self.streams = StreamService(name, host, StreamStore(history), lambda stream: name)

    @property
    def bus_live(self) -> bool:
        return False

    async def wait_synced(self, timeout: float) -> bool:
        return True  # (alone, it misses nothing)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def leave(self) -> None:
        pass

    def drain(self) -> None:
        pass

    def publish_room(self, key: RoomKey, template: PushTemplate, skip_user: str | None) -> None:
        pass

    def publish_users(self, users: Iterable[str], template: PushTemplate) -> None:
        pass

    def publish_all(self, template: PushTemplate) -> None:
        pass

    def presence_changed(self, seq: int, delta: Delta) -> None:
        pass

    def is_up(self, node: str) -> bool:
        return node == self.name

    def gone_since(self, node: str) -> float | None:
        return None

    def life(self, node: str) -> tuple[int, float] | None:
        return None  # (alone, a restarted node holds nothing of its former life)

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "nodes": [{"name": self.name, **self.host.load(), "lastSeen": 0.0}],
        }

    def gauges(self) -> dict[str, float]:
        return {}

    def counters(self) -> dict[str, tuple[str, float]]:
        return {}
