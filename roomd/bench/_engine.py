"""The load generator's I/O: many WebSocket client connections on one epoll loop.

No framework and no task per connection: one ``select.epoll`` over non-blocking sockets, each
readable socket read once per wake-up (up to 256 KiB, so a burst arrives in few reads), its
frames parsed by :class:`~._ws.FrameReader` and each text frame decoded with orjson. The time
of arrival is taken once per read. The engine knows the roomd handshake (upgrade, ``hello`` ->
``welcome``, optionally ``room.join`` -> ``ack``), answers WebSocket pings, counts ``error``
frames and close codes, and hands bench pushes to the :class:`Sink` of the running phase.

Connections opened with sessions (:meth:`Engine.open` with ``urls``) resume when they drop, as
the Trio client does (:mod:`._resume`): the user's next connection presents its session and its
positions, to the node a ``reconnect`` frame names, or after the client's backoff to its node,
or to the next node when a connection cannot be opened. A phase's receipts follow the user from
one connection to the next.

Resource handling: the engine owns every socket it opened; :meth:`Engine.close_all` and
process exit release them. Every loop is bounded by a deadline (see :meth:`Engine.run`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import attrs
import orjson

from . import _ws
from ._resume import Address, Session
from ._stats import Receipts

RECV_SIZE: Final = 256 * 1024
MAX_HEAD: Final = 16 * 1024  # an upgrade answer longer than this is refused
JOIN_ID: Final = 1  # the event id of the room.join sent after the welcome
MAX_WAIT: Final = 0.05  # seconds: the longest epoll wait, so callers' ticks run often enough
BENCH_EVENT: Final = "bench"

# Connection states.
CONNECTING: Final = 0
UPGRADING: Final = 1
HELLO: Final = 2
JOINING: Final = 3
OPEN: Final = 4
CLOSING: Final = 5
CLOSED: Final = 6
SECURING: Final = 7  # the TLS handshake, between CONNECTING and UPGRADING
_OPENING: Final = (CONNECTING, SECURING, UPGRADING, HELLO, JOINING)
_WOULD_BLOCK: Final = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_HELLO = orjson.dumps({"type": "hello", "v": 1, "client": "roomd-bench"})
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


class Sink(Protocol):
    """What receives the bench pushes (and the acks of the sends) while a phase runs."""

    def record(self, conn: Conn, data: Any, now: int, numbered: bool) -> None: ...

    def acked(self, conn: Conn, frame: dict[str, Any], now: int) -> None: ...


@attrs.frozen
class Target:
    """A connection to open: who, where, and the room to join once welcomed."""

    user: str
    host: str
    port: int
    room: str | None = None
    token: str | None = None  # a JWT; without one, dev mode's ?user=NAME is used

    def path(self) -> str:
        return f"/ws?token={self.token}" if self.token else f"/ws?user={self.user}"


class Conn:
    """One client connection and what the current phase expects of it."""

    __slots__ = (
        "closed_at",
        "deflate",
        "error",
        "expect",
        "fd",
        "head",
        "key",
        "opened_at",
        "out",
        "out_len",
        "ponged",
        "reader",
        "receipts",
        "replay_left",
        "session",
        "sock",
        "started_at",
        "state",
        "target",
        "tls",
        "writing",
    )

    def __init__(self, target: Target, *, deflate: bool = False, tls: bool = False) -> None:
        self.target = target
        self.deflate = deflate  # offer permessage-deflate
        self.tls = tls
        self.sock: socket.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = self.sock.fileno()
        self.state = CONNECTING
        self.key = _ws.new_key()
        self.head = b""
        self.reader = _ws.FrameReader()
        self.out: list[bytes] = []
        self.out_len = 0
        self.writing = False  # registered for EPOLLOUT
        self.started_at = 0
        self.opened_at = 0
        self.closed_at = 0
        self.error: str | None = None
        self.ponged = False
        self.expect: dict[int, int] | None = None  # sender index -> slot in the receipts
        self.receipts: Receipts | None = None  # while a phase runs
        self.session: Session | None = None  # when it resumes after a drop
        self.replay_left = 0  # pushes of a resume's replay still to come

    @property
    def user(self) -> str:
        return self.target.user

    @property
    def is_open(self) -> bool:
        return self.state == OPEN


class Engine:
    """All connections of one driver process and the loop that serves them."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.conns: dict[int, Conn] = {}  # by fd, while the socket is registered
        self.by_user: dict[str, Conn] = {}
        self.sink: Sink | None = None
        self.errors: collections.Counter[str] = collections.Counter()  # error frames by code
        self.error_messages: list[str] = []  # the first few, for the report
        self.closes: collections.Counter[int] = collections.Counter()  # close codes received
        self.failures: collections.Counter[str] = collections.Counter()  # failed opens by reason
        self.retries: collections.Counter[str] = collections.Counter()  # failed reconnects
        self.frames_in = 0
        self.last_frame_at = 0
        self.pings_answered = 0
        self.pongs = 0
        self.handshaking = 0
        self.released = 0  # connections closed so far, for phases watching their receivers
        self.sessions: dict[str, Session] = {}  # by user: the users that resume
        self._due: list[tuple[int, int, str]] = []  # (when, tie-breaker, user): reconnects
        self._due_count = 0
        self._watched = -1  # a file descriptor :meth:`serve_until_readable` waits for
        self._readable = False
        self._options = (False, False)  # deflate, tls of the connections opened last
        # TLS to the benchmark's own nodes, whose certificate is made for the run: not checked.
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    # The loop -----------------------------------------------------------------------------------

    def run(
        self,
        until: Callable[[], bool],
        deadline: int,
        tick: Callable[[int], int | None] | None = None,
    ) -> bool:
        """Serve every connection until ``until()`` holds (``True``) or ``deadline`` passes
        (``False``). ``tick(now)`` runs on every turn and returns when it next wants to run."""
        epoll, conns = self._epoll, self.conns
        while True:
            now = time.monotonic_ns()
            wake = tick(now) if tick is not None else None
            if self._due:
                due = self._reconnect_due(now)
                wake = due if wake is None or (due is not None and due < wake) else wake
            if until():
                return True
            now = time.monotonic_ns()
            if now >= deadline:
                return False
            wait = min(deadline, wake if wake is not None else deadline) - now
            for fd, events in epoll.poll(max(0.0, min(wait / 1e9, MAX_WAIT))):
                conn = conns.get(fd)
                if conn is None:
                    self._readable = self._readable or fd == self._watched
                    continue
                if conn.state == SECURING:
                    self._secure(conn)
                    continue
                if events & _OUT:
                    self._on_writable(conn)
                if events & ~_OUT and conn.state != CLOSED:
                    self._on_readable(conn)

    def pump(self, seconds: float) -> None:
        """Serve the connections for ``seconds`` (answering pings, reading what comes)."""
        self.run(lambda: False, time.monotonic_ns() + int(seconds * 1e9))

    def serve_until_readable(self, fd: int) -> None:
        """Serve the connections until ``fd`` (not a connection's) has something to read: a
        driver waiting for its next command goes on answering the nodes' pings, or a node
        would close its connections (4004) while another driver's command runs long."""
        self._epoll.register(fd, _IN)
        self._watched, self._readable = fd, False
        try:
            self.run(lambda: self._readable, time.monotonic_ns() + int(1e18))
        finally:
            self._epoll.unregister(fd)
            self._watched = -1

    # Opening ------------------------------------------------------------------------------------

    def open(
        self,
        targets: Iterable[Target],
        concurrency: int,
        deadline: int,
        *,
        deflate: bool = False,
        tls: bool = False,
        urls: list[Address] | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Conn]:
        """Open connections, at most ``concurrency`` handshakes at a time, until all are open
        or failed, or the deadline; the connections in the order of ``targets``. ``deflate``
        offers permessage-deflate; ``tls`` speaks TLS (wss://). With ``urls`` (every node), each
        user resumes its session after a drop (see :mod:`._resume`): its node first, then the
        others in that order. ``progress(now, handshakes done)`` runs on every turn."""
        pending = collections.deque(targets)
        started: list[Conn] = []
        self._options = (deflate, tls)
        if urls is not None:
            for target in pending:
                home = (target.host, target.port)
                ordered = [home, *(u for u in urls if u != home)]
                rng = random.Random(f"{seed}:{target.user}")
                self.sessions[target.user] = Session(target.user, ordered, rng)

        def tick(now: int) -> None:
            while pending and self.handshaking < concurrency:
                started.append(self._start(pending.popleft(), now, deflate, tls))
            if progress is not None:
                progress(now, len(started) - self.handshaking)

        self.run(lambda: not pending and self.handshaking == 0, deadline, tick)
        for conn in started:
            if conn.state not in (OPEN, CLOSED):
                self._fail(conn, "timeout")
        if pending:
            self.failures["not started"] += len(pending)
        return started

    def _start(self, target: Target, now: int, deflate: bool, tls: bool) -> Conn:
        conn = Conn(target, deflate=deflate, tls=tls)
        conn.started_at = now
        conn.session = self.sessions.get(target.user)
        if conn.session is not None:
            conn.session.connecting(now)
        self.handshaking += 1
        previous = self.by_user.get(target.user)
        if previous is not None and previous.session is not None:  # receipts follow the user
            conn.expect, conn.receipts = previous.expect, previous.receipts
        self.by_user[target.user] = conn
        err = conn.sock.connect_ex((target.host, target.port))
        if err not in (0, errno.EINPROGRESS):
            self.conns[conn.fd] = conn
            self._fail(conn, errno.errorcode.get(err, str(err)))
            return conn
        self.conns[conn.fd] = conn
        self._epoll.register(conn.fd, _IN | _OUT)
        conn.writing = True
        return conn

    def _opened_now(self, conn: Conn) -> None:
        conn.state = OPEN
        conn.opened_at = time.monotonic_ns()
        self.handshaking -= 1

    # Writing ------------------------------------------------------------------------------------

    def send(self, conn: Conn, data: bytes) -> None:
        """Queue ``data`` and write what the kernel takes now."""
        conn.out.append(data)
        conn.out_len += len(data)
        if not conn.writing:
            self.flush(conn)

    def queue(self, conn: Conn, data: bytes) -> None:
        """Queue ``data`` without writing (call :meth:`flush` after a batch)."""
        conn.out.append(data)
        conn.out_len += len(data)

    def flush(self, conn: Conn) -> None:
        if not conn.out or conn.state == CLOSED or conn.state == CONNECTING:
            return
        data = conn.out[0] if len(conn.out) == 1 else b"".join(conn.out)
        try:
            sent = conn.sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except OSError as exc:
            self._fail(conn, errno.errorcode.get(exc.errno or 0, str(exc)))
            return
        if sent == len(data):
            conn.out.clear()
            conn.out_len = 0
            if conn.writing:
                conn.writing = False
                self._epoll.modify(conn.fd, _IN)
            return
        rest = data[sent:]
        conn.out[:] = [rest]
        conn.out_len = len(rest)
        if not conn.writing:
            conn.writing = True
            self._epoll.modify(conn.fd, _IN | _OUT)

    def _on_writable(self, conn: Conn) -> None:
        if conn.state == CONNECTING:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(conn, errno.errorcode.get(err, str(err)))
                return
            if conn.tls:
                conn.sock = self._tls.wrap_socket(conn.sock, do_handshake_on_connect=False)
                conn.state = SECURING
                self._secure(conn)
                return
            self._upgrade_request(conn)
        self.flush(conn)
        if not conn.out and conn.writing:
            conn.writing = False
            self._epoll.modify(conn.fd, _IN)

    def _upgrade_request(self, conn: Conn) -> None:
        conn.state = UPGRADING
        target = conn.target
        request = _ws.upgrade_request(
            target.host, target.port, target.path(), conn.key, deflate=conn.deflate
        )
        self.queue(conn, request)

    def _secure(self, conn: Conn) -> None:
        """A step of the TLS handshake; once done, the upgrade request goes out."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, write=False)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, write=True)
            return
        except OSError as exc:
            self._fail(conn, f"TLS: {exc}")
            return
        self._upgrade_request(conn)
        self.flush(conn)

    def _want(self, conn: Conn, write: bool) -> None:
        if conn.writing != write:
            conn.writing = write
            self._epoll.modify(conn.fd, _IN | _OUT if write else _IN)

    # Reading ------------------------------------------------------------------------------------

    @staticmethod
    def _receive(sock: socket.socket) -> bytes | None:
        """What can be read now (``None``: nothing yet; ``b""``: the end). Over TLS every
        decrypted record is taken, since the kernel no longer signals what the TLS layer holds."""
        if not isinstance(sock, ssl.SSLSocket):
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                return None
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(RECV_SIZE)
            except _WOULD_BLOCK:
                break
            if not chunk:
                if not chunks:
                    return b""
                break
            chunks.append(chunk)
        return b"".join(chunks) if chunks else None

    def _on_readable(self, conn: Conn) -> None:
        try:
            data = self._receive(conn.sock)
        except OSError as exc:
            self._fail(conn, errno.errorcode.get(exc.errno or 0, str(exc)))
            return
        if data is None:
            return
        if not data:
            self._gone(conn)
            return
        now = time.monotonic_ns()
        if conn.state == UPGRADING:
            data = self._upgrade(conn, data)
            if not data:
                return
        try:
            frames = conn.reader.feed(data)
        except _ws.ServerProtocolError as exc:
            self._fail(conn, str(exc))
            return
        self.frames_in += len(frames)
        for opcode, payload in frames:
            if opcode != _ws.OP_PING:  # (a node pings idle connections: that is not traffic)
                self.last_frame_at = now
            if opcode == _ws.OP_TEXT:
                self._on_text(conn, payload, now)
                if conn.state == CLOSED:
                    return  # (it dropped the connection: what follows is not read)
            elif opcode == _ws.OP_PING:
                self.pings_answered += 1
                self.send(conn, _ws.client_frame(payload, _ws.OP_PONG))
            elif opcode == _ws.OP_CLOSE:
                self._on_close_frame(conn, payload)
                return

    def _upgrade(self, conn: Conn, data: bytes) -> bytes:
        """Collect the answer to the upgrade; what follows it (frames), once complete."""
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.head) > MAX_HEAD:
                self._fail(conn, "upgrade answer too long")
            return b""
        head, rest = conn.head[:end], conn.head[end + 4 :]
        conn.head = b""
        try:
            _ws.check_upgrade_response(head, conn.key)
        except _ws.HandshakeFailed as exc:
            self._fail(conn, f"upgrade: {exc}")
            return b""
        conn.state = HELLO
        hello = _HELLO if conn.session is None else orjson.dumps(conn.session.hello())
        self.send(conn, _ws.client_frame(hello))
        return rest

    def _on_text(self, conn: Conn, payload: bytes, now: int) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("type")
        session = conn.session
        if kind == "push":
            if frame.get("event") == BENCH_EVENT and self.sink is not None:
                self.sink.record(conn, frame.get("data"), now, "seq" in frame)
            if session is not None:
                session.saw(frame)
                if conn.replay_left and "seq" in frame:
                    conn.replay_left -= 1
                    if not conn.replay_left:
                        session.replay_done(now)
        elif kind == "welcome":
            if conn.state == HELLO:
                room = conn.target.room
                if session is not None and session.welcomed(frame, now):
                    conn.replay_left = int(frame.get("replayed", 0))
                    self._opened_now(conn)  # the session kept its rooms
                elif room is None:
                    self._opened_now(conn)
                else:
                    conn.state = JOINING
                    join = {"type": "event", "id": JOIN_ID, "event": "room.join"}
                    join["data"] = {"room": room}
                    self.send(conn, _ws.client_frame(orjson.dumps(join)))
        elif kind == "ack":
            if conn.state == JOINING and frame.get("id") == JOIN_ID:
                error = frame.get("error")
                if error:
                    self._fail(conn, f"room.join: {error.get('code')}")
                else:
                    if session is not None and conn.target.room is not None:
                        session.joined("/", conn.target.room, frame.get("result"))
                    self._opened_now(conn)
            elif self.sink is not None:
                self.sink.acked(conn, frame, now)
        elif kind == "reconnect":
            if session is not None:
                session.moved(str(frame.get("url")), list(frame.get("alternates") or ()))
                self.closes[1001] += 1
                self._release(conn, cause="reconnect frame")  # dropped, as the client does
        elif kind == "pong":
            conn.ponged = True
            self.pongs += 1
        elif kind == "error":
            code = str(frame.get("code"))
            self.errors[code] += 1
            if len(self.error_messages) < 5:
                self.error_messages.append(f"{conn.user}: {code}: {frame.get('message')}")

    # Closing ------------------------------------------------------------------------------------

    def _on_close_frame(self, conn: Conn, payload: bytes) -> None:
        code = _ws.close_code(payload)
        self.closes[code] += 1
        if conn.state != CLOSING:
            if conn.state != OPEN:
                self.failures[f"closed {code} while opening"] += 1
                self.handshaking -= 1
            with contextlib.suppress(OSError):
                conn.sock.send(_ws.close_frame(code if code != 1005 else 1000))
        self._release(conn, code, cause=f"closed {code}")

    def _gone(self, conn: Conn) -> None:
        """The server closed the TCP connection."""
        if conn.state == CLOSING:
            self._release(conn)
            return
        if conn.state == OPEN:
            self.closes[1006] += 1
            self._release(conn, cause="connection lost")
            return
        self._fail(conn, "connection closed by server")

    def _fail(self, conn: Conn, reason: str) -> None:
        if conn.state in _OPENING:
            if conn.session is not None and conn.session.reconnecting:
                self.retries[reason] += 1  # a reconnect's attempt: the session tries on
            else:
                self.failures[reason] += 1
            self.handshaking -= 1
            conn.error = reason
        elif conn.state == OPEN:
            self.closes[1006] += 1
            conn.error = reason
        self._release(conn, cause=reason)

    def _release(self, conn: Conn, code: int | None = None, *, cause: str = "") -> None:
        """Close the socket; a user with a session reconnects (unless the workload closed it:
        :meth:`close`, :meth:`drop`)."""
        if conn.state == CLOSED:
            return
        opened = conn.state in (OPEN, CLOSING)
        on_purpose = conn.state == CLOSING
        conn.state = CLOSED
        self.released += 1
        conn.closed_at = time.monotonic_ns()
        if self.conns.pop(conn.fd, None) is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(conn.fd)
        conn.sock.close()
        conn.out.clear()
        session = conn.session
        if session is None or on_purpose or self.by_user.get(conn.user) is not conn:
            return
        if session.sid is None and not session.reconnecting:
            return  # never welcomed: a failed open, not a drop
        delay = session.dropped(code, opened, conn.closed_at, cause=cause)
        if delay is not None:
            self._schedule(session.user, conn.closed_at + int(delay * 1e9))

    # Reconnecting -------------------------------------------------------------------------------

    def _schedule(self, user: str, when: int) -> None:
        self._due_count += 1
        heapq.heappush(self._due, (when, self._due_count, user))

    def _reconnect_due(self, now: int) -> int | None:
        """Start the reconnects that are due; when the next one is (``None``: none waits)."""
        due = self._due
        deflate, tls = self._options
        while due and due[0][0] <= now:
            _, _, user = heapq.heappop(due)
            old = self.by_user.get(user)
            session = self.sessions.get(user)
            if session is None or (old is not None and old.state != CLOSED):
                continue  # (already connected again)
            host, port = session.address
            room = old.target.room if old is not None else None
            self._start(Target(user, host, port, room), now, deflate, tls)
        return due[0][0] if due else None

    def reconnecting(self, user: str) -> bool:
        """Whether ``user``'s session is between a drop and its next welcome."""
        session = self.sessions.get(user)
        return session is not None and session.reconnecting

    def drop(self, conn: Conn, pause: float, to: Address) -> None:
        """Cut ``conn`` as a network would: no close frame, the TCP connection reset; its
        session resumes at ``to`` after ``pause`` seconds."""
        session = conn.session
        if conn.state != OPEN or session is None:
            return
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        now = time.monotonic_ns()
        session.dropped_on_purpose(now, to, "dropped")
        conn.state = CLOSING  # (released without scheduling: the workload chose when and where)
        self._release(conn)
        self._schedule(session.user, now + int(pause * 1e9))

    def close(self, conns: Iterable[Conn], deadline: int) -> tuple[int, int]:
        """Close gracefully (close frame, wait for the server's); force what is left at the
        deadline. ``(closed gracefully, forced)``."""
        closing = []
        for conn in conns:
            conn.session = None  # closed by the workload: no session resumes
            self.sessions.pop(conn.user, None)
            if conn.state == OPEN:
                conn.state = CLOSING
                self.send(conn, _ws.close_frame(1000))
                closing.append(conn)
            elif conn.state != CLOSED:
                self._fail(conn, "closed while opening")
        self.run(lambda: all(c.state == CLOSED for c in closing), deadline)
        forced = 0
        for conn in closing:
            if conn.state != CLOSED:
                forced += 1
                self._release(conn)
        for conn in list(self.by_user.values()):
            if conn.state == CLOSED:
                del self.by_user[conn.user]
        return len(closing) - forced, forced
