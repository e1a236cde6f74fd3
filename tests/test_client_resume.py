"""The Trio client resumes its session: after a drop it continues where it was, gets what it
missed once and in order, sends again the calls that were not acknowledged, follows a node's
reconnect frame, and fails over to its other URLs."""

from __future__ import annotations

from typing import Any

import trio

from roomd import Context, Node
from roomd.client import Backoff, Lifecycle, Opened, open_client
from roomd.protocol import Push, Reconnect
from tests.support import connect, wait_until
from tests.test_client import fast_node, run_node, url

FAST = Backoff(0.01, 0.05)


def cut(node: Node, user: str) -> None:
    """The network drops ``user``'s connections to ``node`` (no close frame either way)."""
    for conn, transport in list(node._connected.items()):
        if conn.user == user:
            transport._break()


async def test_the_client_resumes_and_gets_what_it_missed_once_in_order() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            node = fast_node()
            await run_node(nursery, node)
            async with connect(node, "bob") as bob:
                await bob.ok("room.join", {"room": "r"})
                async with open_client(url(node), user="alice", backoff=FAST) as alice:
                    await alice.join("r")
                    opened = alice.subscribe(Lifecycle.OPEN)
                    messages = alice.subscribe("message")
                    await bob.ok("send", {"to": {"room": "r"}, "data": _text("one")})
                    assert _content(await messages.receive()) == "one"
                    session = alice.session
                    cut(node, "alice")
                    for word in ("two", "three"):
                        await bob.ok("send", {"to": {"room": "r"}, "data": _text(word)})
                    await bob.ok("send", {"to": {"user": "alice"}, "data": _text("dm")})
                    again: Opened = await opened.receive()
                    assert again.resumed and again.reconnect and alice.session == session
                    assert again.replayed <= 3 and again.rejoined == ()  # (some may come live)
                    got = [_content(await messages.receive()) for _ in range(3)]
                    assert got == ["two", "three", "dm"]
                    await bob.ok("send", {"to": {"room": "r"}, "data": _text("four")})
                    assert _content(await messages.receive()) == "four"
                    assert len(messages) == 0  # nothing twice
            node.shutdown()


async def test_a_call_not_acknowledged_before_the_drop_is_sent_again() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            node = fast_node()
            entered = trio.Event()
            release = trio.Event()
            runs: list[str] = []

            @node.on("slow")
            async def slow(ctx: Context, data: Any) -> Any:
                runs.append(ctx.session_id)
                entered.set()
                await release.wait()
                return {"done": data}

            await run_node(nursery, node)
            async with open_client(url(node), user="alice", backoff=FAST) as alice:
                result: list[Any] = []

                async def call() -> None:
                    result.append(await alice.call("slow", 7, timeout=8))

                nursery.start_soon(call)
                await entered.wait()
                cut(node, "alice")  # the handler's connection goes; the call is unanswered
                await wait_until(lambda: len(runs) == 2)  # sent again once resumed
                release.set()
                await wait_until(lambda: bool(result))
                assert result == [{"done": 7}] and runs[0] == runs[1]  # the same session
            node.shutdown()


async def test_the_client_follows_a_reconnect_frame_to_another_node() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            first, second = fast_node(), fast_node()
            await run_node(nursery, first)
            await run_node(nursery, second)
            async with open_client(url(first), user="alice", backoff=Backoff(5, 10)) as alice:
                opened = alice.subscribe(Lifecycle.OPEN)
                (conn,) = list(first._connected)
                conn.send(Reconnect(f"{url(second)}/ws", "second"))
                moved: Opened = await opened.receive()  # at once: no backoff for a move
                assert alice.url == f"{url(second)}/ws" and moved.reconnect
                assert await alice.online_users() == ["alice"]
            first.shutdown()
            second.shutdown()


async def test_the_client_tries_its_other_urls_when_one_fails() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            node = fast_node()
            await run_node(nursery, node)
            dead = "ws://127.0.0.1:9"  # nothing listens there
            async with open_client(dead, urls=[url(node)], user="alice", backoff=FAST) as alice:
                assert alice.url == url(node) and alice.node == node.name
            node.shutdown()


def _text(content: str) -> dict[str, Any]:
    return {"type": "text", "payload": {"content": content}}


def _content(push: Push) -> str:
    return str(push.data["payload"]["content"])
