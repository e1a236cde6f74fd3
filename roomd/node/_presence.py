"""The online-user list, pushed to the sessions that subscribed to it (``users.subscribe``).

Whenever a user comes online or goes offline anywhere in the cluster, the subscribers of this
node get the whole list again (sorted, unique) as a ``users.online`` push: changes within
:data:`WINDOW` seconds make one push, encoded once for all of them.
"""

from __future__ import annotations

from typing import Final

import trio

from ..cluster import ClusterView
from ..hub import Hub
from ..protocol import Push, PushTemplate

WINDOW: Final = 0.05  # seconds of changes gathered into one push


class PresenceFeed:
    """Subscribers (by session id: a resumed session keeps its subscription) and the pushes."""

    def __init__(self, hub: Hub, view: ClusterView) -> None:
        self.hub = hub
        self.view = view
        self.subscribers: set[str] = set()
        self._changed = trio.Event()

    def subscribe(self, session: str) -> list[str]:
        """Add a subscriber; the list now."""
        self.subscribers.add(session)
        return self.view.online_users()

    def unsubscribe(self, session: str) -> None:
        self.subscribers.discard(session)

    def changed(self) -> None:
        """Someone came online or went offline (a push follows, if anyone listens)."""
        if self.subscribers:
            self._changed.set()

    async def run(self) -> None:
        """Push the list after each burst of changes (a task of the node)."""
        while True:
            await self._changed.wait()
            await trio.sleep(WINDOW)
            self._changed = trio.Event()
            template = PushTemplate.of(Push("users.online", {"users": self.view.online_users()}))
            for session in list(self.subscribers):
                conn = self.hub.connections.get(session)
                if conn is None:
                    self.subscribers.discard(session)  # ended (or moved to another node)
                else:
                    conn.push(template)
