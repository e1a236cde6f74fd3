"""Run as a process by tests/test_zmq.py: a subscriber with roomd's socket options stops reading
while a publisher floods it (directly, or through an embedded broker), then reads again. With
ZMTP heartbeats on either end, libzmq 4.3.5 aborts this process at that read (libzmq issues
3937 and 4767). Prints how many messages arrived after the stall; exit status 0 if it lived."""

from __future__ import annotations

import sys

import trio

from broker import Broker
from roomd.io import SocketType, make_context, open_socket

STALL_S = 5.0  # longer than any heartbeat timeout libzmq would apply (3 s)


async def main(through_broker: bool) -> None:
    ctx = make_context()
    broker = Broker("tcp://127.0.0.1:0", "tcp://127.0.0.1:0") if through_broker else None
    try:
        async with trio.open_nursery() as nursery:
            async with (
                open_socket(ctx, SocketType.PUB) as pub,
                open_socket(ctx, SocketType.SUB, rcvhwm=100) as sub,
            ):
                if broker is not None:
                    endpoints = broker.bind()
                    nursery.start_soon(trio.to_thread.run_sync, broker.run)
                    pub.connect(endpoints.frontend)
                    sub.connect(endpoints.backend)
                else:
                    sub.connect(pub.bind("tcp://127.0.0.1:0"))
                sub.subscribe(b"t")
                with trio.fail_after(10):
                    while True:  # until the subscription has reached the publisher
                        pub.send_nowait(b"t ready")
                        with trio.move_on_after(0.05):
                            await sub.receive()
                            break
                deadline = trio.current_time() + STALL_S
                while trio.current_time() < deadline:  # flood it; it reads nothing
                    for _ in range(500):
                        pub.send_nowait(b"t " + b"x" * 200)
                    await trio.sleep(0.01)
                received = 0
                with trio.move_on_after(1.0):
                    while True:
                        received += len(await sub.receive_batch())
                print(received)
            if broker is not None:
                broker.stop()
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:] == ["broker"])
