"""What a run is doing, on stderr while it runs.

On a terminal one status line is redrawn in place about four times a second: the phase, the
seconds since it began, and what the drivers have counted so far (deliveries, or handshakes
while connections open); each phase leaves one line when it ends. Anywhere else (a pipe, a CI
log, a test) only a line when each phase begins and one when it ends.

The drivers' counts travel through a small shared file (:class:`Counters`): one 8-byte slot per
driver, written by that driver only (every :data:`WRITE_EVERY_NS` at most, from its loop) and
read by the orchestrator when it redraws: no message, no system call on the driver's side. The
file exists only on a terminal; elsewhere the drivers are given none and write nothing.

Resource handling: :class:`Progress` owns its :class:`Counters` (closed by :meth:`close`);
a driver's :class:`Cell` is closed by the driver when its phase ends.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
import time
from typing import Any, Final, TextIO

import trio

REDRAW_EVERY: Final = 0.25  # seconds between two redraws of the status line
WRITE_EVERY_NS: Final = 200_000_000  # a driver publishes its count this often at most
SLOT: Final = struct.Struct("<q")
_CLEAR: Final = "\r\x1b[K"


class Counters:
    """The shared file the drivers publish their counts in (one slot per driver)."""

    def __init__(self, slots: int) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(prefix="roomd-bench-", suffix=".progress", dir=directory)
        self.slots = slots
        try:
            os.ftruncate(fd, SLOT.size * slots)
            self._map = mmap.mmap(fd, SLOT.size * slots)
        finally:
            os.close(fd)

    def where(self) -> list[list[Any]]:
        """Each driver's ``[path, slot]`` (what its command carries), all slots zeroed."""
        self._map[:] = bytes(len(self._map))
        return [[self.path, slot] for slot in range(self.slots)]

    def total(self) -> int:
        return sum(SLOT.unpack_from(self._map, i * SLOT.size)[0] for i in range(self.slots))

    def close(self) -> None:
        self._map.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Cell:
    """A driver's slot of :class:`Counters`: :meth:`offer` publishes a count when it is due."""

    def __init__(self, where: list[Any]) -> None:
        path, slot = where
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self._offset = int(slot) * SLOT.size
        self._due = 0

    def offer(self, now_ns: int, count: int) -> None:
        if now_ns >= self._due:
            self.write(count)
            self._due = now_ns + WRITE_EVERY_NS

    def write(self, count: int) -> None:
        SLOT.pack_into(self._map, self._offset, count)

    def close(self) -> None:
        self._map.close()


def open_cell(where: list[Any] | None) -> Cell | None:
    """The cell a command names (``None``: no progress wanted)."""
    return None if where is None else Cell(where)


class Progress:
    """The run's progress on ``stream`` (``None``: nothing at all). ``tty`` defaults to whether
    the stream is a terminal."""

    def __init__(self, stream: TextIO | None, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and (stream.isatty() if tty is None else tty))
        self._counters: Counters | None = None
        self._phase: str | None = None
        self._unit = ""
        self._began = 0.0
        self._note: str | None = None
        self._shown = False

    @classmethod
    def silent(cls) -> Progress:
        return cls(None)

    def counters(self, drivers: int) -> list[list[Any] | None]:
        """What each of ``drivers`` drivers is told to publish its count in (``None`` off a
        terminal: nobody reads it)."""
        if not self.tty:
            return [None] * drivers
        if self._counters is None or self._counters.slots < drivers:
            if self._counters is not None:
                self._counters.close()
            self._counters = Counters(drivers)
        return list(self._counters.where()[:drivers])

    def begin(self, phase: str, unit: str = "deliveries", what: str = "") -> None:
        """A phase begins (its line off a terminal); ``unit``: what the drivers count."""
        self._phase, self._unit, self._began, self._note = phase, unit, time.monotonic(), None
        if self._counters is not None:
            self._counters.where()
        if not self.tty:
            self._line(f"{phase}: started{f' ({what})' if what else ''}")
        else:
            self._draw()

    def end(self, phase: str, summary: str) -> None:
        """The phase ends: one line, on a terminal too."""
        elapsed = time.monotonic() - self._began if self._phase == phase else 0.0
        self._phase = None
        self._line(f"{phase}: done in {elapsed:.1f} s: {summary}")

    def note(self, text: str) -> None:
        """What happens between phases (opening connections ...): on a terminal only."""
        self._note, self._began = text, time.monotonic()
        self._phase = None
        if self.tty:
            self._draw()

    def say(self, text: str) -> None:
        """A line that stays (on a terminal, the status line is drawn again below it)."""
        self._line(text)

    def status(self) -> str | None:
        """The status line as it would be drawn now (``None``: nothing going on)."""
        elapsed = time.monotonic() - self._began
        if self._phase is not None:
            count = self._counters.total() if self._counters is not None else 0
            return f"{self._phase}  {elapsed:5.1f} s  {count:,} {self._unit}"
        if self._note is not None:
            return f"{self._note}  {elapsed:5.1f} s"
        return None

    async def redraw(self) -> None:
        """Redraw the status line every :data:`REDRAW_EVERY` seconds, forever (on a terminal)."""
        if not self.tty:
            return
        while True:
            await trio.sleep(REDRAW_EVERY)
            self._draw()

    def close(self) -> None:
        self._clear()
        if self._counters is not None:
            self._counters.close()
            self._counters = None

    def _draw(self) -> None:
        text = self.status()
        if self.stream is None or text is None:
            return
        self.stream.write(_CLEAR + text)
        self.stream.flush()
        self._shown = True

    def _clear(self) -> None:
        if self.stream is not None and self._shown:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._shown = False

    def _line(self, text: str) -> None:
        if self.stream is None:
            return
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.tty:
            self._draw()
