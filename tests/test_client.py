"""The Trio client: its sans-I/O core synchronously, then against real nodes on 127.0.0.1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from roomd import Context, HandlerError, Node
from roomd.client import (
    AckError,
    Backoff,
    Client,
    ClientClosed,
    ClientState,
    Closed,
    ConnectFailed,
    ConnectionLost,
    EmitFailed,
    Lifecycle,
    OfflineQueue,
    OfflineQueueFull,
    Opened,
    Pacer,
    PendingCalls,
    Reconnect,
    Reconnecting,
    RequestTimeout,
    RoomSet,
    Rtt,
    Stop,
    SubscriptionOverflow,
    client_url,
    decide,
    open_client,
)
from roomd.client._core import Outgoing
from roomd.client._subscription import Subscriptions
from roomd.node import mint_token
from roomd.protocol import (
    CLOSE_CODES,
    Ack,
    CloseCode,
    ErrorInfo,
    HeartbeatInfo,
    LimitsInfo,
    Welcome,
    encode_frame,
)
from tests.support import SECRET, make_config

FAST = Backoff(base=0.02, max_delay=0.1)
TERMINAL = sorted(code for code, info in CLOSE_CODES.items() if not info.reconnect)
RECONNECT = [1001, 1011, 1013, 4004, 4008, 4009]


# Helpers -----------------------------------------------------------------------------------------


async def run_node(nursery: trio.Nursery, node: Node) -> trio.Event:
    """Start ``node`` in ``nursery``; the event is set once its ``run`` has returned."""
    done = trio.Event()

    async def runner(task_status: trio.TaskStatus[int]) -> None:
        try:
            await node.run(task_status=task_status)
        finally:
            done.set()

    await nursery.start(runner)
    return done


def url(node: Node | int) -> str:
    port = node if isinstance(node, int) else node.port
    return f"ws://127.0.0.1:{port}"


def fast_node(**sections: dict[str, Any]) -> Node:
    sections.setdefault("limits", {}).update(rate=1e6, burst=1_000_000)
    return Node(make_config(**sections))


def echo_handlers(node: Node) -> list[Any]:
    """Register ``echo``, ``note`` (recorded), ``fail`` and ``close`` on ``node``."""
    notes: list[Any] = []

    @node.on("echo")
    async def echo(ctx: Context, data: Any) -> Any:
        return data

    @node.on("note")
    async def note(ctx: Context, data: Any) -> None:
        notes.append(data)

    @node.on("fail")
    async def fail(ctx: Context, data: Any) -> Any:
        raise HandlerError("not_found", "no such thing")

    @node.on("close")
    async def close(ctx: Context, data: Any) -> None:
        ctx.connection.close(int(data))

    return notes


Answer = Callable[[int, dict[str, Any]], dict[str, Any] | str | None]


async def serve_fake(
    nursery: trio.Nursery, *, welcome: bool = True, version: int = 1, answer: Answer | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """A WebSocket server that answers the hello (or not) and then ignores everything, except
    what ``answer(connection number, frame)`` answers: a frame, ``"close"`` (close with 1011),
    or ``None`` (silence).

    Returns its port and the hello frames it received.
    """
    hellos: list[dict[str, Any]] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            hellos.append(orjson.loads(await ws.get_message()))
            if welcome:
                frame = Welcome(
                    v=version,
                    session=f"s{len(hellos)}",
                    resume_token=f"t{len(hellos)}",
                    node="silent",
                    user="alice",
                    heartbeat=HeartbeatInfo(20.0, 45.0),
                    limits=LimitsInfo(65536, 50.0, 100, 100, 4096),
                    resumed=False,
                    seq=0,
                )
                await ws.send_message(encode_frame(frame, False).decode())
            number = len(hellos)
            while True:
                received = orjson.loads(await ws.get_message())
                reply = answer(number, received) if answer is not None else None
                if reply == "close":
                    await ws.aclose(CloseCode.INTERNAL_ERROR)
                elif reply is not None:
                    await ws.send_message(orjson.dumps(reply).decode())
        except ConnectionClosed:
            pass

    serve = functools.partial(serve_websocket, handler, "127.0.0.1", 0, None)
    server = await nursery.start(serve)
    return server.port, hellos


# Sans-I/O core -----------------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter() -> None:
    backoff = Backoff(base=0.5, max_delay=4.0, attempts=5)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(3, lambda: 0.0) == 0.0
    assert backoff.delay(3, lambda: 0.5) == 1.0
    assert backoff.ceiling(10_000) == 4.0  # no float overflow
    assert not backoff.exhausted(5) and backoff.exhausted(6)
    assert not Backoff(attempts=None).exhausted(10**9)
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_decide_never_reconnects_after_a_terminal_code() -> None:
    backoff = Backoff(base=1.0, max_delay=8.0, attempts=3)
    for code in TERMINAL:
        decision = decide(code, 1, backoff, lambda: 0.5)
        assert isinstance(decision, Stop) and not decision.gave_up, code
    assert isinstance(decide(4600, 1, backoff, lambda: 0.5), Stop)  # application terminal range
    for code in [None, 1006, *RECONNECT]:
        assert decide(code, 2, backoff, lambda: 0.5) == Reconnect(2, 1.0)
    gave_up = decide(1001, 4, backoff, lambda: 0.5)
    assert isinstance(gave_up, Stop) and gave_up.gave_up


def test_offline_queue_is_ordered_and_bounded() -> None:
    queue: OfflineQueue[None] = OfflineQueue(3)
    items = [Outgoing("e", n, f"c{n}") for n in range(3)]
    for item in items:
        queue.put(item)
    with pytest.raises(OfflineQueueFull) as exc:
        queue.put(Outgoing("e", 9, "c9"))
    assert exc.value.code == "offline_queue_full" and len(queue) == 3
    assert queue.remove("c1") and not queue.remove("c1")
    first = queue.popleft()
    assert first is items[0]
    queue.put_front(first)
    assert [i.data for i in queue] == [0, 2]
    assert queue.clear() == [items[0], items[2]] and queue.popleft() is None


def test_pacer_keeps_below_the_announced_limit() -> None:
    limits = LimitsInfo(65536, rate=10.0, burst=5, max_rooms=100, max_text_chars=4096)
    pacer = Pacer.from_limits(limits, 0.0, spent=1)  # 9 frames/s, 4.5 at once; the hello spent 1
    assert pacer is not None and (pacer.rate, pacer.burst) == (9.0, 4.5)
    assert [pacer.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert pacer.reserve(0.0) == pytest.approx(0.5 / 9)  # the bucket is in debt: wait
    assert pacer.reserve(0.0) == pytest.approx(1.5 / 9)  # queued behind the previous one
    assert pacer.reserve(0.1) == pytest.approx(1.6 / 9)  # 0.9 refilled, one more taken
    assert pacer.reserve(60.0) == 0.0 and pacer.tokens == pytest.approx(3.5)  # capped at burst
    assert Pacer.from_limits(attrs.evolve(limits, rate=0.0), 0.0) is None


def test_pending_calls_resolve_once_and_fail_all() -> None:
    calls: PendingCalls[str] = PendingCalls()
    a, b = calls.open("a"), calls.open("b")
    assert a != b and len(calls) == 2
    assert calls.resolve(a) == "a" and calls.resolve(a) is None
    assert calls.fail_all() == ["b"] and len(calls) == 0


def test_room_set_follows_join_and_leave_acks() -> None:
    rooms = RoomSet()
    rooms.observe("room.join", {"room": "a"}, {"ns": "/", "room": "a", "members": []})
    rooms.observe("room.join", {"room": "b", "ns": "/x"}, None)
    rooms.observe("echo", {"room": "c"}, None)
    assert list(rooms) == [("/", "a"), ("/x", "b")]
    rooms.observe("room.leave", {"room": "a"}, {"ns": "/", "room": "a"})
    assert list(rooms) == [("/x", "b")]


def test_rtt_keeps_latest_and_smoothed() -> None:
    rtt = Rtt()
    assert rtt.latest is None and rtt.smoothed is None
    rtt.update(0.1)
    rtt.update(0.9)
    assert rtt.latest == 0.9 and rtt.smoothed == pytest.approx(0.2) and rtt.samples == 2


def test_client_url_injects_query_parameters() -> None:
    assert client_url("ws://h:9000", user="al ice") == "ws://h:9000/?user=al+ice"
    assert client_url("http://h:1/ws?a=1", params={"b": "2"}) == "ws://h:1/ws?a=1&b=2"
    assert client_url("https://h/ws").startswith("wss://h/ws")
    with pytest.raises(ValueError):
        client_url("ftp://h/")


async def test_subscription_overflow_policies() -> None:
    hub = Subscriptions()
    oldest = hub.subscribe("x", 2, "drop_oldest")
    newest = hub.subscribe("x", 2, "drop_newest")
    strict = hub.subscribe("x", 2, "close")
    for n in range(4):
        hub.publish("x", n)
    assert [await oldest.receive(), await oldest.receive()] == [2, 3] and oldest.dropped == 2
    assert [await newest.receive(), await newest.receive()] == [0, 1] and newest.dropped == 2
    assert [await strict.receive(), await strict.receive()] == [0, 1]
    with pytest.raises(SubscriptionOverflow):
        await strict.receive()
    hub.publish("x", 5)
    hub.close()
    assert [item async for item in oldest] == [5]


# Calls, emits, pushes and requests over a real node ----------------------------------------------


async def test_call_ack_error_and_timeout(node: Node) -> None:
    echo_handlers(node)
    gate = trio.Event()

    @node.on("slow")
    async def slow(ctx: Context, data: Any) -> str:
        await gate.wait()
        return "late"

    with trio.fail_after(5):
        async with open_client(url(node), user="alice") as client:
            assert client.state is ClientState.OPEN and client.user == "alice"
            assert client.resumed is False and client.session
            assert await client.call("echo", {"x": [1, 2]}) == {"x": [1, 2]}
            with pytest.raises(AckError) as err:
                await client.call("fail")
            assert (err.value.code, err.value.message) == ("not_found", "no such thing")
            with pytest.raises(AckError) as err:
                await client.call("no.such.event")
            assert err.value.code == "unknown_event"
            with pytest.raises(RequestTimeout) as timeout:
                await client.call("slow", timeout=0.1)
            assert timeout.value.code == "timeout"
            gate.set()  # the late ack is dropped; the connection goes on
            assert await client.call("echo", 7) == 7


async def test_emit_subscribe_on_and_rooms(node: Node) -> None:
    notes = echo_handlers(node)
    with trio.fail_after(5):
        async with (
            open_client(url(node), user="alice") as alice,
            open_client(url(node), user="bob", binary=True) as bob,
        ):
            seen: list[str] = []
            typing: list[Any] = []
            bob.on("message", lambda push: seen.append(push.data["payload"]["content"]))
            everything = bob.subscribe("*")

            async def on_typing(push: Any) -> None:
                typing.append(push.data["typing"])

            bob.on("typing", on_typing)
            await alice.join("lobby")
            assert (await bob.join("lobby"))["members"] == ["alice", "bob"]
            assert alice.rooms == [("/", "lobby")]
            await alice.typing("lobby")
            result = await alice.send_text("hello", room="lobby")
            push = await everything.receive()
            while push.event != "message":
                push = await everything.receive()
            assert push.data["messageId"] == result["messageId"] and push.sender == "alice"
            assert push.room.room == "lobby" and bob.last_seq == push.seq
            await alice.emit("note", "n1")
            await alice.call("echo", None)  # the node handles a connection's events in order
            assert notes == ["n1"] and seen == ["hello"] and typing == [True]
            await alice.leave("lobby")
            assert alice.rooms == []


async def test_error_frame_not_tied_to_a_call_is_a_lifecycle_error(node: Node) -> None:
    with trio.fail_after(5):
        async with open_client(url(node), user="alice") as client:
            errors = client.subscribe(Lifecycle.ERROR)
            await client.emit("no.such.event")
            problem = await errors.receive()
            assert problem.code == "unknown_event" and "no.such.event" in problem.message


async def test_body_error_propagates_unwrapped_and_closes(node: Node) -> None:
    with trio.fail_after(5), pytest.raises(KeyError):
        async with open_client(url(node), user="alice") as client:
            raise KeyError("from the body")
    assert client.state is ClientState.CLOSED


async def test_on_handler_error_propagates_out_of_open_client(node: Node) -> None:
    def broken(push: Any) -> None:
        raise ValueError("handler bug")

    with trio.fail_after(5), pytest.raises(ValueError, match="handler bug"):
        async with open_client(url(node), user="alice") as client:
            client.on("status", broken)
            await client.set_status("away")
            await trio.sleep_forever()  # the handler's error ends the client and this block


async def test_server_requests_are_answered_by_handlers(node: Node) -> None:
    answers: list[Any] = []

    @node.on("ask")
    async def ask(ctx: Context, data: Any) -> None:
        try:
            answers.append(await ctx.request(data, {"q": 1}, timeout=2))
        except AckError as exc:
            answers.append(exc.code)

    async def confirm(data: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return {"yes": data["q"]}

    def refuse(data: Any) -> Any:
        raise HandlerError("forbidden", "no")

    with trio.fail_after(5):
        async with open_client(url(node), user="alice") as client:
            client.on_request("confirm", confirm)
            client.on_request("refuse", refuse)
            for event in ("confirm", "refuse", "unknown"):
                await client.call("ask", event)
    assert answers == [{"yes": 1}, "forbidden", "unknown_event"]


# Reconnect ---------------------------------------------------------------------------------------


async def test_reconnect_after_node_restart(nursery: trio.Nursery) -> None:
    first = fast_node()
    notes = echo_handlers(first)
    done = await run_node(nursery, first)
    port = first.port
    assert port is not None
    client = Client(url(port), user="alice", backoff=FAST, offline_queue=5)
    opens = client.subscribe(Lifecycle.OPEN)
    closes = client.subscribe(Lifecycle.CLOSE)
    retries = client.subscribe(Lifecycle.RECONNECTING)
    with trio.fail_after(10):
        await nursery.start(client.run)
        first_open: Opened = await opens.receive()
        assert not first_open.reconnect
        await client.join("lobby")
        await client.join("ops", ns="/admin")
        await client.emit("note", 1)
        await client.call("note", 2)
        first.shutdown()
        await done.wait()
        closed: Closed = await closes.receive()
        assert closed.code == CloseCode.GOING_AWAY and closed.reconnect and not closed.local
        for n in range(3, 7):
            await client.emit("note", n)
        late = trio.Event()

        async def queued_call() -> None:
            assert await client.call("echo", "queued") == "queued"
            late.set()

        nursery.start_soon(queued_call)
        await trio.testing.wait_all_tasks_blocked()
        assert client.queued == 5 and client.state is not ClientState.OPEN
        with pytest.raises(OfflineQueueFull):
            await client.emit("note", "overflow")
        retry: Reconnecting = await retries.receive()
        assert retry.attempt == 1 and 0 <= retry.delay <= FAST.base

        second = fast_node(node={"port": port})
        notes_after = echo_handlers(second)
        await run_node(nursery, second)
        reopened: Opened = await opens.receive()
        assert reopened.reconnect and reopened.flushed == 5 and not reopened.resumed
        assert reopened.rejoined == (("/", "lobby"), ("/admin", "ops"))
        assert reopened.session != first_open.session and client.reconnects == 1
        await late.wait()
        await client.call("note", 7)
        assert notes == [1, 2] and notes_after == [3, 4, 5, 6, 7]  # in order, once each
        assert second.room_members("lobby") == ["alice"]
        assert second.room_members("ops", ns="/admin") == ["alice"]
        await client.aclose()
    assert client.state is ClientState.CLOSED


async def test_queued_call_that_times_out_is_never_sent(nursery: trio.Nursery) -> None:
    first = fast_node()
    done = await run_node(nursery, first)
    port = first.port
    assert port is not None
    client = Client(url(port), user="alice", backoff=FAST)
    opens = client.subscribe(Lifecycle.OPEN)
    closes = client.subscribe(Lifecycle.CLOSE)
    with trio.fail_after(10):
        await nursery.start(client.run)
        first.shutdown()
        await done.wait()
        await closes.receive()
        with pytest.raises(RequestTimeout):
            await client.call("note", "too late", timeout=0.05)
        await client.emit("note", "kept")
        second = fast_node(node={"port": port})
        notes = echo_handlers(second)
        await run_node(nursery, second)
        await opens.receive()
        assert (await opens.receive()).flushed == 1
        await client.call("echo", None)
        assert notes == ["kept"]
        await client.aclose()


async def test_offline_flush_keeps_to_the_node_rate_limit(nursery: trio.Nursery) -> None:
    limits = {"rate": 40.0, "burst": 20, "max_strikes": 2}
    first = Node(make_config(limits=limits))
    done = await run_node(nursery, first)
    port = first.port
    assert port is not None
    client = Client(url(port), user="alice", backoff=FAST, offline_queue=70)
    opens = client.subscribe(Lifecycle.OPEN)
    closes = client.subscribe(Lifecycle.CLOSE)
    problems = client.subscribe(Lifecycle.ERROR)
    failures = client.subscribe(Lifecycle.EMIT_FAILED)
    with trio.fail_after(10):
        await nursery.start(client.run)
        await opens.receive()
        first.shutdown()
        await done.wait()
        await closes.receive()
        for n in range(60):  # three times the node's burst
            await client.emit("note", n)
        answered = trio.Event()

        async def queued_call() -> None:
            assert await client.call("echo", "last") == "last"
            answered.set()

        nursery.start_soon(queued_call)
        await trio.testing.wait_all_tasks_blocked()
        assert client.queued == 61

        second = Node(make_config(node={"port": port}, limits=limits))
        notes = echo_handlers(second)
        await run_node(nursery, second)
        reopened: Opened = await opens.receive()
        assert reopened.flushed == 61
        closes_after = client.subscribe(Lifecycle.CLOSE)  # (attempts before the node was back)
        await answered.wait()
        for n in range(10):  # right after the flush, the bucket is empty: these wait their turn
            assert await client.call("echo", n) == n
        assert notes == list(range(60))  # all of them, in order
        assert second.stats.errors["rate_limited"] == 0 and second.stats.close_codes[4009] == 0
        assert len(closes_after) == len(problems) == len(failures) == 0
        assert client.state is ClientState.OPEN and client.reconnects == 1
        await client.aclose()


async def test_queued_emits_that_are_not_handled_are_reported(nursery: trio.Nursery) -> None:
    first = fast_node()
    done = await run_node(nursery, first)
    port = first.port
    assert port is not None
    client = Client(url(port), user="alice", backoff=FAST)
    opens = client.subscribe(Lifecycle.OPEN)
    closes = client.subscribe(Lifecycle.CLOSE)
    failures = client.subscribe(Lifecycle.EMIT_FAILED)
    with trio.fail_after(10):
        await nursery.start(client.run)
        await opens.receive()
        first.shutdown()
        await done.wait()
        await closes.receive()
        await client.emit("no.such.event", 1)
        await client.emit("note", 2)
        second = fast_node(node={"port": port})
        notes = echo_handlers(second)
        done = await run_node(nursery, second)
        assert (await opens.receive()).flushed == 2
        refused: EmitFailed = await failures.receive()
        assert (refused.event, refused.data, refused.code) == ("no.such.event", 1, "unknown_event")
        await client.call("echo", None)
        assert notes == [2]

        second.shutdown()
        await done.wait()
        for _ in range(100):  # skip the failed attempts made while no node was there
            if (await closes.receive()).code == CloseCode.GOING_AWAY:
                break
        await client.emit("note", 3)
        await client.aclose()  # with the emit still queued
        closed: EmitFailed = await failures.receive()
        assert (closed.event, closed.data, closed.code) == ("note", 3, "closed")


async def test_rejoin_without_an_answer_drops_the_connection(nursery: trio.Nursery) -> None:
    """Connection 1 answers everything; 2 never answers a re-join; 3 refuses it for now (busy);
    4 re-joins the lobby and refuses ops for good."""
    received: list[tuple[int, str]] = []

    def answer(number: int, frame: dict[str, Any]) -> dict[str, Any] | str | None:
        if frame["type"] != "event":
            return None
        received.append((number, frame["event"]))
        if frame["event"] == "bye":
            return "close"
        ack: dict[str, Any] = {"type": "ack", "id": frame["id"]}
        if frame["event"] != "room.join" or number == 1:
            return {**ack, "result": frame.get("data")}
        if number == 2:
            return None
        if number == 3:
            return {**ack, "error": {"code": "busy", "message": "later"}}
        if frame["data"]["room"] == "ops":
            return {**ack, "error": {"code": "room_full", "message": "full"}}
        return {**ack, "result": frame.get("data")}

    port, hellos = await serve_fake(nursery, answer=answer)
    client = Client(url(port), user="alice", backoff=FAST, call_timeout=0.2)
    opens = client.subscribe(Lifecycle.OPEN)
    closes = client.subscribe(Lifecycle.CLOSE)
    retries = client.subscribe(Lifecycle.RECONNECTING)
    with trio.fail_after(10):
        await nursery.start(client.run)
        await client.join("lobby")
        await client.join("ops")
        await client.emit("bye")
        assert (await closes.receive()).code == CloseCode.INTERNAL_ERROR
        await client.emit("note", "queued")
        silent: Closed = await closes.receive()
        assert (silent.code, silent.local, silent.reconnect) == (4000, True, True)
        assert "no answer to the re-join of 'lobby' within 0.2 s" in silent.reason
        busy: Closed = await closes.receive()
        assert (busy.code, busy.local, busy.reconnect) == (1013, True, True)
        assert "busy" in busy.reason
        await opens.receive()
        reopened: Opened = await opens.receive()
        assert reopened.rejoined == (("/", "lobby"),)
        assert reopened.rejoin_failed == (("/", "ops"),)
        assert reopened.flushed == 1 and client.rooms == [("/", "lobby")]
        assert client.state is ClientState.OPEN and len(hellos) == 4
        # No connection opened in between: the backoff kept growing.
        assert [(await retries.receive()).attempt for _ in range(3)] == [1, 2, 3]
        assert [n for n, event in received if event == "note"] == [4]  # queued until open
        await client.aclose()


async def test_call_in_flight_when_connection_drops_raises_connection_lost(node: Node) -> None:
    @node.on("drop")
    async def drop(ctx: Context, data: Any) -> None:
        ctx.connection.close(CloseCode.INTERNAL_ERROR)
        await trio.sleep_forever()

    with trio.fail_after(5):
        # (A client that resumes sends such a call again instead: tests/test_client_resume.py.)
        async with open_client(url(node), user="alice", backoff=FAST, resume=False) as client:
            opens = client.subscribe(Lifecycle.OPEN)
            with pytest.raises(ConnectionLost):
                await client.call("drop")
            assert (await opens.receive()).reconnect  # and it comes back


@pytest.mark.parametrize("code", RECONNECT)
async def test_reconnect_after_each_reconnect_code(node: Node, code: int) -> None:
    echo_handlers(node)
    with trio.fail_after(5):
        async with open_client(url(node), user="alice", backoff=FAST) as client:
            closes = client.subscribe(Lifecycle.CLOSE)
            opens = client.subscribe(Lifecycle.OPEN)
            await client.emit("close", code)
            closed = await closes.receive()
            assert closed.code == code and closed.reconnect
            assert (await opens.receive()).reconnect
            assert await client.call("echo", 1) == 1


@pytest.mark.parametrize("code", [*TERMINAL, 4500])
async def test_no_reconnect_after_each_terminal_code(node: Node, code: int) -> None:
    echo_handlers(node)
    with trio.fail_after(5):
        async with open_client(url(node), user="alice", backoff=FAST) as client:
            closes = client.subscribe(Lifecycle.CLOSE)
            await client.emit("close", code)
            closed = await closes.receive()
            assert closed.code == code and not closed.reconnect
            with pytest.raises(trio.EndOfChannel):
                await closes.receive()  # the client is done: no more events
            assert client.state is ClientState.CLOSED and client.close_code == code
            with pytest.raises(ClientClosed) as exc:
                await client.emit("echo", 1)
            assert exc.value.close_code == code
    assert node.stats.connections_total == 1


async def test_kick_closes_4010_for_good(node: Node) -> None:
    with trio.fail_after(5):
        async with open_client(url(node), user="alice", backoff=FAST) as client:
            closes = client.subscribe(Lifecycle.CLOSE)
            assert node.kick("alice") == 1
            closed = await closes.receive()
            assert (closed.code, closed.reason, closed.reconnect) == (4010, "kicked", False)
            with pytest.raises(ClientClosed):
                await client.call("users.online")
    assert node.stats.connections_total == 1


async def test_auth_failure_is_terminal(node: Node) -> None:
    echo_handlers(node)
    with trio.fail_after(5):
        with pytest.raises(ConnectFailed) as exc:
            async with open_client(url(node), token="not-a-token", backoff=FAST):
                pass
        assert exc.value.close_code == CloseCode.AUTH_FAILED and "401" in exc.value.reason
        assert node.stats.rejected["401"] == 1

        tokens = iter([mint_token(SECRET, "alice"), "expired-or-revoked"])
        async with open_client(url(node), token=lambda: next(tokens), backoff=FAST) as client:
            assert client.user == "alice"
            closes = client.subscribe(Lifecycle.CLOSE)
            await client.emit("close", CloseCode.INTERNAL_ERROR)
            assert (await closes.receive()).reconnect
            closed = await closes.receive()
            assert closed.code == CloseCode.AUTH_FAILED and not closed.reconnect
        assert node.stats.rejected["401"] == 2


async def test_gives_up_after_the_attempt_limit(nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    client = Client(url(port), user="a", backoff=Backoff(0.01, 0.02, attempts=2), wait=False)
    gave_up = client.subscribe(Lifecycle.GAVE_UP)
    retries = client.subscribe(Lifecycle.RECONNECTING)
    with trio.fail_after(5):
        await nursery.start(client.run)
        await client.emit("queued", 1)  # wait=False: queued until the first connection
        assert (await gave_up.receive()).attempts == 2
        assert [r.attempt async for r in retries] == [1, 2]
        with pytest.raises(ClientClosed):
            await client.emit("queued", 2)
        with pytest.raises(ConnectFailed, match="gave up"):
            async with open_client(url(port), backoff=Backoff(0.01, 0.02, attempts=1)):
                pass


# Heartbeat and handshake against fake servers ---------------------------------------------------


async def test_heartbeat_detects_a_silent_server(nursery: trio.Nursery) -> None:
    port, hellos = await serve_fake(nursery)
    client = Client(url(port), user="alice", heartbeat_interval=0.05, heartbeat_timeout=0.2)
    closes = client.subscribe(Lifecycle.CLOSE)
    retries = client.subscribe(Lifecycle.RECONNECTING)
    opens = client.subscribe(Lifecycle.OPEN)
    client.backoff = FAST
    with trio.fail_after(5):
        await nursery.start(client.run)
        assert client.session == "s1"
        closed = await closes.receive()
        assert closed.code == CloseCode.HEARTBEAT_TIMEOUT and closed.local and closed.reconnect
        assert (await retries.receive()).attempt == 1
        await opens.receive()
        await opens.receive()
        assert client.session == "s2" and client.resumed is False
        await client.aclose()
    assert "resume" not in hellos[0] and hellos[0]["v"] == 1
    assert hellos[1]["resume"] == {"session": "s1", "token": "t1", "seq": 0}


async def test_no_welcome_is_a_handshake_timeout(nursery: trio.Nursery) -> None:
    port, _ = await serve_fake(nursery, welcome=False)
    client = Client(url(port), user="alice", connect_timeout=0.1, backoff=FAST, wait=False)
    closes = client.subscribe(Lifecycle.CLOSE)
    with trio.fail_after(5):
        await nursery.start(client.run)
        closed = await closes.receive()
        assert closed.code == CloseCode.HANDSHAKE_TIMEOUT and closed.reconnect
        await client.aclose()


async def test_unsupported_welcome_version_is_terminal(nursery: trio.Nursery) -> None:
    port, _ = await serve_fake(nursery, version=99)
    with trio.fail_after(5), pytest.raises(ConnectFailed) as exc:
        async with open_client(url(port), user="alice", backoff=FAST):
            pass
    assert exc.value.close_code == CloseCode.UNSUPPORTED_VERSION


async def test_rtt_from_heartbeats_against_a_node(node: Node) -> None:
    with trio.fail_after(5):
        async with open_client(url(node), user="alice", heartbeat_interval=0.02) as client:
            samples = client.subscribe(Lifecycle.RTT)
            first = await samples.receive()
            second = await samples.receive()
            assert 0 < first.latest < 1 and 0 < second.smoothed < 1
            assert client.rtt.samples >= 2 and client.rtt.latest == second.latest


def test_ack_error_frame_shape() -> None:
    """The client reads error acks with the same codec as the node writes them."""
    raw = encode_frame(Ack(3, error=ErrorInfo("not_found", "x")), False)
    assert orjson.loads(raw) == {
        "type": "ack",
        "id": 3,
        "error": {"code": "not_found", "message": "x"},
    }
