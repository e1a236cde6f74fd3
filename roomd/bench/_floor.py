"""What this machine charges for the steps no code of ours can avoid (part of ``micro``).

Two figures bound the server CPU of every message, whatever the node does in Python:

* a **ZeroMQ hop**: one message from a PUB to a SUB over TCP on 127.0.0.1 (libzmq's I/O thread
  on each side, then the receiving thread): the process CPU per message (all threads, from its
  CPU-time clock), sent one at a time, a millisecond apart (each wakes every thread on its way,
  as at a moderate rate), and in bursts of 100 (sent back to back, then received: the threads
  stay awake and libzmq batches). A bus message through the broker is two hops, with the
  broker's own thread in between;
* a **loopback send**: one ``send()`` of a 160-byte WebSocket frame on a TCP connection whose
  reader (a thread asleep in ``epoll``, as a client waits) must be woken, and the same sends
  back to back (the reader already awake): the sending thread's CPU per call. Every delivery
  to a connection costs one.

The loop's own cost (the sleeps between messages) is measured alone and subtracted.

And what waking up costs, which is what a message at a moderate rate pays on every process it
passes through: a thread asleep on a socket, woken by one byte, reads it and answers, 2 ms
apart (``idle``: as a node between the messages of W2 rate) and back to back (``busy``), its
own CPU per message: woken from a plain ``epoll`` set (``wake_epoll_*``) and from Trio's
``wait_readable`` (``wake_trio_*``, the scheduler's pass included). With it, the same small
piece of Python (``python_*``: a dict of 300 strings built and summed) timed right after each
wake-up: on this machine kind the same code runs several times slower after a sleep than
back to back (its caches went cold meanwhile), and that, more than any step of ours, is why a
message at a moderate rate costs several times one in a burst.
"""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time
from collections.abc import Callable

import trio
import zmq

_GAP = 0.001  # seconds between two messages sent one at a time


def _process_cpu_per(run: int, step: Callable[[], None], gap: float) -> float:
    """Process CPU microseconds per ``step()`` over ``run`` steps ``gap`` seconds apart."""
    start = time.process_time_ns()
    for _ in range(run):
        step()
        if gap:
            time.sleep(gap)
    return (time.process_time_ns() - start) / run / 1000


