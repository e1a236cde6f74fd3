"""Who may hold a connection to the node: counts of TCP connections, by address and by user.

Every accepted TCP connection counts from its ``accept`` on, while it is still in the HTTP
handshake too, so that connections that never finish their handshake cannot crowd out the
node's limits unseen. Three caps are checked at accept time, before the request is read, and one
once the user is known:

* ``limits.max_handshakes``: connections whose HTTP request head or upgrade is not done yet
  (HTTP 503);
* ``limits.max_connections_per_ip``: connections from one address, handshaking or open
  (HTTP 429);
* ``limits.max_connections_per_user``: WebSocket connections of one user on this node, checked
  after authentication and before the upgrade (HTTP 429).

``limits.max_connections`` counts every TCP connection too; an upgrade over it is completed and
then closed with 1013, so that a browser sees the code (the node decides that, not this module).
Nothing here awaits: the counts change only in the node's own tasks.
"""

from __future__ import annotations

import collections
from typing import Final

import attrs

from .._config import LimitsSection
from ..ws import json_response

RETRY_AFTER: Final = "1"  # seconds, in the Retry-After of the refusals below


@attrs.frozen
class Refusal:
    """A connection refused by a cap: the metric's label and the HTTP answer."""

    reason: str
    reply: bytes


def _refusal(reason: str, status: int, message: str) -> Refusal:
    return Refusal(
        reason, json_response(status, {"error": message}, (("Retry-After", RETRY_AFTER),))
    )


TOO_MANY_HANDSHAKES: Final = _refusal("max_handshakes", 503, "too many connections in handshake")
TOO_MANY_FROM_ADDRESS: Final = _refusal(
    "max_connections_per_ip", 429, "too many connections from this address"
)
TOO_MANY_FOR_USER: Final = _refusal(
    "max_connections_per_user", 429, "too many connections for this user"
)


class Ticket:
    """One TCP connection's place in the counts, until :meth:`Admission.leave`."""

    __slots__ = ("address", "handshaking", "left", "user")

    def __init__(self, address: str) -> None:
        self.address = address
        self.handshaking = True
        self.left = False
        self.user: str | None = None  # set once the user counts


class Admission:
    """The counts and caps of one node (see the module's docstring)."""

    def __init__(self, limits: LimitsSection) -> None:
        self._limits = limits
        self.total = 0  # TCP connections being served, handshaking or open
        self.handshaking = 0
        self._by_address: collections.Counter[str] = collections.Counter()
        self._by_user: collections.Counter[str] = collections.Counter()

    def enter(self, address: str) -> Ticket | Refusal:
        """Count a connection just accepted from ``address``, or refuse it."""
        limits = self._limits
        if self.handshaking >= limits.max_handshakes:
            return TOO_MANY_HANDSHAKES
        per_ip = limits.max_connections_per_ip
        if per_ip and self._by_address[address] >= per_ip:
            return TOO_MANY_FROM_ADDRESS
        self.total += 1
        self.handshaking += 1
        self._by_address[address] += 1
        return Ticket(address)

    def handshake_done(self, ticket: Ticket) -> None:
        """The HTTP part is over (upgraded, answered or dropped)."""
        if ticket.handshaking:
            ticket.handshaking = False
            self.handshaking -= 1

    def add_user(self, ticket: Ticket, user: str) -> Refusal | None:
        """Count the connection for ``user``, or refuse it if the user has too many."""
        per_user = self._limits.max_connections_per_user
        if per_user and self._by_user[user] >= per_user:
            return TOO_MANY_FOR_USER
        self._by_user[user] += 1
        ticket.user = user
        return None

    def over_capacity(self) -> bool:
        """Whether the node holds more connections than ``limits.max_connections``."""
        return self.total > self._limits.max_connections

    def leave(self, ticket: Ticket) -> None:
        """The connection is gone: uncount it everywhere (once, however often it is said)."""
        if ticket.left:
            return
        ticket.left = True
        self.handshake_done(ticket)
        self.total -= 1
        _decrement(self._by_address, ticket.address)
        if ticket.user is not None:
            _decrement(self._by_user, ticket.user)
            ticket.user = None


def _decrement(counter: collections.Counter[str], key: str) -> None:
    if counter[key] <= 1:
        del counter[key]
    else:
        counter[key] -= 1
