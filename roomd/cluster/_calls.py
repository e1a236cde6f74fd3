"""Cluster calls: a request to several nodes (this one included) and their replies.

A call goes out as one bus message to its remote targets; each answers with a reply on the
caller's node topic. The caller's own node runs its handler in process. Replies stream in as
they arrive, until every target answered or the deadline passed; the nodes that did not answer
are named ``missing``. Handlers run, and their errors become replies, in one place:
:func:`run_handler`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from ..protocol import ErrorCode, RoomdError

log = logging.getLogger("roomd.cluster")

CallHandler = Callable[[Any, str], Awaitable[Any]]  # (data, origin node) -> result
PublishCall = Callable[[int, str, Any, list[str]], None]  # (call id, event, data, targets)


@attrs.frozen
class Reply:
    """One node's answer to a cluster call."""

    node: str
    ok: bool
    result: Any = None  # the handler's return value, or {"code", "message"} if not ok


@attrs.define
class ClusterReplies:
    """The outcome of :meth:`Calls.call`."""

    replies: dict[str, Any] = attrs.field(factory=dict)  # node -> result
    errors: dict[str, dict[str, str]] = attrs.field(factory=dict)  # node -> {code, message}
    missing: list[str] = attrs.field(factory=list)  # nodes that did not answer in time

    def add(self, node: str, reply: Reply) -> None:
        """``node``'s reply: its result, or its error."""
        if reply.ok:
            self.replies[node] = reply.result
        else:
            self.errors[node] = reply.result


