"""Bounded per-consumer mailboxes for pushes and lifecycle events.

Every subscriber gets its own bounded queue, filled without ever blocking the connection's reader
(a slow consumer must not stall acks, pongs or other consumers). What happens when a queue is full
is the subscriber's explicit choice, :data:`Overflow`:

* ``"drop_oldest"`` (default): the oldest queued item is discarded for the new one (the consumer
  sees the latest state; ``dropped`` counts the losses);
* ``"drop_newest"``: the new item is discarded;
* ``"close"``: the subscription ends; the consumer's next receive raises
  :class:`SubscriptionOverflow` (so it knows to resynchronise).
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, Literal, get_args

import trio

Overflow = Literal["drop_oldest", "drop_newest", "close"]
DEFAULT_SUBSCRIPTION_SIZE: Final = 256

Handler = Callable[[Any], Awaitable[None] | None]


class SubscriptionOverflow(Exception):
    """The subscription's queue overflowed with ``overflow="close"``: items were lost."""


class Subscription:
    """A bounded stream of the items published under one name.

    Use it as ``async for item in sub`` (ends when the client closes or ``sub.close()`` is called,
    after the queued items) or ``await sub.receive()``; ``with`` closes it on exit.

    Resource handling: unsubscribes itself on :meth:`close`; owns no task.
    """

    def __init__(
        self,
        subscriptions: Subscriptions,
        name: str,
        size: int = DEFAULT_SUBSCRIPTION_SIZE,
        overflow: Overflow = "drop_oldest",
    ) -> None:
        if size < 1:
            raise ValueError("subscription size must be >= 1")
        if overflow not in get_args(Overflow):
            raise ValueError(f"overflow must be one of {get_args(Overflow)}")
        self.name = name
        self.size = size
        self.overflow = overflow
        self.dropped = 0
        self._subscriptions = subscriptions
        self._items: collections.deque[Any] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._ended = False
        self._overflowed = False

    def put(self, item: Any) -> None:
        """Queue ``item`` according to the overflow policy (never blocks)."""
        if self._ended:
            return
        if len(self._items) >= self.size:
            self.dropped += 1
            if self.overflow == "drop_newest":
                return
            if self.overflow == "close":
                self._overflowed = True
                self.end()
                return
            self._items.popleft()
        self._items.append(item)
        self._lot.unpark()

    def end(self) -> None:
        """No more items will come; the consumer gets the queued ones first."""
        self._ended = True
        self._subscriptions.remove(self)
        self._lot.unpark_all()

    close = end

    async def receive(self) -> Any:
        """The next item. Raises ``trio.EndOfChannel`` at the end, or
        :class:`SubscriptionOverflow` if items were lost under ``overflow="close"``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while not self._items:
            if self._overflowed:
                raise SubscriptionOverflow(f"subscription {self.name!r} overflowed ({self.size})")
            if self._ended:
                raise trio.EndOfChannel
            await self._lot.park()
            parked = True
        item = self._items.popleft()
        if not parked:  # always a schedule point, as trio's channels are
            await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<Subscription {self.name!r} queued={len(self._items)} dropped={self.dropped}>"


class Subscriptions:
    """Subscriptions by name; :meth:`publish` fans an item out to them without blocking."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Subscription]] = {}
        self._closed = False

    def subscribe(
        self, name: str, size: int = DEFAULT_SUBSCRIPTION_SIZE, overflow: Overflow = "drop_oldest"
    ) -> Subscription:
        sub = Subscription(self, name, size, overflow)
        if self._closed:
            sub.end()
        else:
            self._subs.setdefault(name, []).append(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.name)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.name]

    def publish(self, name: str, item: Any) -> None:
        for sub in tuple(self._subs.get(name, ())):
            sub.put(item)

    def has(self, name: str) -> bool:
        return name in self._subs

    def close(self) -> None:
        """End every subscription (consumers drain what is queued, then stop)."""
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.end()
        self._subs.clear()


async def run_handler(sub: Subscription, handler: Handler) -> None:
    """Feed every item of ``sub`` to ``handler`` (sync, or async and awaited), in order.

    Error handling: an exception from the handler propagates (it is a bug in the application and
    ends the client, like any crashed task in a Trio nursery).
    """
    async for item in sub:
        result = handler(item)
        if inspect.isawaitable(result):
            await result
