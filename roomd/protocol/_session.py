"""The session state machine (sans-I/O).

A :class:`Session` is what a client's identity on a node amounts to: an id, the user, the
numbering of its pushes, the acknowledgements it is owed. It knows nothing of sockets: the
transport feeds it decoded frames and asks it what is allowed.

States::

    HANDSHAKE --hello(v ok)--> OPEN --close--> CLOSED
        |                                        ^
        +--------bad hello / close---------------+

Everything that affects the state lives in this file.
"""

from __future__ import annotations

import collections
import enum
import secrets
from typing import Any, Final

from ._close import CloseCode
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frames import SUPPORTED_VERSIONS, Ack, ClientFrame, Event, Hello, Ping

DEDUPE_WINDOW: Final = 256  # client message ids remembered per session


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


def new_session_id() -> str:
    return secrets.token_urlsafe(12)


class Session:
    """Protocol state of one client session.

    Resource handling: owns no I/O and no tasks; the transport that holds it drives it.
    """

    __slots__ = (
        "_dedupe",
        "_next_request_id",
        "began",
        "id",
        "resume_token",
        "seq",
        "state",
        "user",
    )

    def __init__(self, user: str, session_id: str | None = None) -> None:
        self.user = user
        self.id = session_id or new_session_id()
        self.resume_token = ""  # (set at its welcome: a signed token any node can check)
        self.state = SessionState.HANDSHAKE
        self.seq = 0  # last sequence number given to a reliable push
        # wall-clock time of the session's first welcome (kept across resumes, in its token):
        # what a stream numbered before then is not missed by it
        self.began = 0.0
        self._next_request_id = 0
        self._dedupe: collections.OrderedDict[str, Any] | None = None

    # Handshake -----------------------------------------------------------------------------------

    def receive(self, frame: ClientFrame) -> None:
        """Check that ``frame`` may arrive in the current state; advance on ``hello``.

        Error handling: raises :class:`RemoteProtocolError` whose ``close_code`` is set when the
        connection cannot go on (a bad hello), unset when the frame is merely refused.
        """
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("frame received on a closed session")
        if isinstance(frame, Hello):
            if self.state is not SessionState.HANDSHAKE:
                raise RemoteProtocolError(ErrorCode.INVALID, "hello: session already open")
            if frame.v not in SUPPORTED_VERSIONS:
                supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
                raise RemoteProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"protocol version {frame.v} is not supported; this node speaks {supported}",
                    close_code=CloseCode.UNSUPPORTED_VERSION,
                )
            self.state = SessionState.OPEN
            return
        if self.state is SessionState.HANDSHAKE and not isinstance(frame, Ping):
            ref = frame.id if isinstance(frame, Event | Ack) else None
            raise RemoteProtocolError(
                ErrorCode.HANDSHAKE_REQUIRED,
                "the first frame must be hello",
                ref=ref,
                close_code=CloseCode.BAD_HANDSHAKE,
            )

    def close(self) -> None:
        self.state = SessionState.CLOSED

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.OPEN

    def continue_from(self, previous: Session, seq: int) -> None:
        """Take over ``previous`` (a resumed session): its id, the acknowledgements it is owed
        (client message ids), and push numbering from ``seq``, the last the client received."""
        self.id = previous.id
        self.seq = seq
        self._dedupe = previous._dedupe
        self._next_request_id = previous._next_request_id
        previous.state = SessionState.CLOSED

    def carried(self) -> list[list[Any]]:
        """What another node needs to continue this session: the acknowledgements it is owed
        (``[cmid, result]`` pairs, oldest first)."""
        return [[cmid, result] for cmid, result in (self._dedupe or {}).items()]

    def continue_remote(self, session_id: str, seq: int, carried: list[list[Any]]) -> None:
        """Take over a session held by another node (see :meth:`carried`)."""
        self.id = session_id
        self.seq = seq
        for cmid, result in carried:
            self.remember(cmid, result)

    # Numbering -----------------------------------------------------------------------------------

    def next_seq(self) -> int:
        """Number the next reliable push."""
        self.seq += 1
        return self.seq

    def next_request_id(self) -> int:
        """Id for the next server-to-client request."""
        self._next_request_id += 1
        return self._next_request_id

    # Duplicate suppression ---------------------------------------------------------------------

    def seen(self, cmid: str) -> tuple[bool, Any]:
        """Whether ``cmid`` was handled already, and the result it was acknowledged with."""
        if self._dedupe is None or cmid not in self._dedupe:
            return False, None
        return True, self._dedupe[cmid]

    def remember(self, cmid: str, result: Any) -> None:
        """Record the acknowledgement of ``cmid`` (the last :data:`DEDUPE_WINDOW` are kept)."""
        if self._dedupe is None:
            self._dedupe = collections.OrderedDict()
        self._dedupe[cmid] = result
        if len(self._dedupe) > DEDUPE_WINDOW:
            self._dedupe.popitem(last=False)