def error_body(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


async def run_handler(handler: CallHandler | None, event: str, data: Any, origin: str) -> Reply:
    """Run the handler of a call that came from ``origin``; its result or its error as a reply
    (the ``node`` of the reply is left empty: the caller knows who answers)."""
    if handler is None:
        return Reply("", False, error_body(ErrorCode.UNKNOWN_EVENT, f"no handler for {event!r}"))
    try:
        return Reply("", True, await handler(data, origin))
    except RoomdError as exc:
        return Reply("", False, error_body(exc.code, exc.message))
    except Exception:
        log.exception("cluster handler %r failed", event)
        return Reply("", False, error_body(ErrorCode.INTERNAL, "internal error"))


class _One:
    """Where the reply of a call to one other node goes (no channel, no task: see
    :meth:`Calls.call`)."""

    __slots__ = ("arrived", "reply")

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.reply: Reply | None = None

    def send_nowait(self, reply: Reply) -> None:
        self.reply = reply
        self.arrived.set()


class _Pending:
    __slots__ = ("remaining", "send")

    def __init__(self, send: trio.MemorySendChannel[Reply] | _One, remaining: set[str]) -> None:
        self.send = send
        self.remaining = remaining


class Calls:
    """The calls one node makes, and the handlers it answers calls with.

    ``publish`` sends a call to remote nodes (``None`` on a node without a cluster: calls to
    other nodes then fail with ``not_found``); ``nodes_up`` names the default targets.
    """

    def __init__(
        self,
        name: str,
        *,
        timeout: float,
        nodes_up: Callable[[], list[str]],
        publish: PublishCall | None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.handlers: dict[str, CallHandler] = {}
        self._nodes_up = nodes_up
        self._publish = publish
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)

    async def call(
        self,
        event: str,
        data: Any = None,
        *,
        targets: list[str] | None = None,
        except_self: bool = False,
        expected: int | None = None,
        timeout: float | None = None,
    ) -> ClusterReplies:
        """Call ``event`` on several nodes and gather their replies.

        ``targets`` defaults to every node up (this one included unless ``except_self``); the
        call returns when ``expected`` replies (default: all targets) arrived, or at
        ``timeout`` (default ``cluster.call_timeout``): the nodes that did not answer are in
        ``missing``.
        """
        if targets is not None and len(targets) == 1 and not except_self:
            (node,) = targets
            if node != self.name and self._publish is not None:
                return await self._call_one(node, event, data, timeout)
        outcome = ClusterReplies()
        async with self.replies(
            event, data, targets=targets, except_self=except_self, timeout=timeout
        ) as (names, replies):
            want = len(names) if expected is None else min(expected, len(names))
            async for reply in replies:
                outcome.add(reply.node, reply)
                if len(outcome.replies) + len(outcome.errors) >= want:
                    break
        answered = outcome.replies.keys() | outcome.errors.keys()
        outcome.missing = [n for n in names if n not in answered]
        return outcome

    @contextlib.asynccontextmanager
    async def replies(
        self,
        event: str,
        data: Any = None,
        *,
        targets: list[str] | None = None,
        except_self: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[list[str], Replies]]:
        """The streaming form of :meth:`call`: ``async with calls.replies(...) as (targets,
        replies): async for reply in replies: ...``; the stream ends when every target
        answered or at the timeout."""
        if timeout is None:
            timeout = self.timeout
        names = sorted(set(targets) if targets is not None else set(self._nodes_up()))
        if except_self and self.name in names:
            names.remove(self.name)
        remote = [n for n in names if n != self.name]
        send, receive = trio.open_memory_channel[Reply](max(1, len(names)))
        call_id: int | None = None
        deadline = trio.current_time() + timeout
        # The caller's block runs inside this nursery: the deadline bounds the replies and the
        # local handler, never the caller's own code.
        async with trio.open_nursery() as nursery:
            if remote and self._publish is not None:
                call_id = next(self._ids)
                self._pending[call_id] = _Pending(send, set(remote))
                self._publish(call_id, event, data, remote)
            else:
                for name in remote:
                    error = error_body(ErrorCode.NOT_FOUND, "this node is not in a cluster")
                    send.send_nowait(Reply(name, False, error))
            if self.name in names:
                nursery.start_soon(self._call_self, event, data, send.clone(), deadline)
            try:
                async with receive:
                    yield names, Replies(receive, len(names), deadline)
            finally:
                if call_id is not None:
                    self._pending.pop(call_id, None)
                send.close()
                nursery.cancel_scope.cancel()

    async def _call_one(
        self, node: str, event: str, data: Any, timeout: float | None
    ) -> ClusterReplies:
        """:meth:`call` to one other node, the most common call (a stream's tail or read, a
        session's claim): the same outcome without the channel, nursery and async generator
        of :meth:`replies` (they were 13% of a node's CPU while it opened connections)."""
        assert self._publish is not None
        call_id = next(self._ids)
        one = _One()
        self._pending[call_id] = _Pending(one, {node})
        try:
            self._publish(call_id, event, data, [node])
            with trio.move_on_after(self.timeout if timeout is None else timeout):
                await one.arrived.wait()
        finally:
            self._pending.pop(call_id, None)
        outcome = ClusterReplies()
        reply = one.reply
        if reply is None:
            outcome.missing = [node]
        else:
            outcome.add(node, reply)
        return outcome

    def on_reply(self, node: str, call_id: int, ok: bool, result: Any) -> None:
        """A remote node's reply, from the bus (late and unknown replies are dropped)."""
        pending = self._pending.get(call_id)
        if pending is None or node not in pending.remaining:
            return
        pending.remaining.discard(node)
        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
            pending.send.send_nowait(Reply(node, ok, result))

    async def _call_self(
        self, event: str, data: Any, send: trio.MemorySendChannel[Reply], deadline: float
    ) -> None:
        with trio.move_on_at(deadline), send:
            reply = await run_handler(self.handlers.get(event), event, data, self.name)
            await send.send(attrs.evolve(reply, node=self.name))


class Replies:
    """The replies of a cluster call, as they arrive, until all came or the deadline passed."""

    def __init__(
        self, receive: trio.MemoryReceiveChannel[Reply], count: int, deadline: float
    ) -> None:
        self._receive = receive
        self._left = count
        self._deadline = deadline

    def __aiter__(self) -> Replies:
        return self

    async def __anext__(self) -> Reply:
        if self._left > 0:
            with trio.move_on_at(self._deadline):
                reply = await self._receive.receive()
                self._left -= 1
                return reply
        raise StopAsyncIteration
