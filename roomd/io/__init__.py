"""The Trio edge: sockets, the WebSocket transport, the node's flusher, ZeroMQ.

Everything that waits on a file descriptor lives here; the layers above (hub, cluster, node)
call into it and never touch trio's low-level I/O or pyzmq themselves.
"""

from ._beat import TimerWheel as TimerWheel
from ._beat import until_next as until_next
from ._flusher import Flushable as Flushable
from ._flusher import Flusher as Flusher
from ._keys import PUBLIC_SUFFIX as PUBLIC_SUFFIX
from ._keys import SECRET_SUFFIX as SECRET_SUFFIX
from ._keys import KeyFileError as KeyFileError
from ._keys import TrustedKeys as TrustedKeys
from ._keys import make_keys as make_keys
from ._keys import public_key_path as public_key_path
from ._keys import read_keypair as read_keypair
from ._keys import read_public_key as read_public_key
from ._keys import secret_key_path as secret_key_path
from ._keys import write_keypair as write_keypair
from ._mdns import SERVICE_TYPE as SERVICE_TYPE
from ._mdns import advertise as advertise
from ._mdns import loopback_only as loopback_only
from ._mdns import open_zeroconf as open_zeroconf
from ._mdns import service_info as service_info
from ._sockets import read_request as read_request
from ._sockets import receive_now as receive_now
from ._sockets import refuse as refuse
from ._sockets import send_all as send_all
from ._sockets import send_now as send_now
from ._sockets import tls_handshake as tls_handshake
from ._transport import ControlHandler as ControlHandler
from ._transport import Counters as Counters
from ._transport import MessageHandler as MessageHandler
from ._transport import Readers as Readers
from ._transport import Transport as Transport
from ._zmq import Handshake as Handshake
from ._zmq import Keypair as Keypair
from ._zmq import Monitor as Monitor
from ._zmq import SocketEvent as SocketEvent
from ._zmq import SocketType as SocketType
from ._zmq import ZapRequest as ZapRequest
from ._zmq import ZmqSocket as ZmqSocket
from ._zmq import curve_keypair as curve_keypair
from ._zmq import curve_public as curve_public
from ._zmq import make_context as make_context
from ._zmq import open_monitor as open_monitor
from ._zmq import open_socket as open_socket
from ._zmq import serve_zap as serve_zap
