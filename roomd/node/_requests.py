"""Requests that wait for answers: to one client, and to every member of a room on every node.

A request is a ``request`` frame with an id; the client answers with an ``ack`` of that id,
which the connection's reader hands to the waiter registered in ``conn.pending``. A room
request asks this node's members directly and the other nodes hosting the room through a
cluster call (:data:`ROOM_REQUEST`), whose handler asks their members and counts the answers.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Final

import trio

from ..cluster import ClusterLink, ClusterView
from ..hub import Connection, Hub, RoomKey
from ..protocol import Ack, AckError, ErrorCode, Request, RequestTimeout, RoomRef

ROOM_REQUEST: Final = "roomd.room-request"  # the cluster call behind room sends with ack
ROOM_REPLY_MARGIN: Final = 0.5  # seconds a node's count of its members' acks may take to come back


class Waiter:
    """Where the reader puts the acknowledgement of one request."""

    __slots__ = ("ack", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ack: Ack | None = None


class Requests:
    """Server-to-client requests of one node.

    Resource handling: owns no task; a request lives in the awaiting task, and a connection
    that closes wakes its waiters (``conn.pending``) so that none waits for its timeout.
    """

    def __init__(self, name: str, hub: Hub, view: ClusterView, cluster: ClusterLink) -> None:
        self.name = name
        self.hub = hub
        self.view = view
        self.cluster = cluster
        cluster.calls.handlers[ROOM_REQUEST] = self._on_room_request

    async def request(
        self, session_id: str, event: str, data: Any = None, *, timeout: float = 10.0
    ) -> Any:
        """Send a request to one connection and wait for its acknowledgement's result.

        Error handling: :class:`RequestTimeout` if no answer comes within ``timeout`` (or the
        connection is gone), :class:`AckError` if the client answers with an error.
        """
        conn = self.hub.connections.get(session_id)
        if conn is None:
            raise RequestTimeout(ErrorCode.NOT_FOUND, f"no session {session_id!r} on this node")
        rid = conn.session.next_request_id()
        waiter = Waiter()
        conn.pending[rid] = waiter
        try:
            conn.send(Request(rid, event, data, timeout))
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            conn.pending.pop(rid, None)
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
        exclude: Connection | None = None,
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
            if remote:
                body = {"ns": key[0], "room": key[1], "event": event, "data": data}
                body |= {"from": sender, "timeout": timeout}
                out = await self.cluster.calls.call(
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
        exclude: Connection | None,
        timeout: float,
    ) -> dict[str, int]:
        """The local part of :meth:`request_room`: requests to this node's members."""
        room = RoomRef(key[0], key[1])
        asked: list[tuple[Connection, int, Waiter]] = []
        for conn in list(self.hub.room_connections(key)):
            if conn is exclude:
                continue
            rid = conn.session.next_request_id()
            waiter = Waiter()
            conn.pending[rid] = waiter
            asked.append((conn, rid, waiter))
            conn.send(Request(rid, event, data, timeout, room=room, sender=sender))
        with trio.move_on_after(timeout):
            for _, _, waiter in asked:
                await waiter.event.wait()
        acked = errors = 0
        for conn, rid, waiter in asked:
            conn.pending.pop(rid, None)
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
