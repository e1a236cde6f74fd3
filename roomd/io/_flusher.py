"""The node's one writing task: what connections and the bus queued goes out once per round."""

from __future__ import annotations

from typing import Protocol

import trio


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    """Writes what connections (and the bus) have queued, once per scheduling round.

    Resource handling: :meth:`run` is the node's one writing task; it owns nothing else.
    """

    def __init__(self) -> None:
        self._dirty: list[Flushable] = []
        self._wake = trio.Event()

    def mark(self, target: Flushable) -> None:
        """Have ``target.flush()`` called soon (once per call of this)."""
        self._dirty.append(target)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, []
            for target in dirty:
                target.flush()
