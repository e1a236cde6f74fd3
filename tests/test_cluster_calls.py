"""Cluster calls and broadcast-style requests between nodes embedded in this process, over a real
broker process."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from roomd import HandlerError, Node
from tests.cluster_support import HEARTBEAT, Proc, cluster_keys, free_ports
from tests.support import connect, make_config, wait_until

pytestmark = pytest.mark.cluster


class Nodes(dict[str, Node]):
    """Embedded nodes by name; :meth:`crash` stops one without a goodbye."""

    scopes: dict[str, trio.CancelScope]

    async def run(self, node: Node, *, task_status: trio.TaskStatus[int]) -> None:
        if not hasattr(self, "scopes"):
            self.scopes = {}
        with trio.CancelScope() as self.scopes[node.name]:
            await node.run(task_status=task_status)

    def crash(self, name: str) -> None:
        self.scopes[name].cancel()


@asynccontextmanager
async def embedded_cluster(names: list[str], **sections: dict[str, Any]) -> AsyncIterator[Nodes]:
    front, back = free_ports(2)
    keys = cluster_keys(Path(tempfile.mkdtemp(prefix="roomd-keys-")), ["broker", *names])
    broker = Proc(
        "broker",
        [
            sys.executable,
            "-m",
            "broker",
            "--frontend",
            f"tcp://127.0.0.1:{front}",
            "--backend",
            f"tcp://127.0.0.1:{back}",
            "--stats-interval",
            "0",
            "--keys",
            str(keys),
        ],
    )
    async with trio.open_nursery() as nursery:
        await broker.start(nursery)
        try:
            await broker.wait_for(r'^\{"frontend"')
            cluster = {
                "mode": "broker",
                "broker_frontend": f"tcp://127.0.0.1:{front}",
                "broker_backend": f"tcp://127.0.0.1:{back}",
                "heartbeat_interval": HEARTBEAT,
                "call_timeout": 1.0,
                "keys": str(keys),
            }
            config = make_config(cluster=cluster, **sections)
            nodes = Nodes({name: Node(config, name=name) for name in names})
            for node in nodes.values():
                await nursery.start(nodes.run, node)
            for node in nodes.values():  # every node sees every other one
                await wait_until(lambda node=node: len(node.view.nodes_up()) == len(names), 10)
            yield nodes
        finally:
            broker.kill()
            nursery.cancel_scope.cancel()
            shutil.rmtree(keys, ignore_errors=True)


async def test_cluster_call_gathers_replies_and_names_the_missing() -> None:
    with trio.fail_after(20):
        async with embedded_cluster(["n1", "n2", "n3"]) as nodes:
            for name, node in nodes.items():

                @node.on_cluster("whoami")
                async def whoami(data: Any, origin: str, name: str = name) -> Any:
                    return {"me": name, "asked_by": origin, "data": data}

            @nodes["n3"].on_cluster("fails")
            async def fails(data: Any, origin: str) -> Any:
                raise HandlerError("nope", "not today")

            n1 = nodes["n1"]
            out = await n1.cluster_call("whoami", 5)
            assert sorted(out.replies) == ["n1", "n2", "n3"] and out.missing == []
            assert out.replies["n2"] == {"me": "n2", "asked_by": "n1", "data": 5}
            out = await n1.cluster_call("whoami", 1, except_self=True)
            assert sorted(out.replies) == ["n2", "n3"]
            out = await n1.cluster_call("whoami", 1, targets=["n2", "ghost"], timeout=0.3)
            assert list(out.replies) == ["n2"] and out.missing == ["ghost"]
            out = await n1.cluster_call("fails", targets=["n3"])
            assert out.errors == {"n3": {"code": "nope", "message": "not today"}}
            out = await n1.cluster_call("no-such-call", targets=["n2"])
            assert out.errors["n2"]["code"] == "unknown_event"
            out = await n1.cluster_call("whoami", 0, expected=1)
            assert len(out.replies) == 1
            seen = []
            async with n1.cluster_replies("whoami", 2) as (targets, replies):
                assert targets == ["n1", "n2", "n3"]
                async for reply in replies:
                    seen.append(reply.node)
            assert sorted(seen) == ["n1", "n2", "n3"]


async def test_dead_node_is_missing_after_the_timeout() -> None:
    with trio.fail_after(20):
        async with embedded_cluster(["n1", "n2"]) as nodes:

            @nodes["n2"].on_cluster("slow")
            async def slow(data: Any, origin: str) -> Any:
                await trio.sleep(10)

            start = trio.current_time()
            out = await nodes["n1"].cluster_call("slow", targets=["n2"], timeout=0.5)
            assert out.missing == ["n2"] and out.replies == {}
            assert 0.5 <= trio.current_time() - start < 2


async def test_a_crashed_node_is_missing_then_no_longer_called() -> None:
    with trio.fail_after(20):
        async with embedded_cluster(["n1", "n2", "n3"]) as nodes:
            for node in nodes.values():

                @node.on_cluster("name")
                async def name(data: Any, origin: str, node: Node = node) -> Any:
                    return node.name

            nodes.crash("n2")  # no goodbye: n1 still counts it as up for a while
            out = await nodes["n1"].cluster_call("name", timeout=0.5)
            assert out.replies == {"n1": "n1", "n3": "n3"} and out.missing == ["n2"]
            # three missed heartbeats later it is down
            await wait_until(lambda: "n2" not in nodes["n1"].view.nodes_up(), 10)
            out = await nodes["n1"].cluster_call("name", timeout=0.5)
            assert out.replies == {"n1": "n1", "n3": "n3"} and out.missing == []


async def test_the_call_deadline_does_not_cancel_the_callers_block() -> None:
    with trio.fail_after(20):
        async with embedded_cluster(["n1", "n2"]) as nodes:

            @nodes["n2"].on_cluster("slow")
            async def slow(data: Any, origin: str) -> Any:
                await trio.sleep(10)

            finished = False
            async with nodes["n1"].cluster_replies("slow", targets=["n2"], timeout=0.2) as (
                _,
                replies,
            ):
                async for reply in replies:
                    raise AssertionError(reply)
                await trio.sleep(0.3)  # the caller's own work, past the call's deadline
                finished = True
            assert finished


async def test_clients_on_embedded_nodes_talk(start_node: Any) -> None:
    with trio.fail_after(20):
        async with embedded_cluster(["n1", "n2"]) as nodes:
            async with connect(nodes["n1"], "alice") as a, connect(nodes["n2"], "bob") as b:
                # The view is eventually consistent: once alice hears that bob joined the room,
                # n1 knows bob is on n2.
                await a.ok("room.join", {"room": "r"})
                await b.ok("room.join", {"room": "r"})
                for _ in range(10):
                    if (await a.push("room.joined"))["data"]["user"] == "bob":
                        break
                await a.ok("send", {"to": {"user": "bob"}, "event": "hi", "data": 1})
                assert (await b.push("hi"))["from"] == "alice"


async def test_room_send_with_ack_across_nodes() -> None:
    with trio.fail_after(20):
        async with embedded_cluster(["n1", "n2"]) as nodes:
            async with (
                connect(nodes["n1"], "alice") as a,
                connect(nodes["n2"], "bob") as b,
                connect(nodes["n2"], "carol") as c,
            ):
                for x in (a, b, c):
                    await x.ok("room.join", {"room": "r"})
                await wait_until(lambda: len(nodes["n1"].room_members("r")) == 3)
                data = {"to": {"room": "r"}, "event": "q", "ack": True, "timeout": 0.5}
                await a.send({"type": "event", "id": 5, "event": "send", "data": data})
                for x in (a, b):
                    req = await x.expect("request")
                    await x.send({"type": "ack", "id": req["id"], "result": 1})
                await c.expect("request")  # carol does not answer
                ack = await a.expect("ack", id=5)
                counts = {k: v for k, v in ack["result"].items() if k != "messageId"}
            assert counts == {"acked": 2, "errors": 0, "missing": 1, "nodesMissing": []}


async def test_a_node_serves_while_the_broker_is_down_and_joins_once_it_is_up(
    tmp_path: Path,
) -> None:
    front, back = free_ports(2)
    keys = cluster_keys(tmp_path / "keys", ["broker", "n1", "n2"])
    cluster = {
        "mode": "broker",
        "broker_frontend": f"tcp://127.0.0.1:{front}",
        "broker_backend": f"tcp://127.0.0.1:{back}",
        "heartbeat_interval": HEARTBEAT,
        "ready_timeout": 0.5,
        "keys": str(keys),
    }
    endpoints = ["--frontend", cluster["broker_frontend"], "--backend", cluster["broker_backend"]]
    endpoints += ["--keys", str(keys)]
    broker = Proc("broker", [sys.executable, "-m", "broker", *endpoints, "--stats-interval", "0"])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            n1 = Node(make_config(cluster=cluster), name="n1")
            started = trio.current_time()
            await nursery.start(n1.run)  # no broker: ready_timeout, then it serves anyway
            assert trio.current_time() - started < 2
            assert n1.cluster is not None and not n1.cluster.bus.ready
            async with connect(n1, "alice") as alice:
                assert await alice.ok("users.online", {}) == {"users": ["alice"]}
                await broker.start(nursery)
                try:
                    await broker.wait_for(r'^\{"frontend"')
                    await n1.cluster.bus.wait_ready()  # it kept trying: now it is live
                    n2 = Node(make_config(cluster=cluster), name="n2")
                    await nursery.start(n2.run)
                    async with connect(n2, "bob") as bob:
                        await alice.ok("room.join", {"room": "r"})
                        await bob.ok("room.join", {"room": "r"})
                        for _ in range(10):  # n2 learns of alice, n1 of bob
                            if (await bob.push("room.joined"))["data"]["user"] == "alice":
                                break
                        members = await bob.ok("room.members", {"room": "r"})
                        assert [m["user"] for m in members["members"]] == ["alice", "bob"]
                finally:
                    broker.kill()
                    nursery.cancel_scope.cancel()