def zmq_hop_us(messages: int = 2000) -> tuple[float, float]:
    """CPU per ZeroMQ hop (PUB to SUB over TCP, one process): one at a time, in bursts."""
    ctx = zmq.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        pub = ctx.socket(zmq.PUB)
        sub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.LINGER, 0)
        sub.bind("tcp://127.0.0.1:*")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub.connect(sub.getsockopt_string(zmq.LAST_ENDPOINT))
        while True:  # the slow joiner: until a probe comes through
            pub.send(b"probe")
            if sub.poll(100):
                break
        while sub.poll(100):
            sub.recv()
        message = b"x" * 200

        def receive() -> None:
            # (polled first: a blocking recv() after a burst was seen to wait forever here)
            if not sub.poll(5000):
                raise RuntimeError("a ZeroMQ message sent on 127.0.0.1 did not arrive")
            sub.recv()

        def hop() -> None:
            pub.send(message)
            receive()

        def hops() -> None:
            for _ in range(100):
                pub.send(message)
            for _ in range(100):
                receive()

        loop = _process_cpu_per(messages, lambda: None, _GAP)
        one = _process_cpu_per(messages, hop, _GAP) - loop
        burst = _process_cpu_per(max(1, messages // 20), hops, 0.0) / 100
        return max(0.0, one), burst
    finally:
        ctx.destroy(linger=0)


def loopback_send_us(connections: int = 100, rounds: int = 100) -> tuple[float, float]:
    """The sending thread's CPU per ``send()`` of a frame: reader asleep, reader awake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    port = listener.getsockname()[1]
    readers = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    writers = [listener.accept()[0] for _ in range(connections)]
    listener.close()
    for w in writers:
        w.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = threading.Event()

    def read() -> None:
        poller = select.epoll()
        by_fd = {}
        for r in readers:
            r.setblocking(False)
            poller.register(r.fileno(), select.EPOLLIN)
            by_fd[r.fileno()] = r
        while not stop.is_set():
            for fd, _ in poller.poll(0.05):
                by_fd[fd].recv(1 << 16)
        poller.close()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    frame = b"\x81\x7e\x00\x9c" + b"x" * 156
    try:

        def per_send(gap: float) -> float:
            start = time.thread_time_ns()
            for _ in range(rounds):
                for w in writers:
                    w.send(frame)
                if gap:
                    time.sleep(gap)
            return (time.thread_time_ns() - start) / (rounds * connections) / 1000

        time.sleep(0.1)
        asleep = per_send(0.02)  # (20 ms: the reader has gone back to sleep each round)
        awake = per_send(0.0)
        return asleep, awake
    finally:
        stop.set()
        thread.join()
        for s in readers + writers:
            s.close()


_WAKE_GAP = 0.002  # seconds between the messages of an idle wake-up measurement


def _work() -> int:
    """A small fixed piece of Python (about 40 µs on this machine kind, warm)."""
    built = {i: str(i) for i in range(300)}
    return sum(len(v) for v in built.values())


def _answer_from_epoll(sock: socket.socket, messages: int, out: dict[str, float]) -> None:
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    work_ns = []
    start = time.thread_time_ns()
    for _ in range(messages):
        poller.poll()
        sock.send(sock.recv(1))
        before = time.thread_time_ns()
        _work()
        work_ns.append(time.thread_time_ns() - before)
    total = time.thread_time_ns() - start - sum(work_ns)
    poller.close()
    out["wake"] = total / messages / 1000
    out["python"] = statistics.median(work_ns) / 1000


def _answer_from_trio(sock: socket.socket, messages: int, out: dict[str, float]) -> None:
    async def answer() -> float:
        start = time.thread_time_ns()
        for _ in range(messages):
            await trio.lowlevel.wait_readable(sock)
            sock.send(sock.recv(1))
        return (time.thread_time_ns() - start) / messages / 1000

    out["wake"] = trio.run(answer)


def _wake_up_us(
    answer: Callable[[socket.socket, int, dict[str, float]], None], messages: int, gap: float
) -> dict[str, float]:
    """The answering thread's CPU per message, ``messages`` sent ``gap`` seconds apart."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    out: dict[str, float] = {}
    thread = threading.Thread(target=answer, args=(theirs, messages, out), daemon=True)
    thread.start()
    try:
        ours.settimeout(5)
        for _ in range(messages):
            ours.send(b"x")
            ours.recv(1)
            if gap:
                time.sleep(gap)
        thread.join(5)
    finally:
        ours.close()
        theirs.close()
    if "wake" not in out:
        raise RuntimeError("the answering thread did not finish")
    return out


def wake_up_costs(messages: int = 500) -> dict[str, float]:
    """What a wake-up costs the woken thread, idle and busy, from epoll and from Trio; and
    the same Python right after one (see the module's docstring)."""
    figures: dict[str, float] = {}
    for gap, when in ((_WAKE_GAP, "idle"), (0.0, "busy")):
        plain = _wake_up_us(_answer_from_epoll, messages, gap)
        figures[f"wake_epoll_{when}_us"] = plain["wake"]
        figures[f"python_{when}_us"] = plain["python"]
        figures[f"wake_trio_{when}_us"] = _wake_up_us(_answer_from_trio, messages, gap)["wake"]
    return figures


def measure_floor(count: int = 20_000) -> dict[str, float]:
    """The figures above (``count``: the micro workload's, which sizes them: 2,000 messages
    and 100 rounds of sends to 100 connections, and 500 wake-ups of each kind, for the
    default)."""
    one, burst = zmq_hop_us(max(20, count // 10))
    asleep, awake = loopback_send_us(rounds=max(5, count // 200))
    return {
        "zmq_hop_one_us": one,
        "zmq_hop_burst_us": burst,
        "send_reader_asleep_us": asleep,
        "send_reader_awake_us": awake,
        **wake_up_costs(max(20, count // 40)),
    }
