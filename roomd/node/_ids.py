"""Message ids: UUIDs in their canonical text form, made without :class:`uuid.UUID` objects (a
direct message costs two of them otherwise: a few microseconds of a path that costs tens)."""

from __future__ import annotations

import hashlib
import os
from typing import Final

# The namespace of ids derived from a client message id (RFC 9562 version 5).
_DERIVED: Final = bytes.fromhex("5b0c6f1e8d0a4e5c9f7a3c2d1e0f4a6b")


def _text(raw: bytearray, version: int) -> str:
    raw[6] = (raw[6] & 0x0F) | (version << 4)
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC's variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_message_id() -> str:
    """A random id (a version 4 UUID): ``str(uuid.uuid4())``."""
    return _text(bytearray(os.urandom(16)), 4)


def message_id_for(user: str, cmid: str | None) -> str:
    """A new message's id: derived from the client message id when there is one (a version 5
    UUID of ``user`` and ``cmid``), so that a message sent again (after a resume, to any node)
    is recognised by its stream; else random."""
    if cmid is None:
        return new_message_id()
    digest = hashlib.sha1(_DERIVED + f"{user}\x00{cmid}".encode(), usedforsecurity=False)
    return _text(bytearray(digest.digest()[:16]), 5)
