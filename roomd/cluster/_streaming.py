"""Numbering, delivering and reading streams, for one node (see :mod:`._streams`).

A reliable push to a room or a user is *appended* to its stream: handed to the stream's
sequencer (this node, or another over the bus), numbered there, then delivered wherever the
stream has readers: the sequencer's own connections, and every node hosting them (room
messages on the room's topic, inbox messages on the topics of the nodes where the user is
connected). Every node keeps a copy of what it delivers (:class:`StreamStore`), which is what
a resuming session is replayed from.

``done`` callbacks tell the sender's node the position its message got (or ``None`` if no
sequencer confirmed it in time): the node acknowledges a send only once it is numbered, so an
acknowledged message is held by at least its sequencer and the sender's node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import trio

from ._streams import Entry, Position, StreamKey, StreamStore

log = logging.getLogger("roomd.cluster")

APPEND_TIMEOUT: Final = 5.0  # seconds for a sequencer to confirm a message
Done = Callable[[Position | None], None]


class Readers(Protocol):
    """Where this node's readers of streams are (the node: its connections)."""

    def deliver_entry(self, stream: StreamKey, entry: Entry) -> int: ...


class Outbound:
    """How a stream service reaches other nodes (a cluster's bus); absent on a node alone."""

    def __init__(
        self,
        *,
        publish_entry: Callable[[StreamKey, Entry], None],
        send_to_sequencer: Callable[[str, StreamKey, Entry, int], None],
        confirm: Callable[[str, StreamKey, str, Position], None],
        call: Callable[[str, str, Any], Awaitable[Any]],
    ) -> None:
        self.publish_entry = publish_entry
        self.send_to_sequencer = send_to_sequencer
        self.confirm = confirm
        self.call = call


class _Pending:
    __slots__ = ("deadline", "done", "entry", "retried", "stream")

    def __init__(self, stream: StreamKey, entry: Entry, done: Done | None, deadline: float):
        self.stream = stream
        self.entry = entry  # unnumbered: offset 0
        self.done = done
        self.deadline = deadline
        self.retried = False


