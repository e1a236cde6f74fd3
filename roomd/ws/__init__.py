"""WebSocket framing and HTTP request heads, sans-I/O: bytes in, events and bytes out.

The node's own parsers (see docs/architecture.md for why): :class:`FrameParser` for what clients
send, :func:`frame` for what the node sends (unmasked, so one encoding serves every recipient),
:func:`parse_head` for request heads, :func:`check_upgrade` / :func:`accept_response` for the
opening handshake, :class:`Deflater` for permessage-deflate. Nothing here imports trio.
"""

from ._deflate import EXTENSION as EXTENSION
from ._deflate import Deflater as Deflater
from ._deflate import negotiate_deflate as negotiate_deflate
from ._frames import NO_STATUS as NO_STATUS
from ._frames import OP_BINARY as OP_BINARY
from ._frames import OP_CLOSE as OP_CLOSE
from ._frames import OP_CONTINUATION as OP_CONTINUATION
from ._frames import OP_PING as OP_PING
from ._frames import OP_PONG as OP_PONG
from ._frames import OP_TEXT as OP_TEXT
from ._frames import PING as PING
from ._frames import FrameError as FrameError
from ._frames import FrameParser as FrameParser
from ._frames import close_frame as close_frame
from ._frames import control as control
from ._frames import frame as frame
from ._frames import frame_header as frame_header
from ._frames import inflate as inflate
from ._http import MAX_HEAD_BYTES as MAX_HEAD_BYTES
from ._http import MAX_HEADERS as MAX_HEADERS
from ._http import BadRequest as BadRequest
from ._http import HttpRequest as HttpRequest
from ._http import json_response as json_response
from ._http import parse_head as parse_head
from ._http import response as response
from ._tls import TlsError as TlsError
from ._tls import TlsSession as TlsSession
from ._upgrade import SUBPROTOCOL as SUBPROTOCOL
from ._upgrade import HandshakeError as HandshakeError
from ._upgrade import accept_response as accept_response
from ._upgrade import check_upgrade as check_upgrade
