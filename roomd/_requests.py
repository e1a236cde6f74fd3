"""Requests that wait for answers: to one client, to every member of a room (on every node),
and cluster calls to other nodes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._config import Config
from .cluster._cluster import Cluster, ClusterReplies, Reply
from .cluster._view import ClusterView
from .hub import Client, Hub, RoomKey
from .protocol import Ack, AckError, ErrorCode, Request, RequestTimeout, RoomRef

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger("roomd.node")

CallHandler = Callable[[Any, str], Awaitable[Any]]
ROOM_REQUEST = "roomd.room-request"  # the cluster call behind room sends with ack
ROOM_REPLY_MARGIN = 0.5  # seconds a node's count of its members' acks may take to come back


@attrs.frozen
class Context:
    """What an event handler receives besides the data: the node and the sending client."""

    node: Node
    client: Client

    @property
    def user(self) -> str:
        return self.client.user

    @property
    def session_id(self) -> str:
        return self.client.id

    @property
    def claims(self) -> dict[str, Any]:
        return self.client.claims

    async def request(self, event: str, data: Any = None, timeout: float = 10.0) -> Any:
        """Ask the sending client and wait for its acknowledgement (see :meth:`Node.request`)."""
        return await self.node.request(self.client.id, event, data, timeout=timeout)


class _Waiter:
    __slots__ = ("ack", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ack: Ack | None = None


class Requests:
    """The requesting half of :class:`~roomd.Node` (a mixin: the node provides the state)."""

    config: Config
    hub: Hub
    view: ClusterView
    cluster: Cluster | None
    _cluster_handlers: dict[str, CallHandler]

    @property
    def name(self) -> str:
        return self.config.node.name

    async def request(
        self, session_id: str, event: str, data: Any = None, *, timeout: float = 10.0
    ) -> Any:
        """Send a request to one client and wait for its acknowledgement's result.

        Error handling: :class:`RequestTimeout` if no answer comes within ``timeout`` (or the
        client is gone), :class:`AckError` if the client answers with an error.
        """
        client = self.hub.clients.get(session_id)
        if client is None:
            raise RequestTimeout(ErrorCode.NOT_FOUND, f"no session {session_id!r} on this node")
        rid = client.session.next_request_id()
        waiter = _Waiter()
        client.pending[rid] = waiter
        try:
            client.send(Request(rid, event, data, timeout))
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            client.pending.pop(rid, None)
        ack = waiter.ack
        if ack is None:
            raise RequestTimeout(ErrorCode.TIMEOUT, f"no answer to {event!r} in {timeout} s")
        if ack.error is not None:
            raise AckError(ack.error.code, ack.error.message)
        return ack.result

    async def request_room(
        self,
        key: RoomKey,
        event: str,
        data: Any = None,
        *,
        sender: str | None = None,
        exclude: Client | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Send a request to every member connection of a room, on every node, and count the
        acknowledgements that arrive within ``timeout``: ``{"acked", "missing", "errors",
        "nodesMissing"}`` (the members of a node that did not report are not counted at all)."""
        local = self.request_room_local(key, event, data, sender, exclude, timeout)
        totals = {"acked": 0, "missing": 0, "errors": 0}
        nodes_missing: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sum_into, totals, local)
            remote = [n for n in self.view.nodes_in_room(key) if n != self.name]
            if self.cluster is not None and remote:
                body = {"ns": key[0], "room": key[1], "event": event, "data": data}
                body |= {"from": sender, "timeout": timeout}
                out = await self.cluster_call(
                    ROOM_REQUEST, body, targets=remote, timeout=timeout + ROOM_REPLY_MARGIN
                )
                for counts in out.replies.values():
                    for name in totals:
                        totals[name] += int(counts.get(name, 0))
                nodes_missing = sorted([*out.missing, *out.errors])
        return {**totals, "nodesMissing": nodes_missing}

    @staticmethod
    async def _sum_into(totals: dict[str, int], counts: Awaitable[dict[str, int]]) -> None:
        for name, value in (await counts).items():
            totals[name] += value

    async def request_room_local(
        self,
        key: RoomKey,
        event: str,
        data: Any,
        sender: str | None,
        exclude: Client | None,
        timeout: float,
    ) -> dict[str, int]:
        """The local part of :meth:`request_room`: requests to this node's members."""
        room = RoomRef(key[0], key[1])
        asked: list[tuple[Client, int, _Waiter]] = []
        for client in list(self.hub.room_clients(key)):
            if client is exclude:
                continue
            rid = client.session.next_request_id()
            waiter = _Waiter()
            client.pending[rid] = waiter
            asked.append((client, rid, waiter))
            client.send(Request(rid, event, data, timeout, room=room, sender=sender))
        with trio.move_on_after(timeout):
            for _, _, waiter in asked:
                await waiter.event.wait()
        acked = errors = 0
        for client, rid, waiter in asked:
            client.pending.pop(rid, None)
            if waiter.ack is not None:
                if waiter.ack.error is None:
                    acked += 1
                else:
                    errors += 1
        return {"acked": acked, "errors": errors, "missing": len(asked) - acked - errors}

    async def _on_room_request(self, body: Any, origin: str) -> dict[str, int]:
        key = (str(body["ns"]), str(body["room"]))
        return await self.request_room_local(
            key, body["event"], body.get("data"), body.get("from"), None, float(body["timeout"])
        )

    async def cluster_call(
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
        outcome = ClusterReplies()
        async with self.cluster_replies(
            event, data, targets=targets, except_self=except_self, timeout=timeout
        ) as (names, replies):
            want = len(names) if expected is None else min(expected, len(names))
            async for reply in replies:
                if reply.ok:
                    outcome.replies[reply.node] = reply.result
                else:
                    outcome.errors[reply.node] = reply.result
                if len(outcome.replies) + len(outcome.errors) >= want:
                    break
        answered = outcome.replies.keys() | outcome.errors.keys()
        outcome.missing = [n for n in names if n not in answered]
        return outcome

    @contextlib.asynccontextmanager
    async def cluster_replies(
        self,
        event: str,
        data: Any = None,
        *,
        targets: list[str] | None = None,
        except_self: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[list[str], Replies]]:
        """The streaming form of :meth:`cluster_call`: ``async with node.cluster_replies(...)
        as (targets, replies): async for reply in replies: ...``; the stream ends when every
        target answered or at the timeout."""
        if timeout is None:
            timeout = self.config.cluster.call_timeout
        names = sorted(set(targets) if targets is not None else set(self.view.nodes_up()))
        if except_self and self.name in names:
            names.remove(self.name)
        remote = [n for n in names if n != self.name]
        send, receive = trio.open_memory_channel[Reply](max(1, len(names)))
        call_id = None
        deadline = trio.current_time() + timeout
        # The caller's block runs inside this nursery: the deadline bounds the replies and the
        # local handler, never the caller's own code.
        async with trio.open_nursery() as nursery:
            if remote and self.cluster is not None:
                call_id = self.cluster.start_call(event, data, remote, send)
            elif remote:
                for name in remote:
                    send.send_nowait(
                        Reply(name, False, {"code": "not_found", "message": "no cluster"})
                    )
            if self.name in names:
                nursery.start_soon(self._call_self, event, data, send.clone(), deadline)
            try:
                async with receive:
                    yield names, Replies(receive, len(names), deadline)
            finally:
                if call_id is not None and self.cluster is not None:
                    self.cluster.end_call(call_id)
                send.close()
                nursery.cancel_scope.cancel()

    async def _call_self(
        self, event: str, data: Any, send: trio.MemorySendChannel[Reply], deadline: float
    ) -> None:
        with trio.move_on_at(deadline), send:
            handler = self._cluster_handlers.get(event)
            if handler is None:
                error = {"code": "unknown_event", "message": f"no handler for {event!r}"}
                await send.send(Reply(self.name, False, error))
                return
            try:
                result = await handler(data, self.name)
            except Exception as exc:
                code = getattr(exc, "code", "internal")
                if code == "internal":
                    log.exception("cluster handler %r failed", event)
                error = {
                    "code": str(code),
                    "message": str(getattr(exc, "message", "internal error")),
                }
                await send.send(Reply(self.name, False, error))
            else:
                await send.send(Reply(self.name, True, result))


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
