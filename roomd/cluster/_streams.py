"""Streams: the ordered, bounded histories that make sessions resumable (sans-I/O).

Every reliable push belongs to one stream: a room's (everything sent to the room) or a user's
inbox (everything sent to the user). One node, the stream's *sequencer*, numbers the stream's
messages: ``offset`` 1, 2, 3 ... without gaps, within an ``epoch`` (a name for the sequencer's
term of office). Offsets continue across epochs: a sequencer that takes a stream over goes on
from the last offset it knows. The sequencer is the node ranked first for the stream by
rendezvous hashing over the nodes up (:func:`ranking`), so every node finds it without asking.

Every node keeps a :class:`StreamLog` of the streams it sequences and of those it delivers (the
rooms its connections are in, the inboxes of its users): bounded by count and age. A client
reports the position it reached in each stream when it resumes; the log says what came after,
or that it no longer covers the gap.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import secrets
from collections.abc import Iterable, Iterator
from typing import Final

import attrs

from ..protocol import ErrorCode, RoomdError

StreamKey = str  # "r" + ns + "\x1f" + room, or "u" + user (names hold no control characters)
DEDUPE_WINDOW: Final = 4096  # message ids remembered per sequenced stream


def room_stream(ns: str, room: str) -> StreamKey:
    return f"r{ns}\x1f{room}"


def user_stream(user: str) -> StreamKey:
    return f"u{user}"


def room_of(stream: StreamKey) -> tuple[str, str] | None:
    """The (namespace, room) of a room stream; ``None`` for an inbox."""
    if not stream.startswith("r"):
        return None
    ns, _, room = stream[1:].partition("\x1f")
    return ns, room


def user_of(stream: StreamKey) -> str | None:
    return stream[1:] if stream.startswith("u") else None


def new_epoch() -> str:
    """A sequencer's term of office: 8 random hex digits (short: clients store one per room)."""
    return secrets.token_hex(4)


@functools.lru_cache(maxsize=1024)
def _node_key(node: str) -> bytes:
    return f"{node}\x00".encode()


def _score(node: str, key: bytes) -> int:
    """``node``'s rendezvous score for the stream named ``key`` (encoded): the highest numbers
    it."""
    return int.from_bytes(hashlib.blake2b(_node_key(node) + key, digest_size=8).digest(), "big")


def ranking(stream: StreamKey, nodes: Iterable[str]) -> list[str]:
    """``nodes`` in rendezvous order for ``stream``: the first is its sequencer, the second the
    one that takes it over if the first goes. Adding or removing a node moves only the streams
    it ranks first for."""
    key = stream.encode()
    return sorted(nodes, key=lambda node: _score(node, key), reverse=True)


@attrs.frozen
class Position:
    """Where a client is in a stream: the epoch and offset of the last message it received."""

    epoch: str
    offset: int


@attrs.define(eq=True)
class Entry:
    """One message of a stream: its position, its encoded push body (the JSON object without
    its opening brace and without ``type``, ``seq``, ``epoch`` or ``offset``), and when it was
    sequenced (the sequencer's clock, for the age bound).

    Never changed once made, but not ``frozen``: several are made per message (a draft, the
    numbered entry, one per node it reaches), and a frozen class's ``__init__`` costs three
    times as much (1.4 against 0.46 us: it sets each field through ``object.__setattr__``).
    """

    offset: int
    epoch: str
    body: bytes
    message_id: str
    stamp: float
    skip_user: str | None = None  # not delivered to this user's connections (a room send)
    except_session: str | None = None  # nor to this connection (the sender's, except_self)

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.offset)


