"""Numbering, delivering and reading streams, for one node (see :mod:`._streams`).

A reliable push to a room or a user is *appended* to its stream: handed to the stream's
sequencer (this node, or another over the bus), numbered there, then delivered wherever the
stream has readers: the sequencer's own connections, and every node hosting them (room
messages on the room's topic, inbox messages on the topics of the nodes where the user is
connected). Every node keeps a copy of what it delivers (:class:`StreamStore`), which is what
a resuming session is replayed from, and what a new sequencer starts from.

**Taking a stream over.** A node that finds itself the sequencer of a stream it holds no
numbering for (the stream is new, its sequencer died, or it now ranks first) first gathers the
copies the other nodes hold, continues the numbering from the most complete one in a new epoch,
and only then numbers what was sent meanwhile. The previous sequencer, if alive, stops numbering
the stream when asked for its copy.

**Gaps.** A node that receives a message past a hole in its copy holds it, fetches the missing
ones from the sequencer, and delivers all in order.

``done`` callbacks tell the sender's node the position its message got (or ``None`` if no
sequencer confirmed it in time): the node acknowledges a send only once it is numbered, so an
acknowledged message is held by at least its sequencer and the sender's node.

**What leaves the process first.** A sequencer delivers a message to its own readers, and
acknowledges its own clients' sends, only once its numbered entry has come back to it through the
bus (the broker echoes what a node publishes on a topic it subscribes to): a ZeroMQ send only
queues the message for libzmq's I/O thread, so a node killed a moment after numbering could
otherwise have shown its own readers messages no other node ever got. The stream's next
sequencer would then number other messages with the same offsets, and those readers, resuming
elsewhere, would find their position in an epoch nobody continued (a gap: the messages sent
meanwhile lost to them). An entry whose echo was overtaken by the echo of a heartbeat published
after it (:meth:`StreamService.overtaken`: dropped on the way, at a high-water mark) is delivered
all the same. A node too busy to read its bus waits for its echoes as its readers elsewhere wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import trio

from ..protocol import ErrorCode, RequestTimeout, RoomdError
from ._streams import Entry, Gap, Position, StreamKey, StreamStore, user_of

log = logging.getLogger("roomd.cluster")

READ: Final = "roomd.stream-read"  # [stream, position or None] -> entries after it
TAIL: Final = "roomd.stream-tail"  # stream -> [epoch, offset]; the caller reads the stream
# [stream, ...] -> [[epoch, offset] or None, ...]: TAIL for many streams at once (None: the
# node asked does not number that one in its view); one call per node when the nodes change,
# or when this node catches up after it could not hear
TAILS: Final = "roomd.stream-tails"
MAX_TAILS: Final = 1000  # streams per TAILS call
COPY: Final = "roomd.stream-copy"  # stream -> the entries a node holds (a takeover gathers)
APPEND_ATTEMPTS: Final = 3  # a message is sent to the stream's sequencer at most this often
READ_ATTEMPTS: Final = 3  # a stream is read from its sequencer at most this often
MAX_HELD: Final = 10_000  # messages held past a hole, per stream, while it is repaired
# A hole is asked for this many times (0.2 s apart; each a read, itself made READ_ATTEMPTS
# times) while its sequencer does not answer; then what came after it is delivered and the
# hole counted lost. Right after the bus comes back, the other nodes may not hear yet (their
# subscriptions are being made again).
REPAIR_ATTEMPTS: Final = 2
READER_MEMORY: Final = 60.0  # seconds a node that asked for an inbox's tail is sent its messages
# A node's clock may differ from another's by this much: what a sequencer stamped this long
# before a session began on another node still counts as sent during it (see :meth:`_keep`)
CLOCK_SLACK: Final = 1.0
# A sequencer that hears of a user's first connection on a node sends that node the user's inbox
# messages stamped this long before it heard (plus how late that node's messages come): the
# connection opened at most about that long ago (see :meth:`StreamService.arrived`)
ARRIVAL_BACKLOG: Final = 2.0
# Seconds a node waits to be told where its copy of a new session's inbox starts: its sequencer
# has heard of the session by then, or has been declared down (see StreamService.opening)
SINCE_MEMORY: Final = 10.0
Done = Callable[[Position | None], None]


class Readers(Protocol):
    """Where this node's readers of streams are (the node: its connections)."""

    def deliver_entry(self, stream: StreamKey, entry: Entry) -> int: ...


class Outbound:
    """How a stream service reaches other nodes (a cluster's bus); absent on a node alone."""

    def __init__(
        self,
        *,
        publish_entry: Callable[[StreamKey, Entry, set[str]], tuple[set[str], bool]],
        send_to_sequencer: Callable[[str, StreamKey, Entry, int], None],
        confirm: Callable[[str, StreamKey, str, Position], None],
        call: Callable[[str, str, Any], Awaitable[Any]],
        gather: Callable[[StreamKey], Awaitable[dict[str, list[Any]]]],
        send_followed: Callable[[str, StreamKey, Position | None, list[Entry]], None],
    ) -> None:
        self.publish_entry = publish_entry
        self.send_followed = send_followed
        self.send_to_sequencer = send_to_sequencer
        self.confirm = confirm
        self.call = call
        self.gather = gather


