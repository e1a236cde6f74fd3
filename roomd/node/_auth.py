"""Authentication of WebSocket upgrades: JWT (HS256) tokens, or names in development mode.

A token is a JWT signed with the node's secret (HMAC-SHA256) whose ``sub`` is the user id and
whose ``exp`` is its expiry. It comes as ``?token=...`` or ``Authorization: Bearer ...``. The
secret is at least :data:`MIN_SECRET_BYTES` long (RFC 7518, section 3.2: an HS256 key has at
least as many bits as the hash).
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import jwt

from ..protocol import PayloadLimits, RemoteProtocolError, validate_name
from ..ws import HttpRequest

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
OPERATOR_CLAIM = "operator"  # true in the tokens of operators (roomd token --operator)
_REGISTERED_CLAIMS = frozenset({"sub", "iat", "exp", "nbf"})


class AuthError(Exception):
    """The upgrade request carries no acceptable credentials (HTTP 401).

    ``public`` is what the client is told, deliberately generic (``invalid token``); ``reason``
    says why, for the node's log (never the token itself).
    """

    def __init__(self, public: str, reason: str | None = None) -> None:
        super().__init__(public)
        self.public = public
        self.reason = reason if reason is not None else public


def check_secret(secret: str, what: str = "the auth secret") -> None:
    """Raise ``ValueError`` unless ``secret`` is long enough to sign tokens with (or to be a
    bearer token that cannot be guessed)."""
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{what} must be at least {MIN_SECRET_BYTES} bytes long "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )


@attrs.frozen
class Identity:
    user: str
    claims: dict[str, Any] = attrs.field(factory=dict)


def mint_token(
    secret: str, user: str, ttl: float = 3600.0, *, now: float | None = None, **claims: Any
) -> str:
    """A signed token for ``user`` that expires ``ttl`` seconds from ``now``."""
    issued = time.time() if now is None else now
    payload = {"sub": user, "iat": int(issued), "exp": int(issued + ttl), **claims}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


@attrs.frozen
class Authenticator:
    """Decides who an upgrade request is.

    ``secret`` may be ``None`` only in development mode, where ``?user=NAME`` is accepted.
    """

    secret: str | None
    dev: bool = False
    leeway: float = 10.0
    limits: PayloadLimits = attrs.field(factory=PayloadLimits)

    def authenticate(self, request: HttpRequest) -> Identity:
        """The identity of ``request``. Error handling: raises :class:`AuthError`."""
        token = request.query.get("token")
        bearer = request.header("authorization")
        if token is None and bearer[:7].lower() == "bearer ":
            token = bearer[7:].strip()
        if token:
            return self.verify(token)
        if self.dev and "user" in request.query:
            return Identity(self._user(request.query["user"]))
        raise AuthError("no token", "no token: neither ?token=... nor Authorization: Bearer")

    def verify(self, token: str) -> Identity:
        if self.secret is None:
            raise AuthError("invalid token", "a token, but this node has no secret")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                leeway=self.leeway,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            reason = f"invalid token ({type(exc).__name__}: {exc})"
            raise AuthError("invalid token", reason) from None
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise AuthError("invalid token", "invalid token: sub is not a string")
        extra = {k: v for k, v in claims.items() if k not in _REGISTERED_CLAIMS}
        return Identity(self._user(sub), extra)

    def _user(self, name: str) -> str:
        try:
            return validate_name("user", name, self.limits)
        except RemoteProtocolError as exc:
            raise AuthError("invalid user name", exc.message) from None
