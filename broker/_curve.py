"""CurveZMQ for the broker: its keypair, the nodes' public keys it trusts, and its ZAP handler.

The key directory is roomd's (``roomd keys``; the layout of pyzmq's ``zmq.auth``): the broker's
secret key in ``NAME.key_secret`` (mode 0600), and a ``*.key`` file for every public key that
may connect. The trusted keys are read again whenever a file of the directory was added,
removed or changed, so a node is let in (or out) from its next connection on with no restart.

The ZAP handler is a REP socket on ``inproc://zeromq.zap.01`` that the broker's main thread
polls beside its control socket (the broker has no event loop, and needs no thread for this):
libzmq asks it about every connection to the frontend (domain ``frontend``: a publisher) and the
backend (``backend``: a subscriber); it answers 200 for a trusted key and 400 for any other,
and counts both.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Final

import attrs
import zmq
import zmq.auth
from zmq.utils import z85

__all__ = ["AuthCounts", "BrokerKeys", "KeyFileError", "Zap", "load_broker_keys"]

log = logging.getLogger("broker")

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
FRONTEND: Final = "frontend"
BACKEND: Final = "backend"
_VERSION: Final = b"1.0"
_MAX_LOGGED: Final = 1000  # refused keys remembered so that each is logged once


class KeyFileError(Exception):
    """The broker's key files cannot be used (the message says why and what to do)."""


@attrs.frozen
class BrokerKeys:
    public: bytes  # Z85
    secret: bytes = attrs.field(repr=False)
    directory: Path


def load_broker_keys(directory: Path, name: str) -> BrokerKeys:
    """The broker's keypair from ``directory/NAME.key_secret``.

    Error handling: :exc:`KeyFileError` for a missing, unreadable or malformed file, or one that
    others may read.
    """
    path = directory / f"{name}.key_secret"
    if not path.exists():
        raise KeyFileError(
            f"no CURVE key: {path} does not exist (make it with `roomd keys {name} --dir "
            f"{directory}`, and give the nodes {name}.key), or run with --insecure"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
        mode = path.stat().st_mode & 0o777
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    if mode & 0o077:
        raise KeyFileError(f"{path} may be read by others (mode {mode:o}): chmod 600 {path}")
    if secret is None:
        raise KeyFileError(f"{path} holds no secret-key")
    try:
        derived = zmq.curve_public(secret)
    except zmq.ZMQError as exc:
        raise KeyFileError(f"{path}: its secret-key is not a Z85 key: {exc}") from None
    if derived != public:
        raise KeyFileError(f"{path}: its public-key is not that of its secret-key")
    return BrokerKeys(public, secret, directory)


@attrs.define
class AuthCounts:
    """Connections the ZAP handler let in and refused, per side."""

    accepted: int = 0
    refused: int = 0


class Trusted:
    """The public keys of every ``*.key`` file of a directory, read again when it changed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._keys: dict[bytes, str] = {}

    def name_of(self, key: bytes) -> str | None:
        self._refresh()
        return self._keys.get(key)

    def _refresh(self) -> None:
        try:
            paths = sorted(self.directory.glob("*.key"))
            stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
        except OSError as exc:
            log.warning("cannot list the trusted keys in %s: %s", self.directory, exc)
            return
        if stamp == self._stamp:
            return
        keys: dict[bytes, str] = {}
        for path in paths:
            try:
                public, _ = zmq.auth.load_certificate(path)
                if len(public) != 40:
                    raise ValueError("not a Z85 key")
            except (OSError, ValueError) as exc:
                log.warning("a trusted key is skipped: %s: %s", path, exc)
                continue
            keys[public] = path.name.removesuffix(".key")
        self._stamp, self._keys = stamp, keys
        log.info("%d trusted keys in %s", len(keys), self.directory)


class Zap:
    """The broker's ZAP handler (see the module docstring). Driven by the broker's thread:
    :meth:`answer` when :attr:`socket` is readable; :meth:`counts` from any thread."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], directory: Path) -> None:
        self.trusted = Trusted(directory)
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self._lock = threading.Lock()
        self._counts = {FRONTEND: AuthCounts(), BACKEND: AuthCounts()}
        self._logged: set[tuple[bytes, str]] = set()  # refused keys already logged

    def counts(self) -> dict[str, AuthCounts]:
        with self._lock:
            return {side: attrs.evolve(c) for side, c in self._counts.items()}

    def answer(self) -> None:
        """Answer one pending request (never blocks: called when the socket is readable)."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        self.socket.send_multipart(self._reply(frames))

    def _reply(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6 or frames[0] != _VERSION:
            request_id = frames[1] if len(frames) > 1 else b""
            return [_VERSION, request_id, b"400", b"malformed ZAP request", b"", b""]
        _, request_id, domain, address, _identity, mechanism, *credentials = frames
        side = domain.decode(errors="replace")
        key = None
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            key = z85.encode(credentials[0])
        name = self.trusted.name_of(key) if key is not None else None
        with self._lock:
            counts = self._counts.setdefault(side, AuthCounts())
            if name is not None:
                counts.accepted += 1
            else:
                counts.refused += 1
        what = "publisher" if side == FRONTEND else "subscriber"
        if name is not None:
            log.debug("%s %s from %s let in", what, name, address.decode(errors="replace"))
            return [_VERSION, request_id, b"200", b"OK", name.encode(), b""]
        shown = key.decode() if key is not None else mechanism.decode(errors="replace")
        if (key or b"", side) not in self._logged:
            if len(self._logged) >= _MAX_LOGGED:
                self._logged.clear()
            self._logged.add((key or b"", side))
            log.warning(
                "refused a %s from %s: its key %s is not in %s",
                what,
                address.decode(errors="replace"),
                shown,
                self.trusted.directory,
            )
        return [_VERSION, request_id, b"400", b"unknown key", b"", b""]

    def close(self) -> None:
        self.socket.close(linger=0)