class Gap(RoomdError):
    """The log no longer holds everything after the position asked for."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.HISTORY_GAP, message)


class StreamLog:
    """The last messages of one stream, in offset order, at most ``max_count`` and none older
    than ``max_age`` seconds (as of the last append or trim)."""

    __slots__ = ("_entries", "max_age", "max_count", "start")

    _NONE: Final[collections.deque[Entry]] = collections.deque(maxlen=0)  # shared, stays empty

    def __init__(self, max_count: int, max_age: float) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self._entries = self._NONE  # a deque of its own from the first entry (600 bytes)
        self.start = 0  # the offset before the first entry held (what was trimmed ends here)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    @property
    def last(self) -> Entry | None:
        return self._entries[-1] if self._entries else None

    @property
    def tail(self) -> int:
        """The offset of the last message (``start`` when none is held)."""
        return self._entries[-1].offset if self._entries else self.start

    def append(self, entry: Entry, now: float) -> bool:
        """Add the next message; ``False`` (and nothing added) for one already held or older.
        A message past a hole is added all the same: the hole is what :meth:`since` refuses."""
        if entry.offset <= self.tail:
            return False
        if not self._entries:
            if self._entries is self._NONE:
                self._entries = collections.deque()
            if not self.start:  # the first message: what came before is not held here
                self.start = entry.offset - 1
        self._entries.append(entry)
        self.trim(now)
        return True

    def trim(self, now: float) -> None:
        entries = self._entries
        while entries and (len(entries) > self.max_count or now - entries[0].stamp > self.max_age):
            self.start = entries.popleft().offset

    def since(self, position: Position | None) -> list[Entry]:
        """The messages after ``position`` (all held, for ``None``).

        A position of another epoch is read by its offset: epochs continue each other's
        numbering. Error handling: :class:`Gap` if messages after the position were trimmed, or
        never arrived here.
        """
        after = 0 if position is None else position.offset
        if position is not None and after < self.start:
            raise Gap(f"offsets {after + 1}..{self.start} are no longer held")
        if position is not None:
            self._check_epoch(position)
        found = [e for e in self._entries if e.offset > after]
        expected = after + 1 if position is not None else self.start + 1
        for entry in found:
            if entry.offset != expected:
                raise Gap(f"offset {expected} is missing")
            expected += 1
        return found

    def _check_epoch(self, position: Position) -> None:
        """The client's last message must be the one this log holds at its offset: after a
        sequencer was lost, a new epoch may have numbered other messages with the same offsets."""
        if not position.epoch:
            return  # a position taken before any message: nothing to check
        for entry in reversed(self._entries):
            if entry.offset == position.offset:
                if entry.epoch != position.epoch:
                    raise Gap(f"offset {position.offset} belongs to another epoch")
                return
            if entry.offset < position.offset:
                if entry.epoch != position.epoch:
                    raise Gap(f"offset {position.offset} of epoch {position.epoch} is unknown")
                return

    def stamped_since(self, stamp: float) -> list[Entry]:
        """The last messages, from the first stamped at ``stamp`` or later (read from the end:
        numbered in order, stamped in order)."""
        found: list[Entry] = []
        for entry in reversed(self._entries):
            if entry.stamp < stamp:
                break
            found.append(entry)
        found.reverse()
        return found

    def last_n(self, count: int) -> list[Entry]:
        if count <= 0:
            return []
        return list(self._entries)[-count:]


class Sequencer:
    """The numbering of one stream at its sequencer: the epoch, the next offset, and the ids of
    the messages numbered lately (a message sent again gets its first position, not a second)."""

    __slots__ = ("_ids", "epoch", "log")

    def __init__(self, log: StreamLog, epoch: str | None = None) -> None:
        self.log = log
        self.epoch = epoch or new_epoch()
        self._ids: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        for entry in log:
            self._remember(entry)

    def number(
        self,
        body: bytes,
        message_id: str,
        now: float,
        skip_user: str | None = None,
        except_session: str | None = None,
    ) -> tuple[Entry, bool]:
        """The message's entry, and whether it is new (``False``: sent before, here it is)."""
        known = self._ids.get(message_id)
        if known is not None:
            return known, False
        entry = Entry(
            self.log.tail + 1, self.epoch, body, message_id, now, skip_user, except_session
        )
        self.log.append(entry, now)
        self._remember(entry)
        return entry, True

    def _remember(self, entry: Entry) -> None:
        self._ids[entry.message_id] = entry
        if len(self._ids) > DEDUPE_WINDOW:
            self._ids.popitem(last=False)


def with_position(body: bytes, epoch: str, offset: int) -> bytes:
    """A push body with its stream position in front (bodies are JSON objects without their
    opening brace)."""
    return b'"epoch":"%s","offset":%d,%s' % (epoch.encode(), offset, body)


@attrs.frozen
class HistoryLimits:
    """How much of each stream a node keeps."""

    max_messages: int = 1000
    max_age: float = 120.0  # seconds


class StreamStore:
    """The logs this node keeps and the streams it sequences."""

    def __init__(self, limits: HistoryLimits) -> None:
        self.limits = limits
        self.logs: dict[StreamKey, StreamLog] = {}
        self.sequencers: dict[StreamKey, Sequencer] = {}

    def log(self, stream: StreamKey) -> StreamLog:
        log = self.logs.get(stream)
        if log is None:
            log = self.logs[stream] = StreamLog(self.limits.max_messages, self.limits.max_age)
        return log

    def sequencer(self, stream: StreamKey) -> Sequencer:
        """This node's numbering of ``stream`` (a new epoch, from the log it holds, if none)."""
        sequencer = self.sequencers.get(stream)
        if sequencer is None:
            sequencer = self.sequencers[stream] = Sequencer(self.log(stream))
        return sequencer

    def record(self, stream: StreamKey, entry: Entry, now: float) -> bool:
        """Keep a copy of a message delivered here; ``False`` if it was held already."""
        return self.log(stream).append(entry, now)

    def trim(self, now: float) -> None:
        """Trim every log by age, and forget the empty ones nobody sequences here."""
        for stream, log in list(self.logs.items()):
            log.trim(now)
            if not len(log) and stream not in self.sequencers:
                del self.logs[stream]
