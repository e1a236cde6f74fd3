"""``roomd chat``: its command core with real nodes, and one end-to-end run in a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

from roomd import Node
from roomd.cli import ChatSession
from roomd.client import Client, Lifecycle, open_client
from tests.test_client import FAST, fast_node, run_node, url

ROOT = Path(__file__).resolve().parent.parent


class Transcript:
    """The lines a session printed; :meth:`expect` waits for the next one containing a text."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._pos = 0
        self._changed = trio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def expect(self, text: str) -> str:
        while True:
            changed = self._changed
            for index in range(self._pos, len(self.lines)):
                if text in self.lines[index]:
                    self._pos = index + 1
                    return self.lines[index]
            try:
                await changed.wait()
            except trio.Cancelled:
                print("WAITING FOR", text, self.lines)
                raise


async def test_chat_commands_between_two_users(node: Node) -> None:
    alice_out, bob_out = Transcript(), Transcript()
    with trio.fail_after(5):
        async with (
            open_client(url(node), user="alice", heartbeat_interval=0.02) as a,
            open_client(url(node), user="bob") as b,
        ):
            alice, bob = ChatSession(a, alice_out), ChatSession(b, bob_out)
            await alice.handle("hello?")
            await alice_out.expect("join a room first")
            await bob.handle("/join lobby")
            await bob_out.expect("joined lobby: bob")
            await alice.handle("/join lobby")
            await alice_out.expect("joined lobby: alice, bob")
            await bob_out.expect("* alice joined lobby")

            await alice.handle("hi all")
            await bob_out.expect("[lobby] alice: hi all")
            await alice_out.expect("[lobby] alice: hi all")  # a room send reaches the sender
            await bob.handle("/msg alice psst")
            await alice_out.expect("[bob -> you] psst")
            await bob_out.expect("[you -> alice] psst (accepted by the node as ")
            await bob.handle("/msg carol anyone?")  # carol is not online: the node takes it all
            line = await bob_out.expect("[you -> carol] anyone? (accepted by the node as ")
            assert line.endswith(", delivery not confirmed)")
            await alice.handle("/typing")
            await bob_out.expect("* alice is typing in lobby")
            await alice.handle("/status away lunch")
            await bob_out.expect("* alice is away (lunch)")
            await bob.handle("/members")
            await bob_out.expect("* lobby: alice (away), bob (online)")

            await alice.handle("/who")
            await alice_out.expect("* online (2): alice, bob")
            await alice.handle("/join ops")
            await alice.handle("/rooms")
            await alice_out.expect("* rooms: lobby, *ops")
            await a.subscribe(Lifecycle.RTT).receive()
            await alice.handle("/status")
            line = await alice_out.expect("* open to test as alice; rtt ")
            assert "ms (smoothed" in line and "reconnects 0" in line and "room ops" in line

            await alice.handle("/leave lobby")
            await bob_out.expect("* alice left lobby")
            await alice.handle("/bogus")
            await alice_out.expect("unknown command /bogus")
            await alice.handle("/msg")
            await alice_out.expect("usage: /msg USER TEXT")
            await alice.handle("/members nowhere")
            await alice_out.expect("! not_in_room")
            await alice.handle("/help")
            await alice_out.expect("/join ROOM")
            assert await alice.handle("/quit") is False


async def test_chat_shows_disconnects_and_reconnects(nursery: trio.Nursery) -> None:
    first = fast_node()
    done = await run_node(nursery, first)
    port = first.port
    assert port is not None
    out = Transcript()
    client = Client(url(port), user="alice", backoff=FAST)
    session = ChatSession(client, out)
    with trio.fail_after(10):
        await nursery.start(client.run)
        await out.expect("* connected to test as alice")
        await session.handle("/join lobby")
        first.shutdown()
        await done.wait()
        await out.expect("* disconnected: 1001 going away (reconnecting)")
        await out.expect("* reconnecting in ")
        await session.handle("said while away")  # queued, sent on reconnect
        await run_node(nursery, fast_node(node={"port": port}))
        # A new node at that address: it never held the session, so a new one begins.
        await out.expect("* reconnected to test, a new session (unknown_session; re-joined lobby")
        await out.expect("[lobby] alice: said while away")
        await client.aclose()


async def test_chat_shows_a_resumed_session(nursery: trio.Nursery) -> None:
    node = fast_node()
    await run_node(nursery, node)
    out = Transcript()
    client = Client(url(node), user="alice", backoff=FAST)
    session = ChatSession(client, out)
    with trio.fail_after(10):
        await nursery.start(client.run)
        await out.expect("* connected to test as alice")
        await session.handle("/join lobby")
        await out.expect("joined lobby")
        for transport in list(node._connected.values()):
            transport._break()  # the network drops it
        await out.expect("* resumed on test (0 missed replayed; 0 sent)")
        await client.aclose()


async def test_roomd_chat_end_to_end(node: Node) -> None:
    with trio.fail_after(20):
        async with open_client(url(node), user="bob") as bob:
            await bob.join("lobby")
            messages = bob.subscribe("message")
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            command = [sys.executable, "-m", "roomd.cli", "chat", url(node), "--user", "carol"]
            result = await trio.run_process(
                [*command, "--room", "lobby"],
                stdin=b"hello from carol\n/who\n/quit\n",
                capture_stdout=True,
                capture_stderr=True,
                env=env,
            )
            push = await messages.receive()
            assert push.sender == "carol" and push.data["payload"]["content"] == "hello from carol"
    out = result.stdout.decode()
    assert "connected to test as carol" in out and "joined lobby: bob, carol" in out
    assert "* online (2): bob, carol" in out