class StreamService:
    """The streams of one node: what it sequences, what it delivers and keeps, what it reads."""

    def __init__(
        self,
        name: str,
        host: Readers,
        store: StreamStore,
        sequencer_of: Callable[[StreamKey], str],
        outbound: Outbound | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.store = store
        self.sequencer_of = sequencer_of
        self.outbound = outbound
        self._pending: dict[tuple[StreamKey, str], _Pending] = {}

    # Appending -----------------------------------------------------------------------------------

    def append(
        self,
        stream: StreamKey,
        body: bytes,
        message_id: str,
        *,
        skip_user: str | None = None,
        except_session: str | None = None,
        done: Done | None = None,
    ) -> None:
        """Number a message in ``stream`` and deliver it everywhere; ``done(position)`` once
        numbered (at once when this node is the sequencer)."""
        draft = Entry(0, "", body, message_id, time.time(), skip_user, except_session)
        sequencer = self.sequencer_of(stream)
        if sequencer == self.name or self.outbound is None:
            entry = self.number(stream, draft)
            if done is not None:
                done(entry.position)
            return
        if done is not None:
            deadline = trio.current_time() + APPEND_TIMEOUT
            self._pending[(stream, message_id)] = _Pending(stream, draft, done, deadline)
        self.outbound.send_to_sequencer(sequencer, stream, draft, 0)

    def number(self, stream: StreamKey, draft: Entry) -> Entry:
        """As the sequencer: number ``draft`` (once: a message id seen lately gets its first
        entry back), deliver it here and publish it."""
        entry, new = self.store.sequencer(stream).number(
            draft.body, draft.message_id, time.time(), draft.skip_user, draft.except_session
        )
        if new:
            self.host.deliver_entry(stream, entry)
            if self.outbound is not None:
                self.outbound.publish_entry(stream, entry)
        return entry

    def on_sequence_request(self, origin: str, stream: StreamKey, draft: Entry, hops: int) -> None:
        """Another node asks this one to number a message (it thinks this node sequences it)."""
        assert self.outbound is not None
        sequencer = self.sequencer_of(stream)
        if sequencer != self.name and hops == 0 and sequencer != origin:
            self.outbound.send_to_sequencer(sequencer, stream, draft, hops + 1)  # our view differs
            return
        entry = self.number(stream, draft)
        if origin != self.name:
            self.outbound.confirm(origin, stream, draft.message_id, entry.position)

    def on_confirm(self, stream: StreamKey, message_id: str, position: Position) -> None:
        pending = self._pending.pop((stream, message_id), None)
        if pending is not None and pending.done is not None:
            pending.done(position)

    def expire(self, now: float) -> None:
        """Unconfirmed appends past their deadline: sent once more to the stream's sequencer
        (it may have changed), then failed (``done(None)``)."""
        for key, pending in list(self._pending.items()):
            if now < pending.deadline:
                continue
            if not pending.retried and self.outbound is not None:
                pending.retried = True
                pending.deadline = now + APPEND_TIMEOUT
                sequencer = self.sequencer_of(pending.stream)
                if sequencer == self.name:
                    del self._pending[key]
                    entry = self.number(pending.stream, pending.entry)
                    if pending.done is not None:
                        pending.done(entry.position)
                else:
                    self.outbound.send_to_sequencer(sequencer, pending.stream, pending.entry, 0)
                continue
            del self._pending[key]
            log.warning("%s: no sequencer confirmed a message of %r", self.name, pending.stream)
            if pending.done is not None:
                pending.done(None)

    # Receiving -----------------------------------------------------------------------------------

    def on_entry(self, stream: StreamKey, entry: Entry) -> None:
        """A numbered message from its sequencer: kept and delivered here, once."""
        if self.store.record(stream, entry, time.time()):
            self.host.deliver_entry(stream, entry)
        self.on_confirm(stream, entry.message_id, entry.position)

    # Reading -------------------------------------------------------------------------------------

    async def read(self, stream: StreamKey, after: Position | None) -> list[Entry]:
        """The messages of ``stream`` after ``after``, from its sequencer.

        Error handling: :class:`~._streams.Gap` when the sequencer no longer holds them all.
        """
        sequencer = self.sequencer_of(stream)
        if sequencer == self.name or self.outbound is None:
            return self.store.log(stream).since(after)
        wire = None if after is None else [after.epoch, after.offset]
        result = await self.outbound.call(sequencer, READ, [stream, wire])
        return [entry_from_wire(item) for item in result]

    def local_tail(self, stream: StreamKey) -> Position | None:
        """The position of the last message of ``stream`` if this node sequences it, else
        ``None`` (ask with :meth:`tail`)."""
        if self.sequencer_of(stream) != self.name and self.outbound is not None:
            return None
        numbering = self.store.sequencer(stream)
        return Position(numbering.epoch, numbering.log.tail)

    def follow(self, stream: StreamKey, position: Position) -> None:
        """This node reads ``stream`` from ``position`` on: a later message past a hole is then
        noticed (a copy that starts empty would take any offset as its first)."""
        log = self.store.log(stream)
        if not len(log) and log.start < position.offset:
            log.start = position.offset

    async def tail(self, stream: StreamKey) -> Position:
        """The position of the last message of ``stream`` (offset 0 for an empty stream)."""
        sequencer = self.sequencer_of(stream)
        if sequencer == self.name or self.outbound is None:
            numbering = self.store.sequencer(stream)
            return Position(numbering.epoch, numbering.log.tail)
        epoch, offset = await self.outbound.call(sequencer, TAIL, stream)
        return Position(epoch, offset)

    def on_read(self, body: Any) -> list[list[Any]]:
        """The handler of :data:`READ` calls (raises ``Gap``)."""
        stream, wire = body
        after = None if wire is None else Position(wire[0], wire[1])
        return [entry_to_wire(e) for e in self.store.sequencer(stream).log.since(after)]

    def on_tail(self, stream: StreamKey) -> list[Any]:
        numbering = self.store.sequencer(stream)
        return [numbering.epoch, numbering.log.tail]


READ: Final = "roomd.stream-read"
TAIL: Final = "roomd.stream-tail"


def entry_to_wire(entry: Entry) -> list[Any]:
    return [
        entry.offset,
        entry.epoch,
        entry.body,
        entry.message_id,
        entry.stamp,
        entry.skip_user,
        entry.except_session,
    ]


def entry_from_wire(item: list[Any]) -> Entry:
    offset, epoch, body, message_id, stamp, skip_user, except_session = item
    return Entry(offset, epoch, body, message_id, stamp, skip_user, except_session)