class _Takeover:
    """A stream this node takes over: what waits to be numbered, and when it may be."""

    __slots__ = ("ready", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[str, Entry]] = []  # (origin, draft)
        self.ready = trio.Event()


class _Pending:
    __slots__ = ("attempts", "deadline", "done", "entry", "stream", "target")

    def __init__(self, stream: StreamKey, entry: Entry, done: Done | None, target: str):
        self.stream = stream
        self.entry = entry  # unnumbered: offset 0
        self.done = done
        self.target = target
        self.attempts = 1
        self.deadline = 0.0


class StreamService:
    """The streams of one node: what it sequences, what it delivers and keeps, what it reads."""

    def __init__(
        self,
        name: str,
        host: Readers,
        store: StreamStore,
        sequencer_of: Callable[[StreamKey], str],
        outbound: Outbound | None = None,
        *,
        append_timeout: float = 5.0,
        is_up: Callable[[str], bool] = lambda node: True,
        bus_live: Callable[[], bool] = lambda: True,
        follows_presence: Callable[[str], bool] = lambda node: False,
    ) -> None:
        self.name = name
        self.host = host
        self.store = store
        self.sequencer_of = sequencer_of
        self.outbound = outbound
        self.append_timeout = append_timeout
        self.is_up = is_up
        self.bus_live = bus_live
        self.follows_presence = follows_presence
        self._spawn: Callable[..., None] | None = None
        self._pending: dict[tuple[StreamKey, str], _Pending] = {}
        # Numbered here, published, delivered here once the bus echoes them, in order: stream
        # -> offset -> (entry, whether its sender is this node's, when numbered, whether an echo
        # comes: one that comes after one that waits waits too)
        self._unechoed: dict[StreamKey, dict[int, tuple[Entry, bool, float, bool]]] = {}
        self._taking: dict[StreamKey, _Takeover] = {}
        self._held: dict[StreamKey, dict[int, Entry]] = {}
        self._repairing: set[StreamKey] = set()
        self._readers: dict[StreamKey, dict[str, float]] = {}  # inbox -> node -> when
        self._followed: dict[StreamKey, str] = {}  # inbox read here -> its sequencer, as told
        # Inboxes read here since a new session began (wall-clock time), by presence: their
        # sequencer has not said yet where this node's copy starts (see :meth:`opening`)
        self._since: dict[StreamKey, float] = {}
        self.refollow_due = False  # a node could not be told: try again
        self.takeovers = 0
        self.repairs = 0
        self.lost = 0  # messages a repair found no longer held anywhere
        self.echoes_missed = 0  # entries delivered here without their echo (see overtaken)

    def start(self, spawn: Callable[..., None]) -> None:
        """Run takeovers and repairs with ``spawn`` (a nursery's ``start_soon``)."""
        self._spawn = spawn

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
        numbered (at once when this node is the sequencer and already numbers the stream)."""
        draft = Entry(0, "", body, message_id, time.time(), skip_user, except_session)
        sequencer = self.sequencer_of(stream)
        if sequencer == self.name or self.outbound is None:
            if done is not None:
                self._pending[(stream, message_id)] = _Pending(stream, draft, done, self.name)
            self._sequence(self.name, stream, draft)
            return
        pending = _Pending(stream, draft, done, sequencer)
        pending.deadline = trio.current_time() + self.append_timeout
        self._pending[(stream, message_id)] = pending
        self.outbound.send_to_sequencer(sequencer, stream, draft, 0)

    def on_sequence_request(self, origin: str, stream: StreamKey, draft: Entry, hops: int) -> None:
        """Another node asks this one to number a message (it thinks this node sequences it)."""
        assert self.outbound is not None
        sequencer = self.sequencer_of(stream)
        if sequencer != self.name and hops == 0 and sequencer != origin:
            self.outbound.send_to_sequencer(sequencer, stream, draft, hops + 1)  # our view differs
            return
        self._sequence(origin, stream, draft)

    def _sequence(self, origin: str, stream: StreamKey, draft: Entry) -> None:
        takeover = self._taking.get(stream)
        if takeover is not None:
            takeover.waiting.append((origin, draft))
        elif stream in self.store.sequencers or self.outbound is None or self._spawn is None:
            self._number(origin, stream, draft)
        else:
            self._begin_takeover(stream).waiting.append((origin, draft))

    def _begin_takeover(self, stream: StreamKey) -> _Takeover:
        takeover = self._taking.get(stream)
        if takeover is None:
            takeover = self._taking[stream] = _Takeover()
            assert self._spawn is not None
            self._spawn(self._take_over, stream, takeover)
        return takeover

    def _number(self, origin: str, stream: StreamKey, draft: Entry) -> Entry:
        entry, new = self.store.sequencer(stream).number(
            draft.body, draft.message_id, time.time(), draft.skip_user, draft.except_session
        )
        reached: set[str] = set()
        echo = False
        if new:
            if self.outbound is not None:
                readers = self._inbox_readers(stream)
                reached, echo = self.outbound.publish_entry(stream, entry, readers)
            waiting = self._unechoed.get(stream)
            if echo or waiting:  # (see the module docstring: what leaves the process first)
                if waiting is None:
                    waiting = self._unechoed[stream] = {}
                local = origin == self.name
                waiting[entry.offset] = (entry, local, trio.current_time(), echo)
                echo = True  # (confirmed when released)
            else:
                self.host.deliver_entry(stream, entry)
        if origin == self.name:
            if not echo:
                self.on_confirm(stream, entry.message_id, entry.position)
        elif self.outbound is not None and origin not in reached:
            # (A node the entry itself reaches takes it as the confirmation: one bus message
            # fewer. Should it not arrive there after all, the origin sends the message again
            # and, numbered already, it is confirmed on its own.)
            self.outbound.confirm(origin, stream, draft.message_id, entry.position)
        return entry

    async def _take_over(self, stream: StreamKey, takeover: _Takeover) -> None:
        """Gather the other nodes' copies of ``stream``, continue its numbering from the most
        complete in a new epoch, then number what waited."""
        assert self.outbound is not None
        self.takeovers += 1
        try:
            held = await self.outbound.gather(stream)
        except Exception:  # an unreachable node must not stop the stream: go on without it
            log.exception("%s: gathering %r failed; numbering from its own copy", self.name, stream)
            held = {}
        for node, copy in held.items():
            if copy:  # it read the stream: it still does (an inbox's messages go to it)
                self._add_reader(stream, node)
        merged: dict[int, Entry] = {entry.offset: entry for entry in self.store.log(stream)}
        for copy in sorted(held.values(), key=len, reverse=True):
            for item in copy:
                entry = entry_from_wire(item)
                merged.setdefault(entry.offset, entry)
        log_ = self.store.log(stream)
        now = time.time()
        for offset in sorted(merged):
            if offset > log_.tail:  # numbered elsewhere, never seen here: its readers get it
                log_.append(merged[offset], now)
                self.host.deliver_entry(stream, merged[offset])
        self.store.sequencer(stream)
        del self._taking[stream]
        takeover.ready.set()
        if merged:
            log.info(
                "%s: numbers %r from offset %d (epoch %s)",
                self.name,
                stream,
                log_.tail,
                self.store.sequencers[stream].epoch,
            )
        for origin, draft in takeover.waiting:
            self._number(origin, stream, draft)

    def on_copy(self, stream: StreamKey) -> list[list[Any]]:
        """The handler of :data:`COPY` calls: this node's copy of ``stream``. The caller takes
        the stream over: if this node numbered it, it stops (should it still be first in its
        own view, it takes the stream back the same way, from everyone's copies: numbering
        passes from one node to the next, never two at once, until the views agree)."""
        self.store.sequencers.pop(stream, None)
        return [entry_to_wire(e) for e in self.store.log(stream)]

    def absorb(self, stream: StreamKey, entries: list[Entry]) -> None:
        """Take ``entries`` (read from the sequencer for a session resuming here) as if they
        had come from the bus: those this node had not had yet are kept and delivered to its
        readers here (its other members of the room got none of them: their copies on the bus
        may still be on the way, and would then be dropped as already held), in order; its log
        then knows where the stream stands, and notices a hole after it."""
        for entry in entries:
            self.on_entry(stream, entry)

    def on_echo(self, stream: StreamKey, offset: int) -> None:
        """This node's entry came back through the bus: it has left the process, and so have
        those numbered before it (published before it on the same topic: an echo of theirs
        that has not come was dropped). Delivered to this node's readers, in order (and their
        senders here acknowledged)."""
        waiting = self._unechoed.get(stream)
        came = waiting is not None and offset in waiting
        released = self._release(stream, lambda at, _since: at <= offset)
        self.echoes_missed += max(0, released - came)

    def overtaken(self, published_at: float) -> None:
        """A message this node published at ``published_at`` (a heartbeat) came back through
        the bus: the entries numbered before it whose echo has not come were dropped on the way
        (at a high-water mark). They have been published all the same: delivered here now."""
        late = 0
        for stream in list(self._unechoed):
            late += self._release(stream, lambda _at, since: since < published_at)
        if late:
            self.echoes_missed += late
            log.warning("%s: %d entries were delivered without their echo", self.name, late)

    def _release(self, stream: StreamKey, out: Callable[[int, float], bool]) -> int:
        """Deliver the entries of ``stream`` that wait, from the first, while ``out(offset,
        numbered at)`` holds or no echo of theirs is to come; how many whose echo was."""
        waiting = self._unechoed.get(stream)
        released = 0
        while waiting:
            offset = next(iter(waiting))
            entry, local_origin, since, echo = waiting[offset]
            if echo and not out(offset, since):
                break
            del waiting[offset]
            released += echo
            self.host.deliver_entry(stream, entry)
            if local_origin:
                self.on_confirm(stream, entry.message_id, entry.position)
        if not waiting:
            self._unechoed.pop(stream, None)
        return released

    @property
    def awaiting_echo(self) -> bool:
        return bool(self._unechoed)

    def on_confirm(self, stream: StreamKey, message_id: str, position: Position) -> None:
        pending = self._pending.pop((stream, message_id), None)
        if pending is not None and pending.done is not None:
            pending.done(position)

    def expire(self, now: float, everything: bool = True) -> None:
        """Unconfirmed appends past their deadline, or whose sequencer is gone: sent again to
        the stream's sequencer now (it may have changed), at most ``APPEND_ATTEMPTS`` times in
        all; then failed (``done(None)``). While this node's bus is down they wait: they go
        again once it is back (:meth:`resend`), their senders still unanswered.

        The appends are kept in the order of their deadlines (one sent again moves to the end),
        so only those past it are looked at, unless ``everything``: the nodes changed since the
        last call, and a sequencer may be gone."""
        if not self.bus_live():
            return
        due: list[tuple[StreamKey, str]] = []
        for key, pending in self._pending.items():
            if pending.target == self.name:
                continue
            if now < pending.deadline:
                if not everything:
                    break
                if self.is_up(pending.target):
                    continue
            due.append(key)
        for key in due:
            pending_ = self._pending.pop(key, None)
            if pending_ is None:  # (confirmed meanwhile, by what the others set off)
                continue
            if pending_.attempts >= APPEND_ATTEMPTS or self.outbound is None:
                log.warning(
                    "%s: no sequencer confirmed a message of %r", self.name, pending_.stream
                )
                if pending_.done is not None:
                    pending_.done(None)
                continue
            pending_.attempts += 1
            pending_.deadline = now + self.append_timeout
            pending_.target = self.sequencer_of(pending_.stream)
            self._pending[key] = pending_  # (last: the latest deadline)
            if pending_.target == self.name:
                self._sequence(self.name, pending_.stream, pending_.entry)
            else:
                self.outbound.send_to_sequencer(pending_.target, pending_.stream, pending_.entry, 0)

    # Receiving -----------------------------------------------------------------------------------

    def on_entry(self, stream: StreamKey, entry: Entry) -> None:
        """A numbered message from its sequencer: kept and delivered here, once, in order (a
        message past a hole waits for the hole to be filled from the sequencer)."""
        self.on_confirm(stream, entry.message_id, entry.position)
        log_ = self.store.log(stream)
        if entry.offset <= log_.tail:
            return  # a duplicate (or older than what this node keeps)
        known = len(log_) or log_.start
        if (entry.offset > log_.tail + 1) if known else (stream in self._repairing):
            # (past a hole; or what comes while an inbox read without a start is read whole)
            held = self._held.setdefault(stream, {})
            if len(held) < MAX_HELD:
                held[entry.offset] = entry
            if stream not in self._repairing and self._spawn is not None:
                self._repairing.add(stream)
                self._spawn(self._repair, stream)
            return
        self._keep(stream, entry)
        self._deliver_held(stream)

    def _keep(self, stream: StreamKey, entry: Entry) -> None:
        if self.store.record(stream, entry, time.time()):
            if self._since:
                since = self._since.get(stream)
                if since is not None:
                    if entry.stamp < since - CLOCK_SLACK:
                        return  # (stamped before the sessions here began: kept, not shown)
                    del self._since[stream]  # (this copy has a start now)
            self.host.deliver_entry(stream, entry)

    def _deliver_held(self, stream: StreamKey) -> None:
        held = self._held.get(stream)
        if not held:
            return
        log_ = self.store.log(stream)
        while (entry := held.pop(log_.tail + 1, None)) is not None:
            self._keep(stream, entry)
        if not held:
            del self._held[stream]

    async def _repair(self, stream: StreamKey) -> None:
        self.repairs += 1
        log_ = self.store.log(stream)
        if not (len(log_) or log_.start):
            await self._read_whole(stream)
            return
        try:
            missing = await self._fetch_missing(stream)
        finally:
            self._repairing.discard(stream)
        for entry in missing:
            if entry.offset == log_.tail + 1:
                self._keep(stream, entry)
        held = self._held.pop(stream, {})
        for offset in sorted(held):  # what could not be repaired is skipped over
            if offset > log_.tail:
                self.lost += offset - log_.tail - 1
                self._keep(stream, held[offset])

    async def _read_whole(self, stream: StreamKey) -> None:
        """Read what the sequencer holds of ``stream``, an inbox whose copy here has no start
        yet (its sessions began reading it by presence: :meth:`opening`). Shown to them from
        when they began (:meth:`_keep`); what comes meanwhile waits, then follows in order."""
        try:
            entries = await self.read(stream, None)
        except Exception as exc:  # (its sequencer did not answer: what comes next is shown)
            log.warning("%s: could not read %r: %s", self.name, stream, exc)
            entries = []
        finally:
            self._repairing.discard(stream)
        log_ = self.store.log(stream)
        for entry in entries:
            if entry.offset > log_.tail:
                self._keep(stream, entry)
        held = self._held.pop(stream, {})
        for offset in sorted(held):
            if offset > log_.tail:
                self._keep(stream, held[offset])

    async def _fetch_missing(self, stream: StreamKey) -> list[Entry]:
        """What this node's copy of ``stream`` lacks after its last offset, from the sequencer:
        asked again while it does not answer (:data:`REPAIR_ATTEMPTS`); nothing if it no longer
        holds it all (a gap) or never answers."""
        log_ = self.store.log(stream)
        for attempt in range(1, REPAIR_ATTEMPTS + 1):
            last = log_.last
            try:
                return await self.read(stream, Position(last.epoch if last else "", log_.tail))
            except Exception as exc:  # no longer held (a gap), or the sequencer did not answer
                gap = isinstance(exc, RoomdError) and exc.code == ErrorCode.HISTORY_GAP
                if gap or attempt == REPAIR_ATTEMPTS:
                    log.warning(
                        "%s: could not repair %r after offset %d: %s",
                        self.name,
                        stream,
                        log_.tail,
                        exc,
                    )
                    return []
            await trio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def resend(self, now: float) -> None:
        """Send every unconfirmed append again now, to its stream's sequencer (this node's bus
        is back: what it sent meanwhile was lost)."""
        for pending in list(self._pending.values()):
            if pending.target == self.name or self.outbound is None:
                continue
            pending.attempts, pending.deadline = 1, now + self.append_timeout
            pending.target = self.sequencer_of(pending.stream)
            if pending.target == self.name:
                self._sequence(self.name, pending.stream, pending.entry)
            else:
                self.outbound.send_to_sequencer(pending.target, pending.stream, pending.entry, 0)

    def relinquish(self) -> None:
        """Stop numbering every stream (keeping the copies): another node may have taken them
        over while this one could not hear; it takes them again, from everyone's copies, when it
        next has to number one (a message sent again meanwhile is then recognised by its id)."""
        self.store.sequencers.clear()

    # Reading -------------------------------------------------------------------------------------

    async def read(self, stream: StreamKey, after: Position | None) -> list[Entry]:
        """The messages of ``stream`` after ``after``, from its sequencer. A sequencer that
        does not answer may have died and not be declared down yet: the read is made again
        to whoever numbers the stream then, ``READ_ATTEMPTS`` times in all.

        Error handling: :class:`~._streams.Gap` when the sequencer no longer holds them all;
        :class:`~roomd.protocol.RequestTimeout` when no sequencer answered.
        """
        wire = None if after is None else [after.epoch, after.offset]
        attempts = 1
        while True:
            sequencer = self.sequencer_of(stream)
            if sequencer == self.name or self.outbound is None:
                await self._numbering(stream)
                return self._released(stream, self.store.log(stream).since(after))
            try:
                result = await self.outbound.call(sequencer, READ, [stream, wire])
            except RequestTimeout:
                if attempts >= READ_ATTEMPTS:
                    raise
                attempts += 1
                log.warning("%s: %s did not answer a read of %r", self.name, sequencer, stream)
                continue
            if user_of(stream) is not None:
                self._followed[stream] = sequencer
            return [entry_from_wire(item) for item in result]

    def local_tail(self, stream: StreamKey) -> Position | None:
        """The position of the last message of ``stream`` if this node numbers it, else
        ``None`` (ask with :meth:`tail`). A stream this node has numbered nothing of yet answers
        with an empty epoch and the last offset it holds a copy of (nothing is set up for it:
        a node asked for the position of every new user's inbox must not pay for each)."""
        if self.outbound is not None and self.sequencer_of(stream) != self.name:
            return None
        numbering = self.store.sequencers.get(stream)
        if numbering is not None:
            first = self._first_unechoed(stream)
            if first is None:
                return Position(numbering.epoch, numbering.log.tail)
            shown = [e for e in numbering.log if e.offset < first]
            return shown[-1].position if shown else Position("", first - 1)
        log_ = self.store.logs.get(stream)
        return Position("", log_.tail if log_ is not None else 0)

    def _first_unechoed(self, stream: StreamKey) -> int | None:
        waiting = self._unechoed.get(stream)
        return next(iter(waiting)) if waiting else None

    def _released(self, stream: StreamKey, entries: list[Entry]) -> list[Entry]:
        """``entries`` without those that wait for their echo here (what this node's own
        readers have not been shown yet must not reach a reader first through a read: a
        session resuming here would get them twice, once read and once live)."""
        first = self._first_unechoed(stream) if self._unechoed else None
        return entries if first is None else [e for e in entries if e.offset < first]

    def opening(self, stream: StreamKey, read_here: bool = False) -> Position | None:
        """Where a new session here begins reading ``stream`` (its user's inbox), when this
        node can say at once; else ``None`` (ask the sequencer: :meth:`tail`).

        - This node numbers the stream: the position here.
        - This node reads it already (``read_here``: the user has another session here): the
          last position it holds, if it told the sequencer and its copy has a start; else an
          empty epoch. What comes after reaches it; and nothing is held back from the other
          session (only a user's first session here is shown nothing stamped before it
          began).
        - Its sequencer learns of this node's readers from presence (a node of this version):
          an empty epoch. The presence delta that announces the user here (it leaves within
          ``DELTA_WINDOW``) makes the sequencer tell this node where its copy starts, with
          what it numbered since just before it heard (:meth:`arrived`; nothing at all if it
          numbered nothing of the inbox yet); what it numbers after reaches this node by
          presence. What was stamped before the session began is not shown to it
          (:meth:`_keep`); a session resuming from an empty epoch is replayed by the same
          rule. Should the sequencer change before it said, this node reads the inbox whole
          from the next one (:meth:`_tails`). Nothing waits for the sequencer: no call, and
          usually no message, per new session."""
        position = self.local_tail(stream)
        if position is not None:
            return position
        sequencer = self.sequencer_of(stream)
        if read_here:
            log_ = self.store.logs.get(stream)
            if (
                self._followed.get(stream) == sequencer
                and stream not in self._since
                and log_ is not None
                and (len(log_) or log_.start)
            ):
                return self.known_tail(stream)
            # (what comes reaches this node for the other session, and this one with it; what
            # is on its way, however old, must still reach that one: nothing is held back)
            return Position("", 0) if self.follows_presence(sequencer) else None
        if not self.follows_presence(sequencer):
            return None  # (a node of an earlier version: it is asked)
        self._since.setdefault(stream, time.time())
        self._followed[stream] = sequencer
        return Position("", 0)

    def settle(self, now: float | None = None) -> None:
        """Forget the new sessions' inboxes whose sequencer said nothing for
        :data:`SINCE_MEMORY` seconds. It had numbered none of them: their copies here start
        with what comes first. ``now``: the wall clock, by default read here (the clock
        :meth:`opening` stamps them with)."""
        since = self._since
        if now is None:
            now = time.time()
        while since:
            stream = next(iter(since))
            if since[stream] > now - SINCE_MEMORY:
                break
            del since[stream]

    def arrived(self, stream: StreamKey, node: str, late: float) -> None:
        """Presence says the user whose inbox ``stream`` is has a first connection on
        ``node``, whose messages come about ``late`` seconds after they leave it. If this
        node numbers the stream, it tells ``node`` where its copy starts and sends it what it
        stamped from :data:`ARRIVAL_BACKLOG` + ``late`` seconds ago: a session may have begun
        there since (:meth:`opening`), before this node heard. What it numbers from now on
        reaches ``node`` by presence, after this (on the same topic, in order). Nothing is
        sent for an inbox it has numbered nothing of (most users: no message per new
        session)."""
        outbound = self.outbound
        if (
            outbound is None
            or not self.follows_presence(node)
            or self.sequencer_of(stream) != self.name
        ):
            return
        numbering = self.store.sequencers.get(stream)
        if numbering is None or stream in self._taking:
            return  # (nothing numbered here yet: the copy there starts with what comes first)
        backlog = numbering.log.stamped_since(time.time() - ARRIVAL_BACKLOG - late)
        if backlog:
            start = Position(backlog[0].epoch, backlog[0].offset - 1)
        else:
            start = Position(numbering.epoch, numbering.log.tail)
        outbound.send_followed(node, stream, start, backlog)

    def on_followed(self, stream: StreamKey, start: Position | None, entries: list[Entry]) -> None:
        """The sequencer of ``stream`` heard by presence that this node reads it
        (:meth:`arrived`): where this node's copy starts, and what it numbered from just
        before. What it numbers next reaches this node by presence. Nothing if this node
        does not read the stream."""
        if stream not in self._since and stream not in self._followed:
            return
        if start is not None:
            self.follow(stream, start)
        for entry in entries:
            self.on_entry(stream, entry)
        if stream not in self._repairing:
            # (else a copy kept here for another reason, which stopped short, is repaired:
            # what the repair brings that was stamped before the sessions began stays unshown)
            self._since.pop(stream, None)

    def known_tail(self, stream: StreamKey) -> Position:
        """The last position of ``stream`` this node holds a copy of (an empty epoch if none):
        what it can say when the sequencer cannot be asked."""
        log_ = self.store.logs.get(stream)
        last = log_.last if log_ is not None else None
        if last is None:
            return Position("", log_.tail if log_ is not None else 0)
        return Position(last.epoch, last.offset)

    async def tail(self, stream: StreamKey) -> Position:
        """The position of the last message of ``stream`` (offset 0 for an empty stream; an
        empty epoch when its sequencer numbered nothing of it yet); its sequencer counts this
        node among the stream's readers."""
        position = self.local_tail(stream)
        if position is not None:
            return position
        assert self.outbound is not None  # (alone, a node numbers every stream)
        sequencer = self.sequencer_of(stream)
        epoch, offset = await self.outbound.call(sequencer, TAIL, stream)
        if user_of(stream) is not None:
            self._followed[stream] = sequencer
        return Position(epoch, offset)

    def refollow(self, inboxes: list[StreamKey]) -> None:
        """The nodes changed: tell the sequencer of each inbox read here (``inboxes``: of the
        users connected here) that this node reads it, if it is another node than the one told
        before; and fetch what this node missed of it."""
        self.refollow_due = False
        if self._spawn is None or self.outbound is None:
            return
        wanted = set(inboxes)
        by_sequencer: dict[str, list[StreamKey]] = {}
        for stream in inboxes:
            sequencer = self.sequencer_of(stream)
            if sequencer != self.name and sequencer != self._followed.get(stream):
                self._followed[stream] = sequencer
                by_sequencer.setdefault(sequencer, []).append(stream)
        for stream in list(self._followed):
            if stream not in wanted:
                del self._followed[stream]
        self._ask_tails(by_sequencer, catching_up=False)

    def catch_up(self, inboxes: list[StreamKey]) -> None:
        """This node could not hear for a while (a freeze, or its bus was down): tell the
        sequencer of each of ``inboxes`` (of the users connected here) that this node reads
        it, and fetch what it may have missed of every stream it reads. Those it is behind on
        are repaired from their last offset here, and so is every stream whose sequencer has
        not numbered it yet (reading it makes the sequencer take it over, from everyone's
        copies, which may hold more than this node's)."""
        self.refollow_due = False
        if self._spawn is None:
            return
        by_sequencer: dict[str, list[StreamKey]] = {}
        for stream in inboxes:
            sequencer = self.sequencer_of(stream)
            if sequencer != self.name and self.outbound is not None:
                self._followed[stream] = sequencer
                by_sequencer.setdefault(sequencer, []).append(stream)
        followed = set(inboxes)
        for stream, log_ in list(self.store.logs.items()):
            known = len(log_) or log_.start  # (a log with no baseline has nothing to repair)
            if known and stream not in self.store.sequencers and stream not in followed:
                sequencer = self.sequencer_of(stream)
                if sequencer == self.name or self.outbound is None:
                    self._start_repair(stream)
                else:
                    by_sequencer.setdefault(sequencer, []).append(stream)
        self._ask_tails(by_sequencer, catching_up=True)

    def _ask_tails(self, by_sequencer: dict[str, list[StreamKey]], *, catching_up: bool) -> None:
        for sequencer, streams in by_sequencer.items():  # (a call per node, not per stream)
            for i in range(0, len(streams), MAX_TAILS):
                assert self._spawn is not None
                self._spawn(self._tails, sequencer, streams[i : i + MAX_TAILS], catching_up)

    async def _tails(self, sequencer: str, streams: list[StreamKey], catching_up: bool) -> None:
        """Ask ``sequencer`` where ``streams`` stand (it counts this node among the readers
        of the inboxes among them), and repair those this node is behind on (catching up:
        also those it has not numbered yet, and all of them if it does not answer)."""
        assert self.outbound is not None
        try:
            answers = await self.outbound.call(sequencer, TAILS, streams)
        except RoomdError as exc:
            if exc.code == ErrorCode.UNKNOWN_EVENT:  # (a node of an earlier version)
                answers = [await self._tail_or_none(sequencer, s) for s in streams]
            else:
                answers = None
                log.warning(
                    "%s: could not ask %s where %d streams stand (read, or asked again later): %s",
                    self.name,
                    sequencer,
                    len(streams),
                    exc,
                )
        for stream, position in zip(streams, _positions(answers, len(streams)), strict=True):
            if position is None and user_of(stream) is not None:
                # (no answer, or its view differs: the nodes are changing; tried again later)
                if self._followed.get(stream) == sequencer:
                    del self._followed[stream]
                self.refollow_due = True
            log_ = self.store.log(stream)
            if stream in self._since and not (len(log_) or log_.start):
                # (its sequencer changed, or this node could not hear, before this node's
                # copy had a start: what the sequencer holds is read whole)
                self._start_repair(stream)
                continue
            if not (len(log_) or log_.start) or stream in self.store.sequencers:
                continue  # (nothing held here to repair: it reads from the position on)
            if position is None:
                behind = catching_up
            else:
                behind = position.offset > log_.tail or (catching_up and not position.epoch)
            if behind:
                self._start_repair(stream)

    def _start_repair(self, stream: StreamKey) -> None:
        if stream not in self._repairing and self._spawn is not None:
            self._repairing.add(stream)
            self._spawn(self._repair, stream)

    async def _tail_or_none(self, sequencer: str, stream: StreamKey) -> list[Any] | None:
        assert self.outbound is not None
        try:
            answer: list[Any] = await self.outbound.call(sequencer, TAIL, stream)
        except RoomdError:
            return None
        return answer

    def follow(self, stream: StreamKey, position: Position) -> None:
        """This node reads ``stream`` from ``position`` on: a later message past a hole is then
        noticed (a copy that starts empty would take any offset as its first)."""
        log_ = self.store.log(stream)
        if not len(log_) and log_.start < position.offset:
            log_.start = position.offset

    def forget(self, stream: StreamKey) -> None:
        """This node reads ``stream`` no more (its last reader here left): its copy goes,
        unless it numbers the stream (a later reader starts from where the stream is then)."""
        self._since.pop(stream, None)
        if stream not in self.store.sequencers:
            self.store.logs.pop(stream, None)
            self._held.pop(stream, None)

    def takes_over(self, stream: StreamKey) -> bool:
        """Whether this node numbers ``stream`` but has not taken it over yet (see
        :meth:`taken_over`)."""
        return (
            self.outbound is not None
            and self._spawn is not None
            and stream not in self.store.sequencers
            and self.sequencer_of(stream) == self.name
        )

    async def taken_over(self, stream: StreamKey) -> None:
        """Until this node numbers ``stream`` if it ranks first for it (:meth:`_numbering`)."""
        await self._numbering(stream)

    async def _numbering(self, stream: StreamKey) -> None:
        """Until this node numbers ``stream``, which it ranks first for: a node that came to
        rank first (it joined, or restarted) holds at most a reader's copy of a stream that
        others numbered until then; it takes the stream over (gathering their copies) before
        it answers from its log."""
        if self.outbound is None or self._spawn is None or stream in self.store.sequencers:
            return
        await self._begin_takeover(stream).ready.wait()

    async def on_read(self, body: Any, origin: str) -> list[list[Any]]:
        """The handler of :data:`READ` calls (raises ``Gap``): like :meth:`on_tail`, the reader
        is sent the inbox's messages from then on (a session resuming on ``origin`` gets what
        came before in this answer, and what comes after live).

        The answer holds what waits for its echo here too (unlike a read on this node,
        :meth:`_released`): it was published before ``origin`` read, so it would not reach
        ``origin`` live, and a session there whose position is an empty epoch would never
        notice it missing. It has left this process by the time the answer does (published
        first); should this node die, ``origin``, where the session now is, holds one more
        copy of it for the next sequencer to gather."""
        stream, wire = body
        self._add_reader(stream, origin)  # (and the reader knows it follows this node)
        if self.sequencer_of(stream) == self.name:
            await self._numbering(stream)
        after = None if wire is None else Position(wire[0], wire[1])
        return [entry_to_wire(e) for e in self.store.log(stream).since(after)]

    async def on_tail(self, stream: StreamKey, origin: str) -> list[Any]:
        """The handler of :data:`TAIL` calls: the position, and ``origin`` reads the stream
        (for an inbox: it is sent the user's messages from now on, before presence says so)."""
        self._add_reader(stream, origin)
        position = await self.tail(stream)
        return [position.epoch, position.offset]

    def tail_now(self, stream: StreamKey, origin: str) -> list[Any] | None:
        """:meth:`on_tail`'s answer if this node can give it at once (it numbers the stream:
        the usual case, a new session asking for its inbox's position), else ``None``."""
        position = self.local_tail(stream)
        if position is None:
            return None
        self._add_reader(stream, origin)
        return [position.epoch, position.offset]

    def tails_now(self, streams: Any, origin: str) -> list[list[Any] | None]:
        """The handler of :data:`TAILS` calls (answered at once): :meth:`tail_now` for each
        of ``streams``, ``None`` for one this node does not number in its view.

        Error handling: :class:`~roomd.protocol.RoomdError` (``invalid``) if ``streams`` is not
        a list of at most :data:`MAX_TAILS` stream names."""
        if not (
            isinstance(streams, list)
            and len(streams) <= MAX_TAILS
            and all(isinstance(s, str) and s[:1] in ("r", "u") for s in streams)
        ):
            raise RoomdError(ErrorCode.INVALID, f"{TAILS}: a list of at most {MAX_TAILS} streams")
        return [self.tail_now(stream, origin) for stream in streams]

    def _add_reader(self, stream: StreamKey, node: str) -> None:
        if user_of(stream) is not None:
            self._readers.setdefault(stream, {})[node] = time.time()

    def _inbox_readers(self, stream: StreamKey) -> set[str]:
        readers = self._readers.get(stream)
        if not readers:
            return set()
        now = time.time()
        for node, since in list(readers.items()):
            if now - since > READER_MEMORY or not self.is_up(node):
                del readers[node]
        return set(readers)


def _positions(answers: Any, count: int) -> list[Position | None]:
    """The positions in a :data:`TAILS` answer for ``count`` streams (``None`` where there is
    none, or where the answer is not one)."""
    if not isinstance(answers, list) or len(answers) != count:
        return [None] * count
    return [
        Position(a[0], a[1])
        if isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and type(a[1]) is int
        else None
        for a in answers
    ]


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


__all__ = ["COPY", "READ", "TAIL", "TAILS", "Gap", "Outbound", "StreamService"]
