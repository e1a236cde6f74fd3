"""Access control: which pages may open a WebSocket, which rooms a connection may join, what the
application allows, and who is an operator.

* **Origin.** A browser says which page opens a WebSocket (``Origin``); the node accepts its own
  host (the ``Host`` the request was sent to), the origins of ``access.allowed_origins`` (``"*"``:
  any), and in development mode pages served from this machine (``localhost``, ``127.0.0.0/8``,
  ``[::1]``, any port). A request without ``Origin`` is not from a browser page and is let
  through: the token decides. Anything else is refused with HTTP 403.
* **Room grants.** A token may list the rooms its user may join: ``rooms`` (names in the
  default namespace ``"/"``, or ``{"ns": ..., "room": ...}`` objects) and ``namespaces`` (every
  room of these). A token with neither may join any room, unless ``access.require_room_claims``.
* **The application's hook.** :meth:`roomd.Node.authorize` registers a function that is asked
  before a join, a send and a typing notice and may refuse them (``forbidden``).
* **Operators.** Cluster-wide statistics and room names are for operators: a token with the
  claim ``"operator": true`` (over WebSocket and HTTP), or the ``access.admin_token`` (HTTP).
  In development mode everyone is an operator.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal

import attrs

from .._config import AccessSection
from ..hub import Connection, RoomKey
from ..protocol import DEFAULT_NAMESPACE, ErrorCode, RemoteProtocolError, RoomdError
from ..ws import HttpRequest
from ._auth import OPERATOR_CLAIM

log = logging.getLogger("roomd.node")

Action = Literal["join", "send", "typing"]
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})


@attrs.frozen
class Access:
    """What a connection is about to do, as the application's hook sees it.

    ``action`` is ``"join"`` (``room.join``: the connection would receive the room's pushes),
    ``"send"`` (a ``send`` of ``event`` to ``room``, to ``users``, or to everyone when both are
    ``None``) or ``"typing"`` (a typing notice to ``room``).
    """

    action: Action
    room: RoomKey | None = None
    users: tuple[str, ...] | None = None
    event: str | None = None


Authorizer = Callable[[Any, Access], bool]  # (the handler context, the access) -> allowed


def _authority(host: str | None, port: int | None, scheme: str) -> tuple[str, int] | None:
    if not host:
        return None
    return host.lower().rstrip("."), port if port is not None else _DEFAULT_PORTS.get(scheme, 0)


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a serialized origin, or ``None`` if it is not one."""
    try:
        parts = urllib.parse.urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query:
        return None
    authority = _authority(parts.hostname, port, parts.scheme)
    return None if authority is None else (parts.scheme, *authority)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen
class OriginPolicy:
    """Which ``Origin`` may open a WebSocket (see the module's docstring)."""

    allowed: frozenset[str] = frozenset()  # lower-cased origins, or "*"
    dev: bool = False
    tls: bool = False  # the node's own scheme, for a Host without a port

    @classmethod
    def of(cls, allowed: Iterable[str], dev: bool, tls: bool) -> OriginPolicy:
        return cls(frozenset(o.strip().lower().rstrip("/") for o in allowed), dev, tls)

    def allows(self, request: HttpRequest) -> bool:
        origin = request.header("origin")
        if not origin:
            return True  # not a browser page: the credentials decide
        if "*" in self.allowed or origin.lower().rstrip("/") in self.allowed:
            return True
        parsed = _parse_origin(origin)
        if parsed is None:
            return False  # "null" (sandboxed pages, files) and anything malformed
        _, host, port = parsed
        if self.dev and _is_loopback(host):
            return True
        own = urllib.parse.urlsplit("//" + request.header("host"))
        try:
            own_port = own.port
        except ValueError:
            return False
        return _authority(own.hostname, own_port, "https" if self.tls else "http") == (host, port)


@attrs.frozen
class RoomGrants:
    """The rooms a token lets its user join."""

    rooms: frozenset[RoomKey] = frozenset()
    namespaces: frozenset[str] = frozenset()

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> RoomGrants | None:
        """The grants of ``claims``; ``None`` when they list none (malformed ones grant none)."""
        if "rooms" not in claims and "namespaces" not in claims:
            return None
        rooms: set[RoomKey] = set()
        for item in _listed(claims.get("rooms")):
            if isinstance(item, str):
                rooms.add((DEFAULT_NAMESPACE, item))
            elif isinstance(item, dict):
                ns, room = item.get("ns", DEFAULT_NAMESPACE), item.get("room")
                if isinstance(ns, str) and isinstance(room, str):
                    rooms.add((ns, room))
        namespaces = {ns for ns in _listed(claims.get("namespaces")) if isinstance(ns, str)}
        return cls(frozenset(rooms), frozenset(namespaces))

    def allows(self, key: RoomKey) -> bool:
        return key in self.rooms or key[0] in self.namespaces


def _listed(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else ()


def _forbidden(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.FORBIDDEN, message)


class Gate:
    """The node's access checks for client operations (built-in events)."""

    def __init__(self, section: AccessSection, dev: bool, context: Callable[[Connection], Any]):
        self.require_room_claims = section.require_room_claims
        self.dev = dev
        self.hooks: list[Authorizer] = []
        self._context = context

    def check(self, conn: Connection, access: Access) -> None:
        """Raise ``forbidden`` unless the token's grants and every hook allow ``access``."""
        if access.action == "join":
            assert access.room is not None
            grants = RoomGrants.from_claims(conn.claims)
            if grants is None and self.require_room_claims and not self.dev:
                raise _forbidden("this token grants no rooms")
            if grants is not None and not grants.allows(access.room):
                raise _forbidden(f"this token does not grant room {access.room[1]!r}")
        if self.hooks:
            context = self._context(conn)
            for hook in self.hooks:
                if not self._ask(hook, context, access):
                    raise _forbidden(f"{access.action} not allowed")

    @staticmethod
    def _ask(hook: Authorizer, context: Any, access: Access) -> bool:
        """A hook's verdict; one that fails refuses (closed by default), its error logged."""
        try:
            return bool(hook(context, access))
        except RoomdError:
            raise  # the hook's own answer (a HandlerError with its code)
        except Exception:
            log.exception("access hook %r failed on %r; refused", hook, access)
            raise RemoteProtocolError(ErrorCode.INTERNAL, "access check failed") from None

    def is_operator(self, claims: dict[str, Any]) -> bool:
        return self.dev or claims.get(OPERATOR_CLAIM) is True

    def require_operator(self, conn: Connection) -> None:
        if not self.is_operator(conn.claims):
            raise _forbidden("for operators only")


def bearer(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    value = request.header("authorization")
    return value[7:].strip() if value[:7].lower() == "bearer " else None


def token_matches(presented: str | None, expected: str | None) -> bool:
    """Whether a presented token is the configured one (in constant time)."""
    if presented is None or expected is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))
